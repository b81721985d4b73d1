# flatrl: `make apply && make test` from a fresh clone. See README.md.
#
# Nothing here names an upstream or an environment in a loop; they come from files:
#   vendor/<name>.toml        one pin per upstream (UPSTREAMS); `env = "<env>"` in a pin makes
#                             that environment import build/<name> in place (a .pth line)
#   requirements/<env>.txt    one environment per file (ENVS), built as .venv/<env>
#   tests/environments.txt    which environment(s) run each folder under tests/
# Today: .venv/d3rlpy (patched d3rlpy, flatrl core, world-model agent) and .venv/tdmpc2
# (patched TD-MPC2, SAC+Muon agent); their pins collide (gymnasium 1.0 + numpy 2 vs gymnasium
# 0.29 + numpy 1.24 + dm-control 1.0.16). Each gets flatrl (editable) and torch==2.13.0 through
# requirements/constraints.txt.

PYTHON ?= python3
VENV ?= .venv
export FLATRL_CACHE ?= $(HOME)/.cache/flatrl
# single-threaded torch: the machines are shared and 2-core, and oversubscription is ~100x slower
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export MUJOCO_GL ?= disable
PIP := -m pip install -q --disable-pip-version-check -c requirements/constraints.txt
PYTEST_FLAGS ?= -q -rs -p no:cacheprovider
D3 := $(VENV)/d3rlpy/bin/python
TD := $(VENV)/tdmpc2/bin/python
UPSTREAMS := $(basename $(notdir $(wildcard vendor/*.toml)))
ENVS := $(filter-out constraints,$(basename $(notdir $(wildcard requirements/*.txt))))
TEST_TABLE := tests/environments.txt
# the test folders an environment runs, from TEST_TABLE
tests_for = $(shell awk '!/^\#/ && NF { for (i = 2; i <= NF; i++) if ($$i == "$(1)") print "tests/" $$1 }' $(TEST_TABLE))
# extra pytest arguments per environment
PYTEST_ARGS_tdmpc2 := -m "not needs_pytorch_optimizer"
# Environments that `make test` runs on their smoke folders only (SMOKE_<env>, under tests/);
# `make test-matrix` runs every environment on all its folders of TEST_TABLE. The default
# environment is "current" (today's releases, both upstreams in one interpreter), which runs
# every folder; the upstream-pinned pair (d3rlpy, tdmpc2) runs the checks that need the pins:
# the rho->0 law on d3rlpy's pinned stack, TD-MPC2 bit-identical to upstream on its pinned stack
# (docs/environments.md).
MATRIX_ONLY ?= d3rlpy tdmpc2
SMOKE_d3rlpy := d3rlpy/test_d3rlpy_rho_zero_law.py
SMOKE_tdmpc2 := tdmpc2/test_updates.py
TEST_SCOPE ?= default
folders_for = $(if $(and $(filter default,$(TEST_SCOPE)),$(filter $(1),$(MATRIX_ONLY))),$(addprefix tests/,$(SMOKE_$(1))),$(call tests_for,$(1)))

.PHONY: help setup vendor apply test test-matrix check-test-envs lint format refresh refresh-check status \
	rebase wheels demo bench perf-table gpu-check clean distclean d3rlpy-upstream-tests tdmpc2-smoke

help:
	@echo "make apply   build environments and the patched trees under build/"
	@echo "make test    run our tests (skips, with the reason, what needs unavailable upstreams)"
	@echo "make test-matrix  every test folder in every environment (docs/environments.md)"
	@echo "make demo    the main job on a small default (see README)"
	@echo "make wheels  patched d3rlpy (2.8.1+flatrl.<series id>) and flatrl wheels into dist/"
	@echo "make lint | refresh NAME=x | rebase NAME=x TO=v | status | clean"
	@echo "upstreams: $(UPSTREAMS); environments: $(ENVS)"

setup:
	$(MAKE) --no-print-directory -j2 --output-sync=target $(ENVS:%=$(VENV)/%/.installed)

$(VENV)/%/.installed: requirements/%.txt requirements/constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)/$*
	$(VENV)/$*/bin/python $(PIP) -r requirements/$*.txt
	$(VENV)/$*/bin/python $(PIP) --no-deps -e .
	touch $@

vendor:
	$(PYTHON) apply_patches.py vendor

# Builds every patched tree it can; an upstream whose source cannot be obtained is skipped
# with a message saying how to supply it (tests that need it then skip too).
apply: setup
	$(PYTHON) apply_patches.py apply --keep-going --venv $(VENV)
	@# each pin with `env = "<env>"` gets a .pth line in .venv/<env> naming its tree (`pip install
	@# -e` would rewrite the tree's egg-info and leave edits that the next apply refuses to overwrite)
	$(PYTHON) apply_patches.py pth --venv $(VENV)

# The environments' suites run side by side, each single-threaded: 2 cores, no oversubscription.
# The default environment runs every folder; as one pytest process it would leave the second
# core idle, so `make test` runs it in two parts of about equal time (PARTS_<env>: groups of
# folders joined by "+"; every folder the environment runs must be in exactly one group).
PARTS_current := tdmpc2+sac+current core+d3rlpy+study+tooling+world_model
test_jobs = $(foreach e,$(ENVS),$(if $(PARTS_$(e)),$(foreach g,$(PARTS_$(e)),test-part-$(e)@$(g)),test-$(e)-env))

test: apply check-test-envs
	@want="$$(echo $(call tests_for,current) | tr ' ' '\n' | sort)"; \
	got="$$(echo $(subst +, ,$(PARTS_current)) | tr ' ' '\n' | sed 's|^|tests/|' | sort)"; \
	[ "$$want" = "$$got" ] || { echo "error: PARTS_current in the Makefile must list exactly" \
		"the folders $(TEST_TABLE) runs in current:" $(call tests_for,current) >&2; exit 1; }
	$(MAKE) --no-print-directory -j2 --output-sync=target $(test_jobs)

# One part of an environment's folders: test-part-<env>@<folder>+<folder>...
test-part-%: check-test-envs
	$(VENV)/$(firstword $(subst @, ,$*))/bin/python -m pytest $(PYTEST_FLAGS) \
		$(PYTEST_ARGS_$(firstword $(subst @, ,$*))) \
		$(addprefix tests/,$(subst +, ,$(word 2,$(subst @, ,$*))))

# The version matrix: every environment on every folder TEST_TABLE gives it.
test-matrix: apply check-test-envs
	$(MAKE) --no-print-directory -j2 --output-sync=target TEST_SCOPE=matrix $(ENVS:%=test-%-env)

# One environment's folders, as tests/environments.txt lists them (make test-d3rlpy-env, ...).
test-%-env: check-test-envs
	@test -n "$(call folders_for,$*)" || { echo "no folder of $(TEST_TABLE) runs in $*"; exit 0; }
	$(VENV)/$*/bin/python -m pytest $(PYTEST_FLAGS) $(PYTEST_ARGS_$*) $(call folders_for,$*)

# Every folder under tests/ is listed in TEST_TABLE with known environments, and every listed
# folder exists: a new folder cannot silently run in the wrong environment, or in none.
check-test-envs:
	@status=0; known=" $(ENVS) "; \
	for dir in tests/*/; do \
		folder=$$(basename "$$dir"); [ "$$folder" = __pycache__ ] && continue; \
		envs=$$(awk -v f="$$folder" '!/^#/ && $$1 == f { $$1 = ""; print }' $(TEST_TABLE)); \
		if [ -z "$$envs" ]; then status=1; echo "error: tests/$$folder has no environment;" \
			"add a line '$$folder <env>' to $(TEST_TABLE) (environments: $(ENVS))" >&2; fi; \
		for env in $$envs; do case "$$known" in *" $$env "*) ;; *) status=1; \
			echo "error: $(TEST_TABLE) runs tests/$$folder in '$$env', which is not an" \
				"environment (requirements/<env>.txt): one of $(ENVS)" >&2;; esac; done; \
	done; \
	for folder in $$(awk '!/^#/ && NF { print $$1 }' $(TEST_TABLE)); do \
		[ -d "tests/$$folder" ] || { status=1; \
			echo "error: $(TEST_TABLE) lists tests/$$folder, which does not exist" >&2; }; \
	done; \
	exit $$status

lint: setup
	$(D3) -m ruff check .
	$(D3) -m ruff format --check .

format: setup
	$(D3) -m ruff format .
	$(D3) -m ruff check --fix .

status:
	$(PYTHON) apply_patches.py status

refresh:
	$(PYTHON) apply_patches.py refresh $(NAME)

refresh-check:
	$(PYTHON) apply_patches.py refresh --check

rebase:
	@test -n "$(NAME)" -a -n "$(TO)" || (echo "usage: make rebase NAME=d3rlpy TO=2.7.0"; exit 2)
	$(PYTHON) apply_patches.py rebase $(NAME) --to $(TO)

# The patched releases (pins with version_file: d3rlpy as 2.8.1+flatrl.<series id>, the id
# derived from patches/<name>/) and flatrl, into dist/. Both are built from clean copies (the
# tree's HEAD, the repo's pyproject.toml + overlay/) so setuptools never writes into them.
wheels: apply
	$(PYTHON) apply_patches.py wheel --dist dist --python $(D3)
	@tmp=$$(mktemp -d) && cp -r pyproject.toml overlay "$$tmp"/ && \
		find "$$tmp" \( -name '*.egg-info' -o -name __pycache__ \) -prune -exec rm -rf {} + && \
		$(D3) -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check \
			-w dist "$$tmp"; rc=$$?; rm -rf "$$tmp"; exit $$rc
	@ls -1 dist/*.whl

# Offline TD3+BC on Pendulum-v1, Adam vs SAM (rho 0.01), 3 seeds: per-arm mean/IQM with 95%
# bootstrap CIs, P(SAM > Adam), runs/demo/demo.png (return and sharpness per step); one core.
demo: apply
	$(VENV)/current/bin/python bench/d3rlpy_demo.py --out runs/demo

# d3rlpy's own test suite against the patched tree (its tests are not in the sdist: take them
# from a checkout of takuseno/d3rlpy at v2.8.1). The plugin tests/d3rlpy/d3rlpy_upstream_compat.py
# gives old gym its np.bool8 under numpy 2 (test_iterators.py steps gym environments).
d3rlpy-upstream-tests: apply
	@test -n "$(TESTS)" || { echo "usage: make d3rlpy-upstream-tests TESTS=/path/to/d3rlpy/tests"; exit 2; }
	cd $(dir $(abspath $(TESTS))) && PYTHONPATH=$(CURDIR)/tests/d3rlpy $(abspath $(D3)) -m pytest \
		-p d3rlpy_upstream_compat tests/algos tests/optimizers tests/ope tests/test_torch_utility.py \
		-q -p no:cacheprovider -rf

# A CPU smoke run of the patched TD-MPC2 with SAM (about a minute of CPU).
tdmpc2-smoke: apply
	@test -d build/tdmpc2 || { echo "build/tdmpc2 is missing: see 'Upstream sources, offline' in README.md"; exit 2; }
	cd build/tdmpc2/tdmpc2 && $(abspath $(TD)) train.py task=cartpole-swingup model_size=1 \
		steps=600 seed_steps=500 seed_updates=50 optimizer=SAM sam_rho=0.05 device=cpu \
		compile=false enable_wandb=false iterations=2 num_samples=64 num_elites=8 \
		num_pi_trajs=4 batch_size=64 eval_episodes=1 exp_name=smoke

# The README's performance table (docs/performance.md) regenerated from the benches in one run.
perf-table: apply
	$(PYTHON) bench/perf_table.py

bench: apply
	$(D3) bench/optim_overhead.py
	$(D3) bench/d3rlpy_overhead.py
	$(TD) bench/tdmpc2_overhead.py

# Every CUDA path (TD-MPC2 compile=true with Adam/SAM/Muon, d3rlpy SAC+SAM and the compile_graph
# refusal, the SAC agent's bf16 Muon, the world model) with a pass/fail table; minutes on one GPU.
# Without CUDA it says so and fails: nothing was checked.
gpu-check: apply
	$(PYTHON) bench/gpu_check.py

clean:
	rm -rf build dist

distclean: clean
	rm -rf $(VENV)
