"""Our code for the patched TD-MPC2 tree (``build/tdmpc2``).

The patch series under ``patches/tdmpc2/`` keeps its upstream hunks small by importing these
modules: device resolution, config validation, optimizer construction (SAM/Muon through
``flatrl.optim``), the train-metrics writer and training checkpoints. Nothing here imports
TD-MPC2 itself, so the modules are usable and testable without the upstream source.
"""
