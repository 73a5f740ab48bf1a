"""Whole weights for models built or loaded while the training arguments enable DeepSpeed ZeRO-3."""

from __future__ import annotations

import contextlib

from transformers.integrations import deepspeed as hf_deepspeed


@contextlib.contextmanager
def full_weights_under_zero3():
    """Build or load the model with whole (unpartitioned) weights even when the training arguments enable ZeRO-3;
    the DeepSpeed engine partitions them when the trainer prepares the model (accelerate's `zero3_init_flag: false`).
    Loading straight into partitioned parameters fails inside transformers' Chinese-CLIP weight init, and frozen
    models used outside the engine (the feature cache's encoder, reward models) need their weights whole."""
    config = deepspeed_config_object()
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def deepspeed_config_object():
    """The `HfDeepSpeedConfig` the training arguments registered, or None."""
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    return reference() if reference is not None else None
