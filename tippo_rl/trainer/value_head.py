"""The critic of standard PPO: a value head on the policy's last hidden states, and the policy and value head as one
module (what the Trainer trains, saves and resumes)."""

from __future__ import annotations

import torch
from torch import nn


VALUE_HEAD_NAME = "value_head.safetensors"


class ValueHead(nn.Linear):
    """V(s_t) = w·h_t + b + c `(batch, T)` from hidden states `(batch, T, d)`. w and b start at 0 (no value noise in the
    first advantages); c is a buffer, not a weight, that `value_head_init: mean_return` sets to the first rollout
    batch's mean return: V then starts at the return's mean everywhere, instead of 0, which would take Adam thousands
    of lr-sized steps to reach and meanwhile make GAE's advantages depend on the token's position."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.register_buffer("offset", torch.zeros(1), persistent=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden).squeeze(-1) + self.offset


class PolicyAndValueModel(nn.Module):
    """The policy and a value head V(s_t) = w·h_t + b on its decoder's last hidden states, as one module: DDP and
    DeepSpeed then synchronise both and one optimizer steps both.

    `forward` takes the policy's inputs and returns `(outputs, values)`, values `(batch, T)`. Checkpoints hold the
    policy as a loadable TIPPo model plus `value_head.safetensors` (see `PPOTrainer._save`).
    """

    def __init__(self, policy: nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = ValueHead(hidden_size)
        self.value_only = False  # critic warm-up: the value loss does not reach the policy's weights

    def forward(self, **inputs):
        outputs = self.policy(**inputs, output_hidden_states=True)
        # T5's decoder states, or a causal decoder's at the completion positions (`TIPPoCausalLMOutput`).
        hidden = (outputs.decoder_hidden_states if self.config.is_encoder_decoder else outputs.hidden_states)[-1]
        if self.value_only:
            hidden = hidden.detach()
        return outputs, self.value_head(hidden.to(self.value_head.weight.dtype))

    # What the Trainer and TRL's generation helpers ask of a model.
    @property
    def config(self):
        return self.policy.config

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.policy.is_activation_checkpointing

    @property
    def is_gradient_checkpointing(self) -> bool:  # the old name, which TRL 1.16 still reads
        return self.policy.is_activation_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.policy.gradient_checkpointing_disable()
