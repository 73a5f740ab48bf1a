"""How a causal LM reads TIPPo's fusion S^F (the decoder kind the paper does not have; T5 reads S^F as its encoder input).

The causal LM reads `[S^F; prompt; completion]` as input embeddings, padding moved to the front (`left_pack`) and
positions counted over real tokens, and its outputs are kept at the completion positions only: `labels`,
`decoder_input_ids` and `logits` then line up as T5's, so the trainers treat both kinds alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast


@dataclass
class TIPPoCausalLMOutput(CausalLMOutputWithPast):
    """A causal decoder's output, at the completion positions only: `logits` `(batch, T, V)` (position t predicts
    completion token t, as T5's), `hidden_states` (each `(batch, T, d)`) and `loss` over the labels; plus the image
    signals S_i^I `(batch, N, k, d)`, their mask `(batch, N)` and the terms of `loss` (as `TIPPoSeq2SeqLMOutput`)."""

    image_signals: torch.FloatTensor | None = None
    image_mask: torch.BoolTensor | None = None
    image_keys: torch.DoubleTensor | None = None
    ntp_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None


def left_pack(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every masked position of `(batch, L, d)` / `(batch, L)` to the front, keeping the order of the others.

    A causal decoder reads the last position to predict the first completion token, so it must be a real one for every
    sample (image padding slots sit inside S^F, prompt padding after it); with position ids counted over real tokens
    only, the padding then changes nothing but the sequence length."""
    order = torch.sort(attention_mask, dim=1, stable=True).indices  # zeros first, real tokens in their order
    return inputs_embeds.gather(1, order[..., None].expand_as(inputs_embeds)), attention_mask.gather(1, order)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens `(batch, L)`, as `generate()` counts them (0 on padding)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def causal_prompt(
    language_model: nn.Module,
    fusion_embeds: torch.Tensor,
    fusion_mask: torch.Tensor,
    prompt_input_ids: torch.Tensor | None = None,
    prompt_attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal decoder's prompt: `[S^F; prompt tokens]` as `inputs_embeds` `(batch, P, d)` and its attention mask
    `(batch, P)`, padding first (`left_pack`). S^F: `fusion_embeds` `(batch, F, d)`, `fusion_mask` `(batch, F)`;
    `prompt_input_ids` `(batch, L)` may be None (S^F alone)."""
    inputs_embeds, attention_mask = fusion_embeds, fusion_mask
    if prompt_input_ids is not None:
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones_like(prompt_input_ids)
        prompt_embeds = language_model.get_input_embeddings()(prompt_input_ids).to(inputs_embeds.dtype)
        inputs_embeds = torch.cat([inputs_embeds, prompt_embeds], dim=1)
        attention_mask = torch.cat([attention_mask, prompt_attention_mask.long()], dim=1)
    return left_pack(inputs_embeds, attention_mask)


def causal_forward(
    language_model: nn.Module,
    fusion_embeds: torch.Tensor,
    fusion_mask: torch.Tensor,
    prompt_input_ids: torch.Tensor | None,
    prompt_attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    decoder_input_ids: torch.Tensor | None,
    pad_token_id: int,
    completions_per_input: int = 1,
    **kwargs,
) -> TIPPoCausalLMOutput:
    """`[S^F; prompt; completion]` through the causal LM, outputs at the completion positions only.

    The completion tokens read are `decoder_input_ids[:, 1:]` (T5's shift-right: column 0, the start token, stands for
    the prompt, whose last position predicts the first completion token), or, from `labels`, `labels[:, :-1]`.

    `completions_per_input` = k > 1: S^F and the prompt hold each prompt once `(batch, ...)`, the completions its k
    completions in a row `(batch·k, T)`. The LM then reads each prompt once, and its KV cache, repeated k times, is what
    the k completions attend to (`prompt_once_forward`): gradients from the k completions add up in the prompt's pass."""
    if decoder_input_ids is None:
        if labels is None:
            raise ValueError(
                "a causal TIPPo model needs `labels` or `decoder_input_ids` (the completion) in forward()"
            )
        decoder_input_ids = F.pad(labels[:, :-1], (1, 0), value=-100)  # T5's shift-right
        decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)
    prompt_embeds, prompt_mask = causal_prompt(
        language_model, fusion_embeds, fusion_mask, prompt_input_ids, prompt_attention_mask
    )
    completion_inputs = decoder_input_ids[:, 1:]
    completion_embeds = language_model.get_input_embeddings()(completion_inputs).to(prompt_embeds.dtype)
    length = decoder_input_ids.shape[1]  # T: positions P − 1 … P + T − 2 predict completion tokens 0 … T − 1
    k = completions_per_input
    # Activation checkpointing drops the KV cache in training (transformers' checkpointed layers): the prompt is
    # then repeated k times and read with each completion.
    checkpointing = language_model.training and getattr(language_model, "is_gradient_checkpointing", False)
    if k > 1 and checkpointing:
        prompt_embeds, prompt_mask = prompt_embeds.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0)
    if k > 1 and not checkpointing:
        logits, hidden_states = prompt_once_forward(
            language_model, prompt_embeds, prompt_mask, completion_embeds, k, **kwargs
        )
        past_key_values = None
    else:
        inputs_embeds = torch.cat([prompt_embeds, completion_embeds], dim=1)
        attention_mask = torch.cat([prompt_mask, torch.ones_like(completion_inputs)], dim=1)
        outputs = language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=length,
            return_dict=True,
            **kwargs,
        )
        logits, past_key_values = outputs.logits, outputs.past_key_values
        hidden_states = None
        if outputs.hidden_states is not None:
            hidden_states = tuple(hidden[:, -length:] for hidden in outputs.hidden_states)
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    return TIPPoCausalLMOutput(loss=loss, logits=logits, past_key_values=past_key_values, hidden_states=hidden_states)


def prompt_once_forward(
    language_model: nn.Module,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_embeds: torch.Tensor,
    k: int,
    **kwargs,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """The LM on `(batch, P)` prompts once and on their k completions `(batch·k, T − 1)` after them: the prompt pass's
    KV cache, repeated k times, stands for the prompt in the completions' pass. Returns the logits `(batch·k, T, V)` at
    positions P − 1 … P + T − 2 (the prompt's last one repeated) and, when asked for, the hidden states there."""
    kwargs.pop("use_cache", None)
    prompt = prompt_pass(language_model, prompt_embeds, prompt_mask, **kwargs)
    logits = prompt.logits.repeat_interleave(k, 0)
    hidden_states = None
    if prompt.hidden_states is not None:
        hidden_states = tuple(hidden[:, -1:].repeat_interleave(k, 0) for hidden in prompt.hidden_states)
    if completion_embeds.shape[1] == 0:
        return logits, hidden_states
    cache = prompt.past_key_values
    cache.batch_repeat_interleave(k)  # differentiable: the completions' attention reaches the prompt's keys and values
    attention_mask = torch.cat(
        [prompt_mask.repeat_interleave(k, 0), prompt_mask.new_ones(completion_embeds.shape[:2])], dim=1
    )
    completions = language_model(
        inputs_embeds=completion_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask)[:, prompt_mask.shape[1] :],
        past_key_values=cache,
        use_cache=True,
        return_dict=True,
        **kwargs,
    )
    logits = torch.cat([logits, completions.logits], dim=1)
    if hidden_states is not None:
        hidden_states = tuple(torch.cat(pair, dim=1) for pair in zip(hidden_states, completions.hidden_states))
    return logits, hidden_states


def prompt_cache(language_model: nn.Module, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, k: int = 1):
    """The LM's KV cache of `(batch, P)` prompts, each repeated k times in a row (generation of k samples per prompt:
    `generate()` continues from it with the prompts' last positions, so the prompt is read once, not k times)."""
    cache = prompt_pass(language_model, prompt_embeds, prompt_mask).past_key_values
    cache.batch_repeat_interleave(k)
    return cache


def prompt_pass(language_model: nn.Module, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, **kwargs):
    """The LM over `(batch, P)` prompts alone: its KV cache and the last position's logits."""
    return language_model(
        inputs_embeds=prompt_embeds,
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        use_cache=True,
        logits_to_keep=1,
        return_dict=True,
        **kwargs,
    )
