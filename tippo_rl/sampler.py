"""The rollout sampler: k completions per prompt from a TIPPo model, decoded token by token with the decoder's KV cache,
as `generate()` samples them but without its per-step machinery.

`generate()` spends most of a small model's decoding step outside the model (its logits-processor and
stopping-criteria machinery, input preparation, `torch.multinomial`, which on a CPU takes ~20× an inverse-CDF draw).
The PPO trainers sample a rollout batch every iteration with a handful of options, so they decode here when the
generation config holds only those options (`samples_fast`) and through `generate()` otherwise.

The distribution is `generate()`'s: the same processors in the same order (suppressed tokens and `min_new_tokens` set
to −∞, then temperature, top-k, top-p — transformers' own warpers), sampled by inverse CDF (a uniform draw against the
cumulative probabilities) instead of `torch.multinomial`; greedy decoding (`do_sample=False`) gives `generate()`'s
tokens. The random draws differ from `generate()`'s, so one seed gives other (equally likely) samples.
"""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from .causal_decoder import causal_prompt, prompt_cache


# The options this sampler applies; a generation config setting any other one away from `generate()`'s default decodes
# through `generate()`.
SAMPLER_OPTIONS = frozenset(
    {
        "do_sample",
        "max_new_tokens",
        "min_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "suppress_tokens",
        "pad_token_id",
        "eos_token_id",
        "decoder_start_token_id",
        "bos_token_id",
        "use_cache",
        "num_return_sequences",
        "max_length",  # max_new_tokens takes precedence
        "output_attentions",
        "output_hidden_states",
        "_from_model_config",
        "transformers_version",
    }
)


def resolved_generation_config(language_model, generation_config: GenerationConfig) -> GenerationConfig:
    """`generation_config` with what it leaves unset filled as `generate()` fills it: from the language model's own
    generation config, then transformers' global defaults (top-k 50 among them)."""
    resolved = copy.deepcopy(generation_config)
    resolved.update(**language_model.generation_config.to_dict(), defaults_only=True, allow_custom_entries=True)
    resolved.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    return resolved


def samples_fast(language_model, generation_config: GenerationConfig) -> bool:
    """Whether `sample_completions` decodes with `generation_config` as `generate()` would: every option outside
    `SAMPLER_OPTIONS` at `generate()`'s default, a KV cache, a length limit, one return sequence per row, and not
    ZeRO-3 (whose sharded forwards must stay in step across processes)."""
    resolved = resolved_generation_config(language_model, generation_config)
    defaults = {**GenerationConfig().to_dict(), **GenerationConfig._get_default_generation_params()}
    changed = {
        name
        for name, value in resolved.to_dict().items()
        if name not in SAMPLER_OPTIONS and value != defaults.get(name)
    }
    return (
        not changed
        and resolved.use_cache is not False
        and resolved.max_new_tokens is not None
        and (resolved.num_return_sequences or 1) == 1
        and not is_deepspeed_zero3_enabled()
    )


def next_token_warpers(generation_config: GenerationConfig) -> list:
    """What `generate()` applies to the scores after its processors when it samples: temperature, top-k, top-p."""
    warpers = []
    if generation_config.temperature is not None and generation_config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(generation_config.temperature))
    if generation_config.top_k:
        warpers.append(TopKLogitsWarper(generation_config.top_k))
    if generation_config.top_p is not None and generation_config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(generation_config.top_p))
    return warpers


def draw_from(scores: torch.Tensor) -> torch.Tensor:
    """One token per row `(batch, 1)` from the distribution softmax(`scores`) `(batch, V)`, by inverse CDF."""
    cumulative = scores.float().softmax(-1).cumsum(-1)
    uniform = torch.rand(scores.shape[0], 1, device=scores.device) * cumulative[:, -1:]
    # `right`: a token of probability 0 (a run of equal cumulative values) is never the first index above the draw.
    return torch.searchsorted(cumulative, uniform, right=True).clamp_(max=scores.shape[-1] - 1)


@torch.no_grad()
def sample_completions(
    model,
    generation_config: GenerationConfig,
    num_return_sequences: int = 1,
    **inputs: torch.Tensor,
) -> torch.LongTensor:
    """`(batch·k, T)` completion token ids, pad after each row's EOS, for `inputs` (a TIPPo model's: pixels or cached
    features, title, causal prompt) with k = `num_return_sequences` completions per input in a row. Everything up to
    the decoder runs once per input; the decoder reads each prompt once (T5's encoder; a causal LM's prompt KV cache)
    and continues the k rows from it. T (≤ `max_new_tokens`) ends when every row has ended."""
    config = resolved_generation_config(model.language_model, generation_config)
    k = num_return_sequences
    prefix = model.encode_prefix(
        inputs.get("image_mask"),
        inputs.get("pixel_values"),
        inputs.get("title_input_ids"),
        inputs.get("title_attention_mask"),
        inputs.get("image_features"),
        inputs.get("title_features"),
    )
    language_model = model.language_model
    embed = language_model.get_input_embeddings()
    if model.config.is_encoder_decoder:
        encoder_states = language_model.get_encoder()(
            inputs_embeds=prefix.inputs_embeds, attention_mask=prefix.attention_mask, return_dict=True
        ).last_hidden_state
        encoder_states = encoder_states.repeat_interleave(k, 0)
        encoder_mask = prefix.attention_mask.repeat_interleave(k, 0)
        start = config.decoder_start_token_id
        tokens = torch.full((len(encoder_states), 1), start, dtype=torch.long, device=encoder_states.device)
        cache = None
    else:
        prompt_embeds, prompt_mask = causal_prompt(
            language_model,
            prefix.inputs_embeds,
            prefix.attention_mask,
            inputs.get("prompt_input_ids"),
            inputs.get("prompt_attention_mask"),
        )
        # The prompt but its last position is read once and its KV cache repeated; the last position starts decoding.
        cache = prompt_cache(language_model, prompt_embeds[:, :-1], prompt_mask[:, :-1], k)
        step_embeds = prompt_embeds[:, -1:].repeat_interleave(k, 0)
        prompt_mask = prompt_mask.repeat_interleave(k, 0)
        # The attention mask and positions of every step, sliced per step (the completion's positions are all real).
        full_mask = torch.cat([prompt_mask, prompt_mask.new_ones(len(prompt_mask), config.max_new_tokens)], dim=1)
        all_positions = (
            prompt_mask.long().sum(1, keepdim=True)
            - 1
            + torch.arange(config.max_new_tokens, device=prompt_mask.device)
        )
    rows = len(encoder_states) if model.config.is_encoder_decoder else len(step_embeds)
    device = prefix.inputs_embeds.device
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    suppressed = torch.tensor(list(config.suppress_tokens or []), dtype=torch.long, device=device)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    warpers = next_token_warpers(config) if config.do_sample else []
    finished = torch.zeros(rows, 1, dtype=torch.bool, device=device)
    completion = []
    for step in range(config.max_new_tokens):
        if model.config.is_encoder_decoder:
            outputs = language_model(
                encoder_outputs=(encoder_states,),
                attention_mask=encoder_mask,
                decoder_input_ids=tokens,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
        else:
            outputs = language_model(
                inputs_embeds=step_embeds,
                attention_mask=full_mask[:, : prompt_mask.shape[1] + step],
                position_ids=all_positions[:, step : step + 1],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                return_dict=True,
            )
        cache = outputs.past_key_values
        scores = outputs.logits[:, -1].float()
        if len(suppressed):
            scores[:, suppressed] = -float("inf")
        if config.min_new_tokens and step < config.min_new_tokens and eos:
            scores[:, eos_ids] = -float("inf")
        if config.do_sample:
            for warper in warpers:
                scores = warper(None, scores)
            tokens = draw_from(scores)
        else:
            tokens = scores.argmax(-1, keepdim=True)
        if step and finished.any():
            tokens = tokens.masked_fill(finished, pad)
        completion.append(tokens)
        if eos:
            finished |= tokens == eos_ids[0] if len(eos) == 1 else torch.isin(tokens, eos_ids)
            if finished.all():
                break
        if not model.config.is_encoder_decoder:
            step_embeds = embed(tokens).to(step_embeds.dtype)
    return torch.cat(completion, dim=1)
