"""The SFT stage: L_SFT = L_NTP + α·L_C on TRL's SFTTrainer, its recipe, LoRA, resume, Hub push, DDP, ZeRO-2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from recipe_loading import launch_recipe
from transformers import TrainerCallback
from trl import TrlParser

from tippo_rl import TIPPoModel, TIPPoProcessor, build_tiny_tippo, load_artmuse, make_demo_dataset
from tippo_rl.data_collator import TIPPoDataCollator
from tippo_rl.evaluation import compute_metrics
from tippo_rl.generation import generate_predictions
from tippo_rl.lora import lora_config
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.modeling_tippo import prototype_contrastive_loss
from tippo_rl.script_arguments import TIPPoScriptArguments
from tippo_rl.trainer import TIPPoSFTConfig, TIPPoSFTTrainer


REPO = Path(__file__).resolve().parents[1]


def sft_config(tmp_path: Path, **overrides) -> TIPPoSFTConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        seed=0,
        feature_cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    settings.update(overrides)
    return TIPPoSFTConfig(**settings)


def make_trainer(tmp_path, dataset_dir, peft=False, **overrides):
    model, processor = build_tiny_tippo(seed=0)
    train = load_artmuse(dataset_dir / "train.jsonl")
    peft_config = lora_config(TIPPoModelConfig(use_peft=True, lora_r=4, lora_alpha=8), model) if peft else None
    return TIPPoSFTTrainer(
        model=model,
        args=sft_config(tmp_path, **overrides),
        processor=processor,
        train_dataset=train,
        peft_config=peft_config,
    )


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


# -- configuration ------------------------------------------------------------------------------------


def test_a_dataset_without_a_reference_column_is_refused_at_the_trainer(tmp_path, demo_dataset_dir):
    from tippo_rl.data import DataValidationError

    model, processor = build_tiny_tippo(seed=0)
    train = load_artmuse(demo_dataset_dir / "train.jsonl").rename_column("reference", "text")
    with pytest.raises(DataValidationError, match="train_dataset has no column 'reference'; its columns: .*text"):
        TIPPoSFTTrainer(model=model, args=sft_config(tmp_path), processor=processor, train_dataset=train)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        (["--contrastive_weight", "-1"], "contrastive_weight"),
        (["--learning_rate", "-1"], "learning_rate"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
        (["--weight_decay", "-0.1"], "weight_decay"),
        (["--contrastive_temperature", "0"], "contrastive_temperature"),
        (["--daa_lambda_schedule", "cosine"], "daa_lambda_schedule"),
        (["--daa_lambda_schedule", "constant", "--daa_lambda1_constant", "1.5"], "daa_lambda1_constant"),
        (["--dataset", "artmuse", "--train_file", "/no/such/train.jsonl"], "train_file"),
        (["--dataset", "flickr"], "dataset"),
        (["--preset", "huge"], "preset"),
    ],
)
def test_bad_config_values_fail_at_parse_time_naming_the_field(tmp_path, arguments, field):
    parser = TrlParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))
    with pytest.raises(ValueError, match=field):
        parser.parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true", *arguments])


def test_demo_yaml_config_parses():
    parser = TrlParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=["--config", str(REPO / "recipes/configs/demo_sft.yaml")]
    )
    assert script_args.dataset == "demo" and model_args.preset == "tiny"
    assert training_args.contrastive_weight == 1.0 and training_args.bf16 is False


# -- the loss and the λ1 schedule ---------------------------------------------------------------------


def test_compute_loss_is_ntp_plus_alpha_times_contrastive(tmp_path, demo_dataset_dir):
    trainer = make_trainer(tmp_path, demo_dataset_dir, contrastive_weight=0.5, contrastive_temperature=0.7)
    rows = [trainer.train_dataset[index] for index in range(6)]
    batch = TIPPoDataCollator(trainer.processor)(rows)
    model = trainer.model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    inputs = {key: value for key, value in batch.items() if key not in ("references", "titles", "ids")}
    outputs = model(**inputs)
    expected = outputs.ntp_loss + 0.5 * prototype_contrastive_loss(outputs.image_signals, outputs.image_mask, 0.7)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(
        outputs.loss, expected
    )  # the model's own loss: the trainer's settings are in its config
    assert model.config.contrastive_weight == 0.5


def test_own_image_negatives_reach_the_loss_and_bad_choices_are_refused(tmp_path, demo_dataset_dir):
    trainer = make_trainer(tmp_path, demo_dataset_dir, contrastive_negatives="own_images")
    batch = TIPPoDataCollator(trainer.processor)([trainer.train_dataset[index] for index in range(6)])
    model = trainer.model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    outputs = model(**{key: value for key, value in batch.items() if key not in ("references", "titles", "ids")})
    own = prototype_contrastive_loss(outputs.image_signals, outputs.image_mask, negatives="own_images")
    torch.testing.assert_close(loss, outputs.ntp_loss + own)
    assert not torch.allclose(own, prototype_contrastive_loss(outputs.image_signals, outputs.image_mask))
    assert (
        trainer.other_processes_images(outputs.image_signals, outputs.image_mask, outputs.image_keys) is None
    )  # one process
    with pytest.raises(ValueError, match="contrastive_negatives must be `batch` or `own_images`"):
        TIPPoSFTConfig(output_dir=str(tmp_path), use_cpu=True, contrastive_negatives="all")
    with pytest.raises(ValueError, match="contrastive_gather adds other processes"):
        TIPPoSFTConfig(
            output_dir=str(tmp_path), use_cpu=True, contrastive_negatives="own_images", contrastive_gather=True
        )


def test_lambda1_follows_the_linear_schedule_and_losses_are_logged(tmp_path, demo_dataset_dir):
    trainer = make_trainer(tmp_path, demo_dataset_dir, max_steps=4)
    trainer.train()
    assert logged(trainer, "daa/lambda1") == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert len(logged(trainer, "loss/ntp")) == 4 and len(logged(trainer, "loss/contrastive")) == 4


def test_step_metrics_are_averaged_over_the_steps_between_logs(tmp_path, demo_dataset_dir):
    ntp_per_step = []
    trainer = make_trainer(tmp_path, demo_dataset_dir, max_steps=4, logging_steps=2)
    step_metrics = trainer._step_metrics["train"]
    add = step_metrics.add

    def recording(name, value, device):
        if name == "loss/ntp":
            ntp_per_step.append(float(value))
        add(name, value, device)

    step_metrics.add = recording
    trainer.train()
    assert logged(trainer, "daa/lambda1") == pytest.approx([0.125, 0.625])  # mean of (0, 0.25), of (0.5, 0.75)
    assert logged(trainer, "loss/ntp") == pytest.approx([sum(ntp_per_step[:2]) / 2, sum(ntp_per_step[2:]) / 2])


def test_step_metrics_keep_running_sums_and_copy_buffers():
    from types import SimpleNamespace

    from tippo_rl.trainer.tippo_trainer import StepMetrics

    one_process = SimpleNamespace(gather=lambda tensor: tensor, num_processes=1)
    metrics, buffer, logged_means = StepMetrics(), torch.tensor([0.5]), {"kl": [], "lambda": []}
    for kl in (1.0, 2.0, 6.0):
        metrics.add("kl", torch.tensor(kl), "cpu")
        metrics.add("lambda", buffer, "cpu")
        buffer.fill_(0.9)  # changed in place after it was recorded
    metrics.reduce_into(logged_means, one_process)
    assert logged_means["kl"] == [pytest.approx(3.0)] and logged_means["lambda"] == [
        pytest.approx((0.5 + 0.9 + 0.9) / 3)
    ]
    metrics.reduce_into(logged_means, one_process)  # nothing new: nothing appended
    metrics.add("kl", float("nan"), "cpu")
    metrics.reduce_into(logged_means, one_process)
    assert math.isnan(logged_means["kl"][-1])  # a NaN loss stays visible


def test_step_metrics_name_a_mismatch_between_processes_instead_of_hanging():
    import zlib
    from types import SimpleNamespace

    from tippo_rl.trainer.tippo_trainer import StepMetrics

    other = torch.tensor([2, zlib.crc32(b"kl\nloss/policy")])  # the other process recorded a second metric

    def gather(tensor):  # two processes: this one's tensor, then the other's
        return torch.cat([tensor, other if tensor.dtype == torch.int64 else tensor])

    metrics = StepMetrics()
    metrics.add("kl", 1.0, "cpu")
    with pytest.raises(RuntimeError, match=r"processes recorded different step metrics .*\['kl'\]"):
        metrics.reduce_into({}, SimpleNamespace(gather=gather, num_processes=2))
    metrics.add("loss/policy", 2.0, "cpu")
    logged_means = {"kl": [], "loss/policy": []}
    metrics.reduce_into(logged_means, SimpleNamespace(gather=gather, num_processes=2))  # now the same names
    assert logged_means == {"kl": [1.0], "loss/policy": [2.0]}


def test_constant_lambda_schedule(tmp_path, demo_dataset_dir):
    trainer = make_trainer(
        tmp_path, demo_dataset_dir, max_steps=2, daa_lambda_schedule="constant", daa_lambda1_constant=0.3
    )
    trainer.train()
    assert logged(trainer, "daa/lambda1") == pytest.approx([0.3, 0.3])


# -- learning -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_learns_the_embedded_default(tmp_path):
    data = make_demo_dataset(tmp_path / "demo", num_train=240, num_test=24)
    model, processor = build_tiny_tippo(seed=0)
    test = load_artmuse(data / "test.jsonl")
    references = {row["id"]: [row["reference"]] for row in test}

    def rouge_l(trained_model):
        predictions = generate_predictions(trained_model, processor, test, max_new_tokens=48)
        return compute_metrics(predictions, references, metrics=["rouge_l"], tokenize="none", lang="en").corpus[
            "ROUGE-L"
        ]

    before = rouge_l(model)
    trainer = TIPPoSFTTrainer(
        model=model,
        args=sft_config(tmp_path, max_steps=150, per_device_train_batch_size=16, logging_steps=10, warmup_steps=10),
        processor=processor,
        train_dataset=load_artmuse(data / "train.jsonl"),
    )
    trainer.train()
    after = rouge_l(trainer.model)
    ntp = logged(trainer, "loss/ntp")
    print(f"SFT on the embedded default: NTP loss {ntp[0]:.3f} -> {ntp[-1]:.3f}; ROUGE-L {before:.3f} -> {after:.3f}")
    assert ntp[-1] < 0.3 * ntp[0]
    assert after > before + 0.3


# -- saving, resuming, LoRA, the Hub ------------------------------------------------------------------


class StopAt(TrainerCallback):
    """Simulates a run killed right after the checkpoint at `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def test_resumed_run_ends_with_the_same_weights(tmp_path, demo_dataset_dir):
    # Adam's default ε = 1e-8 turns float noise in the near-zero gradients of the prototype branch (λ1 ≈ 0 early)
    # into ±lr updates, so two identical runs may differ by ~lr; a larger ε keeps the comparison to float noise.
    settings = dict(
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        adam_epsilon=1e-4,
    )
    full = make_trainer(tmp_path / "full", demo_dataset_dir, **settings)
    full.train()

    interrupted = make_trainer(tmp_path / "resumed", demo_dataset_dir, **settings)
    interrupted.add_callback(StopAt(3))
    interrupted.train()
    checkpoint = tmp_path / "resumed/out/checkpoint-3"
    assert checkpoint.is_dir() and interrupted.state.global_step == 3

    resumed = make_trainer(tmp_path / "resumed", demo_dataset_dir, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)


def test_lora_run_saves_a_model_that_generates_the_same_text(tmp_path, demo_dataset_dir):
    trainer = make_trainer(tmp_path, demo_dataset_dir, peft=True, max_steps=6, learning_rate=1e-2)
    trainer.train()
    trainable = {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert any("lora_" in name for name in trainable) and any("image_adapter" in name for name in trainable)
    assert not any(".encoder.vision_model" in name or "encoder.text_model" in name for name in trainable)
    trainer.save_model()
    output = Path(trainer.args.output_dir)
    assert (output / "adapter/adapter_config.json").is_file() and (output / "model.safetensors").is_file()

    reloaded = TIPPoModel.from_pretrained(output).eval()
    processor = TIPPoProcessor.from_pretrained(output)
    test = load_artmuse(demo_dataset_dir / "test.jsonl")
    peft_predictions = generate_predictions(trainer.model, processor, test, max_new_tokens=24)
    assert any(text for text in peft_predictions.values())
    assert generate_predictions(reloaded, processor, test, max_new_tokens=24) == peft_predictions

    # The adapter names its base (the preset's starting weights, saved beside it): peft's own loader round-trips it.
    from peft import PeftModel

    base = json.loads((output / "adapter/adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str((output / "adapter/base").resolve())
    adapted = PeftModel.from_pretrained(TIPPoModel.from_pretrained(base), output / "adapter").eval()
    assert generate_predictions(adapted, processor, test, max_new_tokens=24) == peft_predictions
    start = build_tiny_tippo(seed=0)[0].state_dict()
    differ = [
        name
        for name, tensor in TIPPoModel.from_pretrained(base).state_dict().items()
        if not torch.equal(tensor, start[name])
    ]
    assert differ == ["daa_lambda1"]  # the weights are the start's; λ1 (a schedule, not a weight) is where SFT left it


def test_push_to_hub_uploads_weights_processor_and_model_card(tmp_path, demo_dataset_dir, monkeypatch):
    uploads = []

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            files = sorted(
                str(path.relative_to(folder_path)) for path in Path(folder_path).rglob("*") if path.is_file()
            )
            uploads.append({"repo_id": repo_id, "files": files, "card": (Path(folder_path) / "README.md").read_text()})

    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeHub())
    trainer = make_trainer(
        tmp_path, demo_dataset_dir, push_to_hub=True, hub_model_id="someone/tippo-demo", max_steps=2
    )
    trainer.train()
    trainer.push_to_hub(dataset_name="demo")
    (upload,) = uploads
    assert upload["repo_id"] == "someone/tippo-demo"
    for name in (
        "model.safetensors",
        "config.json",
        "README.md",
        "tokenizer.json",
        "tippo_processor_config.json",
        "preprocessor_config.json",
        "title_tokenizer/tokenizer.json",
    ):
        assert name in upload["files"], name
    card = upload["card"]
    assert "- tippo" in card and "pipeline_tag: image-text-to-text" in card
    assert "learning_rate: 0.003" in card and "dataset_text_field" not in card  # the options set, not TRL's text ones
    assert "| train_loss |" in card  # the final metrics


def test_model_card_names_start_base_model_and_dataset_and_its_quick_start_runs(tmp_path, demo_dataset_dir, capsys):
    import re

    import yaml

    trainer = make_trainer(tmp_path, demo_dataset_dir, max_steps=1)
    trainer.train()
    trainer.save_model()
    trainer.set_card_arguments(
        "someone/scenes", TIPPoScriptArguments(demo_num_train=24), TIPPoModelConfig(prefix_length=2)
    )
    trainer.model.name_or_path = "someone/tippo-sft"  # as if it had started from a hub model
    trainer.create_model_card()
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == ["someone/tippo-sft"] and metadata["datasets"] == ["someone/scenes"]
    assert "Started from: `someone/tippo-sft`" in card and "random weights)" not in card.split("Decoder:")[0]
    assert "demo_num_train: 24" in card and "prefix_length: 2" in card  # the data and model arguments
    pipeline_start, model_start = re.findall(r"```python\n(.*?)```", card, re.S)
    assert str(Path(trainer.args.output_dir).resolve()) in pipeline_start
    capsys.readouterr()
    exec(model_start, {})  # runs as written: AutoModelForImageTextToText / AutoProcessor on the saved folder
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("['")  # one decoded text
    exec(pipeline_start, {})  # and the image-text-to-text pipeline
    assert capsys.readouterr().out.strip()


# -- launched with accelerate -------------------------------------------------------------------------


def launch(tmp_path, accelerate_config, *extra):
    """The SFT recipe on the demo data (64 rows) with a checkpoint at step 2: that checkpoint's state and the output."""
    output = launch_recipe(
        "sft",
        accelerate_config,
        "--config",
        str(REPO / "recipes/configs/demo_sft.yaml"),
        "--output_dir",
        str(tmp_path / "out"),
        "--demo_dir",
        str(tmp_path / "demo"),
        "--demo_num_train",
        "64",
        "--demo_num_test",
        "8",
        "--feature_cache_dir",
        str(tmp_path / "cache"),
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
        "--disable_tqdm",
        "true",
        *extra,
        cwd=tmp_path,
    )
    return json.loads((tmp_path / "out/checkpoint-2/trainer_state.json").read_text()), output


@pytest.mark.slow
@pytest.mark.distributed
def test_recipe_runs_as_two_ddp_processes_on_cpu(tmp_path):
    state, output = launch(tmp_path, "ddp_2proc_cpu.yaml", "--max_steps", "2", "--contrastive_gather", "true")
    # 2 steps × 16 samples × 2 processes = 64 samples = one epoch of the 64-row dataset (one process: half).
    assert state["epoch"] == pytest.approx(1.0)
    # L_C's negatives are both processes' images: averaged over the processes, twice each process's own.
    logs = [entry for entry in state["log_history"] if "contrastive/negatives" in entry]
    assert logs and all(
        entry["contrastive/negatives"] == pytest.approx(2 * entry["contrastive/images"]) for entry in logs
    )
    model = TIPPoModel.from_pretrained(tmp_path / "out")
    assert model.config.model_type == "tippo"
    # The output_dir lock: held by the main process only (the other one neither took nor refused it), released.
    assert not (tmp_path / "out/_run.lock").exists()
    # DDP is told that every trainable weight is used, so it skips the per-step search for unused ones.
    assert "find_unused_parameters=True" not in output


def test_ddp_skips_the_unused_parameter_search_unless_asked_or_the_encoder_trains(tmp_path, demo_dataset_dir):
    assert make_trainer(tmp_path, demo_dataset_dir, max_steps=1).args.ddp_find_unused_parameters is False
    assert make_trainer(
        tmp_path, demo_dataset_dir, max_steps=1, ddp_find_unused_parameters=True
    ).args.ddp_find_unused_parameters
    model, processor = build_tiny_tippo(seed=0, freeze_encoder=False)
    trainer = TIPPoSFTTrainer(
        model=model,
        args=sft_config(tmp_path),
        processor=processor,
        train_dataset=load_artmuse(demo_dataset_dir / "train.jsonl"),
    )
    assert (
        trainer.args.ddp_find_unused_parameters
    )  # left to TRL, which searches: a training encoder may leave weights unused


@pytest.mark.slow
@pytest.mark.distributed
def test_recipe_runs_under_deepspeed_zero2_on_cpu(tmp_path):
    pytest.importorskip("deepspeed")
    state, _ = launch(tmp_path, "deepspeed_zero2_cpu.yaml", "--max_steps", "2")
    assert state["global_step"] == 2
    assert (tmp_path / "out/checkpoint-2/global_step2").is_dir()  # DeepSpeed's own checkpoint: it really ran
    TIPPoModel.from_pretrained(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.distributed
def test_sft_then_polishppo_run_under_deepspeed_zero3_on_cpu(tmp_path):
    """ZeRO-3 partitions parameters: the feature cache, rollout generation and the reward models must still work."""
    pytest.importorskip("deepspeed")
    state, _ = launch(tmp_path, "deepspeed_zero3_cpu.yaml", "--max_steps", "2")
    assert (tmp_path / "out/checkpoint-2/global_step2").is_dir()
    launch_recipe(
        "polishppo",
        "deepspeed_zero3_cpu.yaml",
        "--config",
        str(REPO / "recipes/configs/demo_polishppo.yaml"),
        "--model_name_or_path",
        str(tmp_path / "out"),
        "--output_dir",
        str(tmp_path / "ppo"),
        "--demo_dir",
        str(tmp_path / "demo"),
        "--feature_cache_dir",
        str(tmp_path / "cache"),
        "--total_iterations",
        "1",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        cwd=tmp_path,
    )
    assert state["global_step"] == 2
    policy = TIPPoModel.from_pretrained(tmp_path / "ppo")
    assert (
        policy.language_model.shared.weight.shape[0] == TIPPoModel.from_pretrained(tmp_path / "out").config.vocab_size
    )


def test_torch_compile_option_finds_the_tippo_model_inside_the_compiled_wrapper(tiny_model_and_processor):
    # `--torch_compile true` (TrainingArguments) wraps the model in an OptimizedModule; compiling itself is lazy, so
    # this stays fast. Both recipes ran end to end with it (README, Scaling).
    from tippo_rl.trainer.tippo_trainer import unwrap_tippo

    model = tiny_model_and_processor[0]
    assert unwrap_tippo(torch.compile(model)) is model


def test_evaluation_adds_generation_metrics_and_keeps_the_best_greedy_checkpoint(tmp_path, demo_dataset_dir):
    model, processor = build_tiny_tippo(seed=0)
    args = sft_config(
        tmp_path,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_literal",
        eval_max_samples=4,
        per_device_eval_batch_size=4,
        eval_generation_kwargs='{"max_new_tokens": 8}',
    )
    trainer = TIPPoSFTTrainer(
        model=model,
        args=args,
        processor=processor,
        train_dataset=load_artmuse(demo_dataset_dir / "train.jsonl"),
        eval_dataset=load_artmuse(demo_dataset_dir / "test.jsonl"),
    )
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == 3
    for entry in evaluations:  # the loss and the generation metrics in one evaluation
        assert all(math.isfinite(entry[key]) for key in ("eval_rouge_l", "eval_cider", "eval_literal"))
    assert len(trainer.eval_completions["completion"]) == 4
    scores = [entry["eval_literal"] for entry in evaluations]
    best = evaluations[max(range(3), key=lambda i: (scores[i], -i))]["step"]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best}")
