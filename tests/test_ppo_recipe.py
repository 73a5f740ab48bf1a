"""recipes/ppo.py: PPO with a user's own reward alone, on the embedded default at a tiny size; its demo config."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from recipe_loading import load_recipe

from tippo_rl import TIPPoModel
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer.ppo_config import PPOConfig


REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes/configs/demo_ppo.yaml"

USER_REWARD = '''
def mentions_place(prompts, completions, place, log_metric, **kwargs):
    """1 when the completion names the scene's place (the demo rows' own `place` field), plus a little for length."""
    scores = [float(where in text) + len(text.split()) / 100 for text, where in zip(completions, place)]
    log_metric("mentions_place/hits", sum(score >= 1 for score in scores) / len(scores))
    return scores
'''


def parse(*arguments):
    return TIPPoParser((TIPPoScriptArguments, PPOConfig, TIPPoModelConfig)).parse_args_and_config(args=list(arguments))


def test_demo_config_parses_as_scst_with_cider():
    script_args, args, model_args = parse("--config", str(DEMO))
    assert script_args.dataset == "demo" and model_args.model_name_or_path == "outputs/demo_sft"
    assert args.reward_funcs == ["cider"] and not args.use_value_head
    assert args.advantage_baseline == "greedy" and args.num_generations == 4 and args.whiten_advantages is False
    assert args.max_steps == args.total_iterations * args.minibatches_per_iteration


def test_recipe_trains_with_a_user_reward_alone_which_reads_an_extra_column(tmp_path, saved_model):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(textwrap.dedent(USER_REWARD))
    load_recipe("ppo").main(
        *parse(
            "--config",
            str(DEMO),
            "--model_name_or_path",
            str(saved_model),
            "--output_dir",
            str(tmp_path / "out"),
            "--demo_dir",
            str(tmp_path / "demo"),
            "--demo_num_train",
            "16",
            "--demo_num_test",
            "4",
            "--feature_cache_dir",
            str(tmp_path / "cache"),
            "--total_iterations",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--max_new_tokens",
            "8",
            "--logging_steps",
            "1",
            "--save_steps",
            "8",
            "--disable_tqdm",
            "true",
            "--reward_funcs",
            f"{plugin}:mentions_place",
            "--reward_weights",
            "1",
        )
    )
    history = json.loads((tmp_path / "out/checkpoint-8/trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "rewards/mentions_place/mean" in entry]
    assert [entry["iteration"] for entry in logged] == [0.0, 1.0]
    assert all("mentions_place/hits" in entry for entry in logged)  # the reward's log_metric
    assert not any("rewards/literal/mean" in entry for entry in history)  # no built-in reward was needed
    assert not (tmp_path / "out/value_head.safetensors").exists()  # SCST: no critic
    TIPPoModel.from_pretrained(tmp_path / "out")


def test_recipe_on_a_hub_style_dataset_passes_its_other_columns_to_the_reward(tmp_path, saved_model, demo_dataset_dir):
    from tippo_rl import load_artmuse

    load_artmuse(demo_dataset_dir / "train.jsonl").rename_column("reference", "text").remove_columns(
        "references"
    ).save_to_disk(tmp_path / "saved")
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(textwrap.dedent(USER_REWARD))
    load_recipe("ppo").main(
        *parse(
            "--config",
            str(DEMO),
            "--model_name_or_path",
            str(saved_model),
            "--output_dir",
            str(tmp_path / "out"),
            "--dataset_name",
            str(tmp_path / "saved"),
            "--reference_column",
            "text",
            "--feature_cache_dir",
            str(tmp_path / "cache"),
            "--total_iterations",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--max_new_tokens",
            "8",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
            "--reward_funcs",
            f"{plugin}:mentions_place",
            "literal",
            "--reward_weights",
            "1",
            "1",
        )
    )
    assert (tmp_path / "out/model.safetensors").is_file()
