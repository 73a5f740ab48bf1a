"""The reference policy π_ref of PPO's KL penalty: the starting policy, frozen; and switching dropout off, so that
π_θ, the rollout policy and π_ref agree before any update (ratio 1, KL 0)."""

from __future__ import annotations

import copy

from torch import nn
from trl.models import prepare_deepspeed

from .model_wrappers import unwrap_tippo


def frozen_reference_policy(policy: nn.Module, accelerator, deepspeed: bool) -> nn.Module:
    """A frozen copy of `policy`, prepared for evaluation (a DeepSpeed engine under DeepSpeed). A PEFT policy needs
    none: its reference is the same model with its adapters disabled."""
    tippo = unwrap_tippo(policy)
    # φ is frozen and the same in both: share it rather than copy it (not under DeepSpeed, which shards it).
    share = tippo.config.freeze_encoder and not deepspeed
    reference = copy.deepcopy(policy, memo={id(tippo.encoder): tippo.encoder} if share else None)
    reference.eval().requires_grad_(False)
    if deepspeed:
        return prepare_deepspeed(reference, accelerator)
    return accelerator.prepare_model(reference, evaluation_mode=True)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of `model` to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
