"""The critic of standard PPO: a value head on the policy's last hidden states, and the policy and value head as one
module (what the Trainer trains, saves and resumes)."""

from __future__ import annotations

import os

import safetensors.torch
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

    `forward` takes the policy's inputs and returns `(outputs, values)`, values `(batch, T)`. `save_pretrained` writes
    the policy as it saves itself (a loadable TIPPo model, or a PEFT adapter) plus `value_head.safetensors`;
    `load_value_head` reads the latter back (the Trainer loads the policy as the model it saved).
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

    # -- saving and loading -------------------------------------------------------------------------------------------

    @staticmethod
    def split_state_dict(
        state_dict: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(policy's, value head's) state dicts from the wrapper's, whose keys start with `policy.` / `value_head.`."""
        parts = {"policy.": {}, "value_head.": {}}
        for key, value in state_dict.items():
            for prefix, part in parts.items():
                if key.startswith(prefix):
                    part[key.removeprefix(prefix)] = value
        return parts["policy."], parts["value_head."]

    def save_pretrained(
        self, save_directory: str | os.PathLike, state_dict: dict | None = None, is_main_process: bool = True, **kwargs
    ) -> None:
        """The policy into `save_directory` as it saves itself (`kwargs` go to its `save_pretrained`), and the value head
        as `value_head.safetensors`. `state_dict`: the wrapper's, when DeepSpeed ZeRO-3 hands over its consolidated
        one; None: the modules' own."""
        if state_dict is not None:
            policy_state, head_state = self.split_state_dict(state_dict)
        else:
            policy_state, head_state = None, self.value_head.state_dict()
        self.policy.save_pretrained(save_directory, state_dict=policy_state, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            safetensors.torch.save_file(
                {key: value.detach().cpu().contiguous() for key, value in head_state.items()},
                os.path.join(save_directory, VALUE_HEAD_NAME),
            )

    def load_value_head(self, folder: str | os.PathLike) -> None:
        """Load `value_head.safetensors` from a folder `save_pretrained` wrote."""
        path = os.path.join(folder, VALUE_HEAD_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} holds no {VALUE_HEAD_NAME} for the value head")
        head_state = safetensors.torch.load_file(path)
        head_state.setdefault("offset", torch.zeros(1))  # checkpoints from before value_head_init had no offset
        self.value_head.load_state_dict(head_state)

    # -- what the Trainer and TRL's generation helpers ask of a model -------------------------------------------------

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

    # Read when the Trainer loads the policy's weights and some are missing (tied embeddings): those of the policy.
    @property
    def _keys_to_ignore_on_save(self):
        return self.policy._keys_to_ignore_on_save

    def tie_weights(self, *args, **kwargs):
        return self.policy.tie_weights(*args, **kwargs)
