"""Energy networks ``E(x; θ)`` of the paper's Appendix C, and a small MLP for vectors."""

from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
from ebmm_rl.energy.resnet import (
    ResNetConvConfig,
    ResNetConvEnergy,
    ResNetFCConfig,
    ResNetFCEnergy,
    ResNetLowerConvConfig,
    ResNetLowerConvEnergy,
    dynamic_size_for_budget,
)
from ebmm_rl.energy.rnn import GatedRNNConfig, GatedRNNEnergy

__all__ = [
    "GatedRNNConfig",
    "GatedRNNEnergy",
    "MLPConfig",
    "MLPEnergy",
    "ResNetConvConfig",
    "ResNetConvEnergy",
    "ResNetFCConfig",
    "ResNetFCEnergy",
    "ResNetLowerConvConfig",
    "ResNetLowerConvEnergy",
    "dynamic_size_for_budget",
]
