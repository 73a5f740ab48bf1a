"""Fields both TIPPo configs ([`TIPPoSFTConfig`], [`PPOConfig`]) add to or change in `TrainingArguments`: the
frozen-feature cache, the bf16 default, and the ranges of `TrainingArguments`' own numeric options, checked when the
config is parsed (transformers leaves most of them to fail inside the optimizer or the dataloader, with a traceback)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

import torch


# TrainingArguments' numeric options and what each must be: (lowest, highest, lowest allowed, highest allowed).
TRAINING_ARGUMENT_RANGES = {
    "learning_rate": (0.0, math.inf, False, True),
    "weight_decay": (0.0, math.inf, True, True),
    "adam_beta1": (0.0, 1.0, True, False),
    "adam_beta2": (0.0, 1.0, True, False),
    "adam_epsilon": (0.0, math.inf, True, True),
    "max_grad_norm": (0.0, math.inf, True, True),
    "warmup_ratio": (0.0, 1.0, True, True),
    "per_device_train_batch_size": (1, math.inf, True, True),
    "per_device_eval_batch_size": (1, math.inf, True, True),
    "gradient_accumulation_steps": (1, math.inf, True, True),
    "num_train_epochs": (0.0, math.inf, False, True),
    "warmup_steps": (0, math.inf, True, True),
    "dataloader_num_workers": (0, math.inf, True, True),
    "save_total_limit": (0, math.inf, True, True),  # 0 or unset: no limit
}


def check_range(name: str, value, low, high, low_included: bool, high_included: bool) -> None:
    """Raise `ValueError` naming option `name` when `value` (None: unset, allowed) lies outside its range."""
    if value is None:
        return
    below = value < low if low_included else value <= low
    above = value > high if high_included else value >= high
    if below or above or (isinstance(value, float) and math.isnan(value)):
        left, right = "[" if low_included else "(", "]" if high_included else ")"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value}")


@dataclass
class TIPPoTrainingArguments:
    """Listed before `TrainingArguments` in a config's bases, so that its `bf16` default replaces theirs. A config's
    `__post_init__` calls `_resolve_tippo_fields()` before `TrainingArguments.__post_init__`."""

    use_feature_cache: bool = field(
        default=True, metadata={"help": "Train from cached frozen-encoder features (computed once per dataset)."}
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for cached features (default $TIPPO_RL_CACHE/features, ~/.cache/tippo_rl/features)."
        },
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision. Default: on where a GPU supports it, off on a CPU."}
    )

    def _resolve_tippo_fields(self) -> None:
        for name, bounds in TRAINING_ARGUMENT_RANGES.items():
            check_range(name, getattr(self, name, None), *bounds)
        check_tensorboard(getattr(self, "report_to", None))
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.use_cpu


def check_tensorboard(report_to) -> None:
    """`report_to` names tensorboard but it is not installed: one line naming the extra that installs it, where the
    Trainer would stop later with a traceback ("TensorBoardCallback requires tensorboard to be installed")."""
    backends = [report_to] if isinstance(report_to, str) else list(report_to or ())
    if "tensorboard" in backends and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "report_to tensorboard: the tensorboard package is not installed; pip install -e '.[tensorboard]' "
            "(or pip install tensorboard)"
        )
