"""Finding the TIPPo model inside the wrappers training puts around it."""

from __future__ import annotations

from torch import nn

from ..modeling_tippo import TIPPoForConditionalGeneration


def unwrap_tippo(model: nn.Module) -> TIPPoForConditionalGeneration:
    """The `TIPPoForConditionalGeneration` inside DDP/DeepSpeed (`.module`), PEFT (`.get_base_model()`), `torch.compile` (`._orig_mod`)
    and policy (`.policy`) wrappers."""
    while not isinstance(model, TIPPoForConditionalGeneration):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "policy"):
            model = model.policy
        else:
            raise TypeError(f"expected a TIPPoForConditionalGeneration (possibly wrapped), got {type(model).__name__}")
    return model
