"""Our own agents, built on flatrl.optim.

SAC+Muon on DeepMind Control (``flatrl.agents.sac``) and the world-model A2C agent
(``flatrl.agents.world_model``). Each is a subpackage with its own entry point; they import their
heavy dependencies (dm_control, gymnasium, Hydra) themselves so that the optimizer core stays
light.
"""
