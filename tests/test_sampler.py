"""The rollout sampler decodes as `generate()` does: the same greedy tokens (EOS, padding, suppressed tokens and
`min_new_tokens` included), the same sampling distribution (compared over thousands of samples), and `generate()`
for every option it does not apply."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import GenerationConfig

from tippo_rl import load_artmuse
from tippo_rl.data_collator import TIPPoDataCollator, model_inputs
from tippo_rl.feature_cache import with_frozen_features
from tippo_rl.sampler import sample_completions, samples_fast


@pytest.fixture(params=["t5", "llama"])
def model_and_processor(request, tiny_model_varied_outputs, tiny_model_and_processor, tiny_causal_model_and_processor):
    if request.param == "t5":
        return tiny_model_varied_outputs.eval(), tiny_model_and_processor[1]
    model, processor = tiny_causal_model_and_processor
    return model.eval(), processor


def inputs_of(model, processor, demo_dataset_dir, rows: int):
    dataset = load_artmuse(demo_dataset_dir / "train.jsonl")
    batch = model_inputs(TIPPoDataCollator(processor, with_labels=False)([dataset[i] for i in range(rows)]))
    return with_frozen_features(model, batch)


def config_of(model, **options) -> GenerationConfig:
    config = model.config
    ids = dict(
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )
    return GenerationConfig(**{**ids, **options}, use_cache=True)


def generated(model, inputs, config, k: int = 1) -> torch.Tensor:
    """`generate()`'s completions alone (T5's start token dropped)."""
    sequences = model.generate(**inputs, generation_config=config, num_return_sequences=k)
    return sequences[:, 1:] if model.config.is_encoder_decoder else sequences


@pytest.mark.parametrize(
    "options",
    [
        dict(max_new_tokens=12),
        dict(max_new_tokens=12, min_new_tokens=6, suppress_tokens=[5, 6, 7]),
        dict(max_new_tokens=12, stop_at_third_token=True),
    ],
    ids=["plain", "min-new-tokens-and-suppressed", "eos-mid-sequence"],
)
def test_greedy_decoding_gives_generates_tokens(model_and_processor, demo_dataset_dir, options):
    """Prompts of different image counts (padding inside the prefix); with `eos-mid-sequence` the EOS is a token the
    model decodes third in some rows, so those rows end early and are padded while the others go on."""
    model, processor = model_and_processor
    inputs = inputs_of(model, processor, demo_dataset_dir, rows=6)
    options = dict(options)
    config = config_of(model, do_sample=False, **options)
    if options.pop("stop_at_third_token", False):
        config = config_of(model, do_sample=False, **options, eos_token_id=int(generated(model, inputs, config)[0, 2]))
    assert samples_fast(model.language_model, config)
    expected = generated(model, inputs, config)
    assert torch.equal(sample_completions(model, config, **inputs), expected)
    if "eos_token_id" in config.to_diff_dict() and config.eos_token_id != model.config.eos_token_id:
        ended = (expected == config.eos_token_id).any(1)
        assert ended.any() and expected.shape[1] == 12  # some rows ended, others ran on


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    counts_a, counts_b = Counter(map(tuple, a.tolist())), Counter(map(tuple, b.tolist()))
    return sum(abs(counts_a[x] - counts_b[x]) for x in counts_a.keys() | counts_b.keys()) / (2 * len(a))


@pytest.mark.parametrize(
    "options",
    [dict(), dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=1.5, top_p=0.8, min_new_tokens=2)],
    ids=["defaults (top-k 50)", "temperature-top-k-top-p", "hot-top-p-min-new-tokens"],
)
def test_samples_follow_generates_distribution(model_and_processor, demo_dataset_dir, options):
    """4000 two-token samples of one prompt: the total variation between the sampler's and `generate()`'s empirical
    distributions of first tokens is that between two `generate()` runs (sampling noise), within 0.03."""
    model, processor = model_and_processor
    inputs = inputs_of(model, processor, demo_dataset_dir, rows=1)
    config = config_of(model, do_sample=True, max_new_tokens=2, **options)
    assert samples_fast(model.language_model, config)
    torch.manual_seed(0)
    reference, other = generated(model, inputs, config, 4000), generated(model, inputs, config, 4000)
    sampled = sample_completions(model, config, 4000, **inputs)
    noise = total_variation(reference[:, :1], other[:, :1])
    assert total_variation(sampled[:, :1], reference[:, :1]) < noise + 0.03
    assert total_variation(sampled, reference) < total_variation(other, reference) + 0.05
    if config.min_new_tokens:
        assert not (sampled == model.config.eos_token_id).any()


@pytest.mark.parametrize(
    "options",
    [dict(repetition_penalty=1.2), dict(num_beams=2), dict(no_repeat_ngram_size=2), dict(max_length=30)],
)
def test_options_it_does_not_apply_decode_through_generate(tiny_causal_model_and_processor, options):
    model = tiny_causal_model_and_processor[0]
    limit = {} if "max_length" in options else {"max_new_tokens": 5}
    assert not samples_fast(model.language_model, config_of(model, do_sample=True, **limit, **options))
    assert samples_fast(model.language_model, config_of(model, do_sample=True, max_new_tokens=5))
