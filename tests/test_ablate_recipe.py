"""recipes/ablate.py: the {TIP, TIPPo} × {NTP only, PolishPPO only, NTP → PolishPPO} grid trains every cell for every
seed, evaluates it, and writes ablation.md (mean and range over seeds) / ablation.json / log_history.json and the
plots; its config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from recipe_loading import load_recipe
from trl import TrlParser

from tippo_rl import TIPPoModel
from tippo_rl.evaluation import EvaluationArguments
from tippo_rl.script_arguments import TIPPoScriptArguments


REPO = Path(__file__).resolve().parents[1]


ablate = load_recipe("ablate")


@pytest.mark.slow
def test_grid_trains_evaluates_and_reports_every_cell(tmp_path, demo_dataset_dir):
    data = TIPPoScriptArguments(
        dataset="artmuse",
        train_file=str(demo_dataset_dir / "train.jsonl"),
        eval_file=str(demo_dataset_dir / "test.jsonl"),
        max_eval_samples=4,
    )
    cache = f"feature_cache_dir={tmp_path / 'cache'}"
    quiet = ["disable_tqdm=true", "report_to=none", "logging_steps=1", "save_strategy=no", cache]
    grid = ablate.AblationArguments(
        output_dir=str(tmp_path / "ablate"),
        sft_config=str(REPO / "recipes/configs/demo_sft.yaml"),
        sft_overrides=["max_steps=3", "per_device_train_batch_size=4", *quiet],
        polishppo_config=str(REPO / "recipes/configs/demo_polishppo.yaml"),
        polishppo_overrides=[
            "total_iterations=2", "per_device_train_batch_size=4", "steps_per_generation=1", "num_ppo_epochs=1",
            "max_new_tokens=6", *quiet,
        ],
        seeds=[0, 1],
    )  # fmt: skip
    evaluation = EvaluationArguments(metrics=["bleu", "rouge_l"], tokenize="none", max_new_tokens=8)
    table = ablate.main(data, grid, evaluation)
    out = tmp_path / "ablate"

    rows = [line for line in table.splitlines() if line.startswith("| TIP")]
    assert [row.split(" | ")[:2] for row in rows] == [
        [f"| {variant}", schedule]
        for variant in ("TIP", "TIPPo")
        for schedule in ("NTP only", "PolishPPO only", "NTP → PolishPPO")
    ]
    # Mean (min–max) over the two seeds.
    assert all(re.search(r"\d+\.\d\d \(\d+\.\d\d–\d+\.\d\d\)", row) for row in rows)
    assert table in (out / "ablation.md").read_text()

    summary = json.loads((out / "ablation.json").read_text())
    assert [(cell["variant"], cell["schedule"]) for cell in summary["cells"]] == [
        (variant, schedule) for variant in ("TIP", "TIPPo") for schedule in ("ntp", "polishppo", "ntp+polishppo")
    ]
    assert all([run["seed"] for run in cell["seeds"]] == [0, 1] for cell in summary["cells"])
    assert all(run["n_samples"] == 4 and "BLEU-4" in run for cell in summary["cells"] for run in cell["seeds"])

    # Each cell is the model its schedule says: TIP has no DAA/DO, PolishPPO-only starts from the untrained model;
    # the seeds train different models.
    for variant, use_daa_do in (("TIP", False), ("TIPPo", True)):
        for folder in ("untrained", "sft", "polishppo", "sft_polishppo"):
            assert TIPPoModel.from_pretrained(out / variant / "seed0" / folder).config.use_daa_do is use_daa_do
        seed0, seed1 = (TIPPoModel.from_pretrained(out / variant / f"seed{seed}" / "untrained") for seed in (0, 1))
        assert not torch.equal(seed0.text_adapter.mlp[0].weight, seed1.text_adapter.mlp[0].weight)

    histories = json.loads((out / "log_history.json").read_text())
    assert set(histories) == {
        f"{v}/{s}/seed{seed}"
        for v in ("TIP", "TIPPo")
        for s in ("sft", "polishppo", "sft_polishppo")
        for seed in (0, 1)
    }
    assert sum("loss" in entry for entry in histories["TIPPo/sft/seed1"]) == 3
    assert sum("rewards/literal/mean" in entry for entry in histories["TIP/sft_polishppo/seed0"]) == 2
    for plot, panels in (
        ("loss.png", 3),
        ("rewards.png", 2),
        ("ablation.png", 1),
    ):  # ablation.png: ROUGE-L (no CIDEr here)
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.width > 500 * panels


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"variants": ["TIP", "FlexMUSE"]}, "--variants"),
        ({"schedules": []}, "--schedules"),
        ({"sft_config": "recipes/configs/nope.yaml"}, "--sft_config"),
        ({"polishppo_overrides": ["total_iterations"]}, "key=value"),
        ({"sft_overrides": ["seed=3"]}, "--seeds"),
        ({"seeds": []}, "--seeds"),
    ],
)
def test_bad_grids_are_refused(settings, match, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match=match):
        ablate.AblationArguments(**settings)


def test_demo_config_parses_to_the_full_grid(monkeypatch):
    monkeypatch.chdir(REPO)
    parser = TrlParser((TIPPoScriptArguments, ablate.AblationArguments, EvaluationArguments))
    script, grid, evaluation = parser.parse_args_and_config(["--config", "recipes/configs/demo_ablate.yaml"])
    assert grid.variants == ["TIP", "TIPPo"] and grid.schedules == ["ntp", "polishppo", "ntp+polishppo"]
    assert any(item.startswith("total_iterations=") for item in grid.polishppo_overrides)
    assert (evaluation.tokenize, script.demo_lang) == ("ptb", "en")
