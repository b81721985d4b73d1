"""TD-MPC2's world model trained offline on fixed DMC datasets, evaluated on held-out data.

The CPU-feasible form of the paper's mechanism (issue 12, study ``tdmpc2-offline-wm``): does
SAM on (parts of) the world model give flatter minima, and do those predict held-out data of
another behaviour policy better? :mod:`.data` collects and caches the datasets,
:mod:`.train` trains the patched agent on a fixed buffer (resumable),
:mod:`.heldout` computes the held-out errors and the measured sharpness, :mod:`.cli` is
``python -m flatrl.tdmpc2.offline``.
"""
