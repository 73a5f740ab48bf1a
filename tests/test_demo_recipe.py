"""recipes/demo.py (`make demo`): the three stages in one process, the PolishPPO stage's semantic reward built
beforehand in a second process with the arguments the stage's trainer uses (so under the cache key it looks up), and
a METEOR JVM handed to the evaluation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from recipe_loading import load_recipe

from tippo_rl import load_artmuse
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer.polishppo_config import PolishPPOConfig
from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"

demo = load_recipe("demo")


def test_the_semantic_reward_built_beforehand_is_the_one_the_polishppo_trainer_builds(monkeypatch, demo_dataset_dir):
    import tippo_rl.rewards
    import tippo_rl.trainer.polishppo_trainer as polishppo_trainer

    built = []
    monkeypatch.setattr(polishppo_trainer, "load_reward", lambda spec, **kwargs: built.append((spec, kwargs)))
    monkeypatch.setattr(tippo_rl.rewards, "load_reward", lambda spec, **kwargs: built.append((spec, kwargs)))
    config = str(CONFIGS / "demo_polishppo.yaml")
    from tippo_rl.model_config import TIPPoModelConfig

    _, args, _ = TIPPoParser((TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig)).parse_args_and_config(
        ["--config", config]
    )
    PolishPPOTrainer.default_reward_funcs(None, args, load_artmuse(demo_dataset_dir / "train.jsonl"))
    demo.build_semantic_reward(config)
    trainer, beforehand = built
    assert trainer == beforehand and trainer[0] == "semantic" and trainer[1]["backend"] == "static"


def test_nothing_is_built_beforehand_for_an_embedder_without_a_cache(tmp_path):
    config = yaml.safe_load((CONFIGS / "demo_polishppo.yaml").read_text())
    config["semantic_backend"] = "flagembedding"
    (tmp_path / "polishppo.yaml").write_text(yaml.safe_dump(config))
    assert demo.start_semantic_reward(str(tmp_path / "polishppo.yaml")) is None


def small_configs(folder: Path) -> dict[str, Path]:
    """The demo configs at a few steps on 16 + 8 scenes, everything under `folder`; evaluation without Java."""
    data = dict(demo_dir=str(folder / "data"), demo_num_train=16, demo_num_test=8)
    settings = {
        "sft": dict(max_steps=4, per_device_train_batch_size=4, logging_steps=2, save_steps=4, disable_tqdm=True),
        "polishppo": dict(
            model_name_or_path=str(folder / "sft"),
            total_iterations=1,
            per_device_train_batch_size=4,
            max_new_tokens=12,
            eval_steps=4,
            eval_max_samples=4,
            save_steps=4,
            disable_tqdm=True,
        ),
        "evaluate": dict(
            models=["untrained=tiny", f"SFT={folder / 'sft'}", f"SFT + PolishPPO={folder / 'polishppo'}"],
            metrics=["bleu", "rouge_l", "cider"],
            tokenize="none",
            batch_size=4,
            max_new_tokens=12,
        ),
    }
    paths = {}
    for stage, overrides in settings.items():
        config = yaml.safe_load((CONFIGS / f"demo_{stage}.yaml").read_text())
        config.update(data, output_dir=str(folder / stage), **overrides)
        if stage != "evaluate":
            config["feature_cache_dir"] = str(folder / "features")
        paths[stage] = folder / f"{stage}.yaml"
        paths[stage].write_text(yaml.safe_dump(config))
    return paths


@pytest.mark.slow
def test_the_demo_runs_its_three_stages_in_one_process(tmp_path):
    configs = small_configs(tmp_path)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes/demo.py"), "--sft_config", str(configs["sft"]),
         "--polishppo_config", str(configs["polishppo"]), "--evaluate_config", str(configs["evaluate"])],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SFT model and processor saved" in result.stdout and "PolishPPO model and processor saved" in result.stdout
    assert (tmp_path / "evaluate/report.md").is_file() and "| SFT + PolishPPO |" in result.stdout
    # The second process built the static embedder (or found it cached): the PolishPPO stage did not distil it.
    assert "distilling" not in result.stderr
    assert "building the semantic reward beforehand failed" not in result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo: ") and "SFT" in last and "PolishPPO" in last and "evaluation" in last
