"""k completions of a prompt share one pass up to the decoder (and a causal LM's pass over the prompt, through its KV
cache): the same log-probabilities, hidden states and gradients as k separate passes (T5 and causal decoders), the same
rollout log-probs and samples in the trainer, and minibatches of whole groups."""

from __future__ import annotations

import copy

import pytest
import torch

from tippo_rl import load_artmuse
from tippo_rl.data_collator import TIPPoDataCollator, model_inputs
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_trainer import PPOTrainer


K = 3


def batch_of(processor, demo_dataset_dir, prompts: int = 2):
    rows = [load_artmuse(demo_dataset_dir / "train.jsonl")[i] for i in range(prompts)]
    return model_inputs(TIPPoDataCollator(processor, with_labels=False)(rows))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("decoder", ["t5", "llama"])
def test_one_pass_per_prompt_gives_the_log_probs_and_gradients_of_k_passes(
    decoder,
    dtype,
    tiny_model_varied_outputs,
    tiny_causal_model_and_processor,
    tiny_model_and_processor,
    demo_dataset_dir,
):
    """In float64 the two paths agree to 1e-6 (the same arithmetic; T5's layer norm computes its variance in float32,
    so gradients differ by ~4e-8 relative); in float32 the log-probs agree to the rounding of batched kernels whose
    batch size differs (2 prompts vs 6 rows: up to ~6e-5 in a log-prob of magnitude 10)."""
    model, processor = (
        (tiny_model_varied_outputs, tiny_model_and_processor[1])
        if decoder == "t5"
        else tiny_causal_model_and_processor
    )
    tolerance = 1e-6 if dtype == torch.float64 else 2e-4
    model = copy.deepcopy(model).to(dtype).train()
    for module in model.modules():  # dropout off: the two paths see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in batch_of(processor, demo_dataset_dir).items()
    }
    completions = torch.randint(3, len(processor.tokenizer), (2 * K, 7), generator=torch.Generator().manual_seed(0))

    def log_probs_and_grads(shared: bool):
        model.zero_grad()
        if shared:
            outputs = model(
                **inputs, decoder_input_ids=completions, completions_per_input=K, output_hidden_states=True
            )
        else:
            repeated = {key: value.repeat_interleave(K, 0) for key, value in inputs.items()}
            outputs = model(**repeated, decoder_input_ids=completions, output_hidden_states=True)
        logps = outputs.logits.log_softmax(-1).gather(-1, completions[..., None])[..., 0]
        hidden = (outputs.decoder_hidden_states if decoder == "t5" else outputs.hidden_states)[-1]  # the value head's
        (logps.sum() + hidden.sum()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return logps.detach(), hidden.detach(), grads

    shared, shared_hidden, shared_grads = log_probs_and_grads(True)
    separate, separate_hidden, separate_grads = log_probs_and_grads(False)
    torch.testing.assert_close(shared, separate, atol=tolerance, rtol=0)
    torch.testing.assert_close(
        shared_hidden, separate_hidden, atol=tolerance, rtol=0 if dtype == torch.float64 else 1e-3
    )
    assert shared_grads.keys() == separate_grads.keys() and any("adapter" in name for name in shared_grads)
    for name in shared_grads if dtype == torch.float64 else ():  # float32 gradients: cancellation amplifies rounding
        difference = (shared_grads[name] - separate_grads[name]).abs().max().item()
        assert difference <= tolerance * max(1.0, separate_grads[name].abs().max().item()), (name, difference)


def test_the_trainer_s_rollout_log_probs_are_the_same_either_way(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    train = load_artmuse(demo_dataset_dir / "train.jsonl")

    def trainer(once: bool) -> PPOTrainer:
        args = PPOConfig(
            output_dir=str(tmp_path / str(once)), per_device_train_batch_size=6, num_generations=K, steps_per_generation=2,
            use_value_head=False, advantage_baseline="group", max_new_tokens=8, total_iterations=1, kl_coef=0.1,
            encode_prompt_once=once, report_to="none", use_cpu=True, save_strategy="no",
            feature_cache_dir=str(tmp_path / "cache"),
        )  # fmt: skip
        reward = lambda completions, **kwargs: [float(len(c)) for c in completions]  # noqa: E731
        return PPOTrainer(copy.deepcopy(tiny_model_varied_outputs), args, tiny_model_and_processor[1], train, [reward])

    once, per_row = trainer(True), trainer(False)
    assert (once.prompt_group, per_row.prompt_group) == (K, 1)
    rollouts = once.generate_rollouts(once.data_collator(next(iter(once.get_train_dataloader())).rows))
    assert len(rollouts["completion_ids"]) == 12 and all(
        len(set(map(str, group))) >= 1 for group in rollouts["completion_ids"].view(4, K, -1)
    )
    order = once.shuffled_rows(12, torch.device("cpu"))  # whole groups, each in a row
    assert sorted(order.tolist()) == list(range(12))
    assert all((group - group[0] == torch.arange(K)).all() and group[0] % K == 0 for group in order.view(-1, K))
    shared = once.compute_rollout_log_probs({**rollouts, "first_pass_order": order})
    separate = per_row.compute_rollout_log_probs({**rollouts, "first_pass_order": order})
    for key in ("old_logps", "ref_logps"):  # float32: batched kernels of other sizes round differently (see above)
        torch.testing.assert_close(shared[key], separate[key], atol=1e-4, rtol=1e-3)


def test_a_causal_decoder_samples_k_completions_from_one_pass_over_the_prompt(
    tiny_causal_model_and_processor, demo_dataset_dir
):
    """`generate(num_return_sequences=k)` reads each prompt once (its KV cache repeated k times) and samples what k
    copies of the prompt would give with the same seed (float64: the same logits, so the same draws)."""
    model, processor = tiny_causal_model_and_processor
    model = copy.deepcopy(model).to(torch.float64).eval()
    inputs = {
        key: value.to(torch.float64) if value.is_floating_point() else value
        for key, value in batch_of(processor, demo_dataset_dir, prompts=3).items()
    }
    prompt_passes = []

    def record(module, args, kwargs, output):
        read = kwargs.get("inputs_embeds")
        prompt_passes.append(tuple((read if read is not None else kwargs["input_ids"]).shape[:2]))

    model.language_model.register_forward_hook(record, with_kwargs=True)

    def sample(shared: bool) -> torch.Tensor:
        torch.manual_seed(0)
        prompt_passes.clear()
        settings = dict(do_sample=True, max_new_tokens=10, pad_token_id=model.config.pad_token_id)
        if shared:
            return model.generate(**inputs, num_return_sequences=K, **settings)
        return model.generate(**{key: value.repeat_interleave(K, 0) for key, value in inputs.items()}, **settings)

    shared = sample(True)
    shared_passes = list(prompt_passes)
    separate = sample(False)
    assert torch.equal(shared, separate) and len(set(map(str, shared.tolist()))) > 3
    prompt_length = prompt_passes[0][1]  # the repeated prompts' prefill: 3·K rows of the whole prompt
    assert prompt_passes[0] == (3 * K, prompt_length)
    assert shared_passes[0] == (3, prompt_length - 1) and shared_passes[1] == (
        3 * K,
        1,
    )  # once, then the last position


def test_under_activation_checkpointing_a_causal_decoder_reads_the_prompt_with_each_completion(
    tiny_causal_model_and_processor, demo_dataset_dir
):
    """Checkpointed layers drop the KV cache in training, so the prompt-once path cannot serve there: the log-probs
    must still equal k separate passes (float64)."""
    model, processor = tiny_causal_model_and_processor
    model = copy.deepcopy(model).to(torch.float64).train()
    model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs = {
        key: value.to(torch.float64) if value.is_floating_point() else value
        for key, value in batch_of(processor, demo_dataset_dir).items()
    }
    completions = torch.randint(3, len(processor.tokenizer), (2 * K, 7), generator=torch.Generator().manual_seed(0))
    shared = model(**inputs, decoder_input_ids=completions, completions_per_input=K).logits
    repeated = {key: value.repeat_interleave(K, 0) for key, value in inputs.items()}
    separate = model(**repeated, decoder_input_ids=completions).logits
    torch.testing.assert_close(shared, separate, atol=1e-6, rtol=0)
