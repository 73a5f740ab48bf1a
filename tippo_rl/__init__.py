"""tippo_rl: TIPPo (TIP and Polish) multi-modal generation — SFT and PolishPPO on Hugging Face TRL."""

from .configuration_tippo import TIPPoConfig
from .data import TIPPoDataCollator, load_artmuse, load_coco_captions
from .demo_data import make_demo_dataset
from .feature_cache import cache_frozen_features
from .modeling_tippo import TIPPoModel, prototype_contrastive_loss
from .presets import build_tiny_tippo, build_tippo_from_pretrained_components
from .processing_tippo import TIPPoProcessor

__version__ = "0.1.0"

__all__ = [
    "TIPPoConfig",
    "TIPPoModel",
    "TIPPoProcessor",
    "TIPPoDataCollator",
    "build_tiny_tippo",
    "build_tippo_from_pretrained_components",
    "cache_frozen_features",
    "load_artmuse",
    "load_coco_captions",
    "make_demo_dataset",
    "prototype_contrastive_loss",
]
