"""Our own agents, built on flatrl.optim: SAC+Muon on DeepMind Control and the world-model A2C agent.

Each agent is a subpackage with its own entry point; they import their heavy dependencies
(dm_control, gymnasium, Hydra) themselves so that the optimizer core stays light.
"""
