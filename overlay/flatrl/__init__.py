"""flatrl: Sharpness-Aware Minimization and Muon for reinforcement learning.

The package is the one place where SAM and Muon live; the d3rlpy and TD-MPC2 patch series
and our own agents import it instead of re-implementing either.
"""

__version__ = "0.1.0"
