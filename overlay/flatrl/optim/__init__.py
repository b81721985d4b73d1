"""The optimizer core of flatrl: SAM and its cheaper variants, the Muon split, momentum schedules.

Everything that trains with SAM or Muon (the d3rlpy and TD-MPC2 patches, our agents) imports
these names instead of re-implementing them.
"""

from flatrl.optim.ae_sam import AESAM
from flatrl.optim.composite import CompositeOptimizer
from flatrl.optim.looksam import LookSAM
from flatrl.optim.msam import MomentumSAM, unperturbed
from flatrl.optim.muon import Muon, MuonUnavailableError
from flatrl.optim.param_split import build_optimizer, muon_param_groups
from flatrl.optim.sam import SAM, variant_class
from flatrl.optim.sam_config import SAMConfig, SAMConfigError
from flatrl.optim.sam_step import kept_batchnorm_stats, sam_closure, sam_step
from flatrl.optim.schedules import DelayedMomentum, get_momentum, set_momentum

__all__ = [
    "AESAM",
    "LookSAM",
    "MomentumSAM",
    "SAM",
    "SAMConfig",
    "SAMConfigError",
    "CompositeOptimizer",
    "DelayedMomentum",
    "Muon",
    "MuonUnavailableError",
    "build_optimizer",
    "get_momentum",
    "kept_batchnorm_stats",
    "muon_param_groups",
    "sam_closure",
    "sam_step",
    "set_momentum",
    "unperturbed",
    "variant_class",
]
