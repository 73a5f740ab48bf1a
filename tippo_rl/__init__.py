"""tippo_rl: TIPPo (TIP and Polish) multi-modal generation — SFT and PolishPPO on Hugging Face TRL.

`import tippo_rl` registers TIPPo with `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText` and `AutoProcessor` (so
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained` load a saved TIPPo model and its
processor); every other name is imported on first use.
"""

import importlib

from . import modeling_tippo, processing_tippo  # noqa: F401  (register the Auto classes)


__version__ = "0.1.0"

_EXPORTS = {
    "TIPPoConfig": "configuration_tippo",
    "TIPPoForConditionalGeneration": "modeling_tippo",
    "TIPPoModel": "modeling_tippo",  # the alias
    "prototype_contrastive_loss": "modeling_tippo",
    "TIPPoProcessor": "processing_tippo",
    "TIPPoDataCollator": "data_collator",
    "load_artmuse": "data",
    "load_coco_captions": "data",
    "load_hf_dataset": "data",
    "ColumnNames": "data",
    "make_demo_dataset": "demo.scenes",
    "cache_frozen_features": "feature_cache",
    "build_tiny_tippo": "presets",
    "build_tippo_from_pretrained_components": "presets",
    "generate_predictions": "generation",
    "compute_metrics": "evaluation.metrics",
    "literal_reward": "rewards",
    "SemanticReward": "rewards",
    "load_reward": "rewards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tippo_rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
