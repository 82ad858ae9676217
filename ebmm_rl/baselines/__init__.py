"""Baseline associative memories of the paper's §4 and App. A.2–A.3, plus modern Hopfield retrieval.

Meta-trained memories: :class:`MemoryNetwork`, :class:`MANN`, :class:`LSTMMemory`, :class:`PlasticityMemory`,
:class:`DynamicKanervaMachine`.
Non-memory baselines: :class:`DenoisingAutoencoder`, :class:`VariationalAutoencoder`, :class:`DeepImagePrior` (fitted
per image, not meta-trained). Untrained reference:
:class:`ModernHopfield`. All follow :class:`ebmm_rl.protocol.AssociativeMemory`; build them by name with
:data:`ebmm_rl.protocol.MEMORIES`.
"""

from ebmm_rl.baselines.autoencoders import DAEConfig, DenoisingAutoencoder, NoState, VAEConfig, VariationalAutoencoder
from ebmm_rl.baselines.base import BaselineConfig, BaselineMemory, check_patterns
from ebmm_rl.baselines.codec import Codec, ResNetDecoder
from ebmm_rl.baselines.deep_image_prior import DeepImagePrior, DIPConfig
from ebmm_rl.baselines.kanerva import DKMConfig, DKMState, DynamicKanervaMachine
from ebmm_rl.baselines.lstm import LSTMConfig, LSTMMemory, LSTMState
from ebmm_rl.baselines.mann import MANN, MANNConfig, MANNState
from ebmm_rl.baselines.memnet import MemNetConfig, MemoryNetwork
from ebmm_rl.baselines.modern_hopfield import ModernHopfield, ModernHopfieldConfig
from ebmm_rl.baselines.plasticity import PlasticityConfig, PlasticityMemory, PlasticityState
from ebmm_rl.baselines.slots import SlotState

MODEL_CONFIGS: dict[type[BaselineMemory], type[BaselineConfig]] = {
    MemoryNetwork: MemNetConfig,
    MANN: MANNConfig,
    LSTMMemory: LSTMConfig,
    PlasticityMemory: PlasticityConfig,
    DynamicKanervaMachine: DKMConfig,
    DenoisingAutoencoder: DAEConfig,
    VariationalAutoencoder: VAEConfig,
    DeepImagePrior: DIPConfig,
    ModernHopfield: ModernHopfieldConfig,
}
"""Each baseline class and its config dataclass (``cls(config_cls(**fields))`` rebuilds one)."""

__all__ = [
    "MANN",
    "MODEL_CONFIGS",
    "BaselineConfig",
    "BaselineMemory",
    "Codec",
    "DAEConfig",
    "DIPConfig",
    "DKMConfig",
    "DKMState",
    "DeepImagePrior",
    "DenoisingAutoencoder",
    "DynamicKanervaMachine",
    "LSTMConfig",
    "LSTMMemory",
    "LSTMState",
    "MANNConfig",
    "MANNState",
    "MemNetConfig",
    "MemoryNetwork",
    "ModernHopfield",
    "ModernHopfieldConfig",
    "NoState",
    "PlasticityConfig",
    "PlasticityMemory",
    "PlasticityState",
    "ResNetDecoder",
    "SlotState",
    "VAEConfig",
    "VariationalAutoencoder",
    "check_patterns",
]
