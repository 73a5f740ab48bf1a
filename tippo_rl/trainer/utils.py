"""Small pieces both TIPPo trainers need."""

from __future__ import annotations

from torch import nn

from ..modeling_tippo import TIPPoModel


def unwrap_tippo(model: nn.Module) -> TIPPoModel:
    """The `TIPPoModel` inside DDP/DeepSpeed (`.module`) and PEFT (`.get_base_model()`) wrappers."""
    while not isinstance(model, TIPPoModel):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"expected a TIPPoModel (possibly wrapped), got {type(model).__name__}")
    return model
