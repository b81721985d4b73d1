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
	refresh-check status rebase demo bench clean distclean

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
	@if [ -d build/d3rlpy ] && [ ! -f $(VENV)/d3rlpy/.d3rlpy-linked ]; then \
		$(D3) $(PIP) --no-deps -e build/d3rlpy && touch $(VENV)/d3rlpy/.d3rlpy-linked; fi

# The two environments' suites run side by side, each single-threaded: 2 cores, no oversubscription.
test: apply
	$(MAKE) --no-print-directory -j2 --output-sync=target test-d3rlpy-env test-tdmpc2-env

test-d3rlpy-env:
	$(D3) -m pytest $(PYTEST_FLAGS) tests --ignore=tests/tdmpc2 --ignore=tests/sac

test-tdmpc2-env:
	$(TD) -m pytest $(PYTEST_FLAGS) tests/core tests/tdmpc2 tests/sac

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

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)
