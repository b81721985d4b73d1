# flatrl: `make apply && make test` from a fresh clone. See README.md.
#
# Two environments, one per upstream stack (their pins collide: d3rlpy 2.8.1 wants
# gymnasium 1.0 + numpy 2, TD-MPC2 wants gymnasium 0.29 + numpy 1.24 + dm-control 1.0.16):
#   .venv/d3rlpy  the patched d3rlpy, the flatrl core and the world-model agent
#   .venv/tdmpc2  the patched TD-MPC2 and the SAC+Muon agent (same dm_control/torchrl/Hydra)
# Both get the flatrl package (editable) and torch==2.13.0 through requirements/constraints.txt.

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

.PHONY: help setup vendor apply test test-d3rlpy-env test-tdmpc2-env lint format refresh \
	refresh-check status rebase demo bench gpu-check clean distclean d3rlpy-upstream-tests tdmpc2-smoke

help:
	@echo "make apply   build environments and the patched trees under build/"
	@echo "make test    run our tests (skips, with the reason, what needs unavailable upstreams)"
	@echo "make demo    the main job on a small default (see README)"
	@echo "make lint | refresh NAME=x | rebase NAME=x TO=v | status | clean"

setup:
	$(MAKE) --no-print-directory -j2 --output-sync=target $(VENV)/d3rlpy/.installed \
		$(VENV)/tdmpc2/.installed

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
	$(PYTHON) apply_patches.py apply --keep-going
	@# a .pth line makes build/d3rlpy importable; `pip install -e` would rewrite the tree's
	@# egg-info and leave it with edits that the next apply refuses to overwrite
	@if [ -d build/d3rlpy ]; then $(D3) -c "import site; \
		open(site.getsitepackages()[0] + '/flatrl-d3rlpy.pth', 'w').write('$(CURDIR)/build/d3rlpy\n')"; fi

# The two environments' suites run side by side, each single-threaded: 2 cores, no oversubscription.
test: apply
	$(MAKE) --no-print-directory -j2 --output-sync=target test-d3rlpy-env test-tdmpc2-env

test-d3rlpy-env:
	$(D3) -m pytest $(PYTEST_FLAGS) tests --ignore=tests/tdmpc2 --ignore=tests/sac

test-tdmpc2-env:
	$(TD) -m pytest $(PYTEST_FLAGS) -m "not needs_pytorch_optimizer" tests/core tests/tdmpc2 tests/sac

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

demo: apply
	$(D3) bench/d3rlpy_demo.py

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
	rm -rf build

distclean: clean
	rm -rf $(VENV)
