"""SAC with Muon / Adam / AdamW (and optional SAM on the critic) on DeepMind Control.

The optimizer-hypothesis pipeline: one SAC agent whose actor and critic optimizers are chosen
per case (``adam`` | ``adamw`` | ``muon``), with delayed-momentum schedules, layer toggles for
Muon, effective-rank diagnostics of the critic features, TensorBoard logging and exact resume.

Entry point: ``python -m flatrl.agents.sac.train`` (Hydra; default config ``sac_cheetah``).
The heavy imports (dm_control, Hydra, torchrl) live in the submodules that need them, so
``import flatrl.agents.sac`` stays cheap.
"""
