"""Fields both TIPPo configs ([`TIPPoSFTConfig`], [`PPOConfig`]) add to or change in `TrainingArguments`: the
frozen-feature cache and the bf16 default."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TIPPoTrainingArguments:
    """Listed before `TrainingArguments` in a config's bases, so that its `bf16` default replaces theirs. A config's
    `__post_init__` calls `_resolve_tippo_fields()` before `TrainingArguments.__post_init__`."""

    use_feature_cache: bool = field(
        default=True, metadata={"help": "Train from cached frozen-encoder features (computed once per dataset)."}
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder for cached features (default ~/.cache/tippo_rl/features)."}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision. Default: on where a GPU supports it, off on a CPU."}
    )

    def _resolve_tippo_fields(self) -> None:
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.use_cpu
