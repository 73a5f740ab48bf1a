"""recipes/evaluate.py: several models in one run → predictions, metrics.json, report.md and a printed table; its
errors for a missing checkpoint; its configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from recipe_loading import load_recipe
from trl import TrlParser

from tippo_rl import load_artmuse
from tippo_rl.evaluation import EvaluateArguments, EvaluationArguments
from tippo_rl.evaluation.model_evaluation import check_model, parse_model_entry
from tippo_rl.generation import generate_predictions
from tippo_rl.script_arguments import TIPPoScriptArguments


REPO = Path(__file__).resolve().parents[1]


evaluate = load_recipe("evaluate")


def demo_split(demo_dataset_dir: Path, max_eval_samples: int = 4) -> TIPPoScriptArguments:
    return TIPPoScriptArguments(
        dataset="artmuse",
        train_file=str(demo_dataset_dir / "train.jsonl"),
        eval_file=str(demo_dataset_dir / "test.jsonl"),
        max_eval_samples=max_eval_samples,
    )


def fast_metrics(**overrides) -> EvaluationArguments:
    # No Java in this test (METEOR and PTB have their own tests in test_metrics.py): it stays fast.
    return EvaluationArguments(
        **{"metrics": ["bleu", "rouge_l", "cider"], "tokenize": "none", "batch_size": 3, **overrides}
    )


def test_two_models_give_predictions_metrics_report_and_printed_table(
    tmp_path, demo_dataset_dir, saved_model, tiny_model_varied_outputs, tiny_model_and_processor, capsys
):
    models = EvaluateArguments(models=["untrained=tiny", f"trained={saved_model}"], output_dir=str(tmp_path / "out"))
    table = evaluate.main(demo_split(demo_dataset_dir), models, fast_metrics(max_new_tokens=12))
    out = tmp_path / "out"

    assert table in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "| Model | BLEU-4 | ROUGE-L | CIDEr | empty |" in report
    # The fresh preset (its vocabulary the evaluated references' words, since the data is not the demo) writes no
    # 4-gram of them.
    assert re.search(r"\| untrained \| 0\.00 \| \d+\.\d\d \| \d+\.\d\d \| \d/4 \|", report)
    assert "| trained |" in report and "## Examples" in report

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["untrained", "trained"]
    assert metrics["settings"]["n_samples"] == 4 and metrics["settings"]["evaluation"]["max_new_tokens"] == 12
    trained = metrics["models"]["trained"]
    assert trained["path"] == str(saved_model) and trained["n_samples"] == 4 and trained["n_empty_predictions"] == 0
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"} <= set(trained) and "METEOR" not in trained

    # The saved predictions are the model's own greedy generations, with references and per-sample scores.
    rows = [json.loads(line) for line in (out / trained["predictions"]).read_text().splitlines()]
    dataset = load_artmuse(demo_dataset_dir / "test.jsonl").select(range(4))
    expected = generate_predictions(tiny_model_varied_outputs, tiny_model_and_processor[1], dataset, max_new_tokens=12)
    assert {row["id"]: row["prediction"] for row in rows} == expected
    assert rows[0]["references"] == dataset[0]["references"] and set(rows[0]["scores"]) >= {"BLEU-4", "CIDEr"}


def test_a_meteor_scorer_started_beforehand_scores_every_model_and_is_left_open(
    tmp_path, demo_dataset_dir, saved_model
):
    class StartedMeteor:  # stands in for a MeteorScorer whose JVM recipes/demo.py started earlier
        calls, closed = 0, False

        def compute_score(self, gts, res):
            self.calls += 1
            return 0.5, [0.5] * len(res)

        def close(self):
            self.closed = True

    meteor = StartedMeteor()
    models = EvaluateArguments(models=["untrained=tiny", f"trained={saved_model}"], output_dir=str(tmp_path / "out"))
    settings = fast_metrics(max_new_tokens=4, metrics=["bleu", "meteor"])
    evaluate.main(demo_split(demo_dataset_dir), models, settings, meteor_scorer=meteor)
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())["models"]
    assert meteor.calls == 2 and not meteor.closed
    assert metrics["untrained"]["METEOR"] == metrics["trained"]["METEOR"] == 0.5


def test_models_trained_by_the_recipes_get_their_training_curves_plotted(tmp_path, demo_dataset_dir, saved_model):
    """A model folder with the recipes' `trainer_state.json` gets its losses and rewards drawn beside the table."""
    import shutil

    sft, polish = tmp_path / "sft", tmp_path / "polish"
    for folder, history in (
        (
            sft,
            [
                {"step": 1, "loss/ntp": 3.0, "loss/contrastive": 2.0},
                {"step": 2, "loss/ntp": 1.5, "loss/contrastive": 1.9},
            ],
        ),
        (
            polish,
            [
                {"step": 4, "rewards/literal/mean": 0.7, "returns/mean": 1.6},
                {"step": 8, "rewards/literal/mean": 0.8, "returns/mean": 1.7},
            ],
        ),
    ):
        shutil.copytree(saved_model, folder)
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    models = EvaluateArguments(
        models=[f"SFT={sft}", f"RL={polish}", f"no log={saved_model}"], output_dir=str(tmp_path / "out")
    )
    evaluate.main(demo_split(demo_dataset_dir, 2), models, fast_metrics(max_new_tokens=4))

    assert (tmp_path / "out/training_curves.png").stat().st_size > 10_000
    report = (tmp_path / "out/report.md").read_text()
    assert (
        "## Training curves" in report
        and "(SFT, RL)" in report
        and "![training curves](training_curves.png)" in report
    )
    histories = {"SFT": json.loads((sft / "trainer_state.json").read_text())["log_history"]}
    from tippo_rl.evaluation.reports import TRAINING_CURVES, training_log_history

    assert training_log_history(sft) == histories["SFT"] and training_log_history(saved_model) is None
    assert any("loss/ntp" in keys for _, _, keys in TRAINING_CURVES)


def test_each_stage_s_losses_get_a_panel_of_their_own():
    """SFT's NTP loss (~3 per token) and PPO's surrogate loss (~1e-5) on one axis hid the smaller: one panel each."""
    from tippo_rl.evaluation.reports import training_curve_panels

    panels = training_curve_panels(
        {
            "SFT": [{"step": 1, "loss/ntp": 3.0, "loss/contrastive": 2.0}],
            "PPO": [{"step": 1, "loss/policy": 1e-5, "loss/value": 4e-4, "rewards/literal/mean": 0.1}],
        }
    )
    lines = {title: set(panel_lines) for title, _, panel_lines in panels}
    assert lines["SFT loss"] == {"SFT: loss/ntp", "SFT: loss/contrastive"}
    assert lines["PPO / PolishPPO loss"] == {"PPO: loss/policy", "PPO: loss/value"}
    assert lines["rewards (sampled rollouts)"] == {"PPO: rewards/literal/mean"}


@pytest.mark.parametrize("make_folder", [False, True])
def test_missing_checkpoint_is_named_with_the_command_that_trains_it(
    tmp_path, monkeypatch, demo_dataset_dir, make_folder
):
    monkeypatch.chdir(tmp_path)  # `outputs/demo_sft` here is relative to where the recipes run
    if make_folder:
        Path("outputs/demo_sft/checkpoint-100").mkdir(parents=True)  # an interrupted run: no final model
    models = EvaluateArguments(models=["untrained=tiny", "SFT=outputs/demo_sft"], output_dir="out")
    with pytest.raises(ValueError) as error:
        evaluate.main(demo_split(demo_dataset_dir), models, fast_metrics())
    message = str(error.value)
    assert "model 'SFT'" in message and "'outputs/demo_sft'" in message
    assert "recipes/sft.py --config recipes/configs/demo_sft.yaml" in message and "make demo-sft" in message
    assert not Path("out").exists()  # it failed before generating with the other models


def test_the_training_command_is_looked_up_in_the_checkout_the_recipe_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("outputs").mkdir()  # `outputs/demo_sft` is then a missing folder, not a Hub id
    with pytest.raises(
        ValueError, match=r"no checkpoint at 'outputs/demo_sft'\. Train it first with recipes/sft\.py or"
    ):
        check_model("SFT", "outputs/demo_sft")  # the library guesses no checkout: the generic hint
    with pytest.raises(ValueError, match=r"recipes/configs/demo_sft\.yaml` \(or `make demo-sft`\)"):
        check_model("SFT", "outputs/demo_sft", repo=REPO)
    with pytest.raises(ValueError, match=r"recipes/sft\.py --config recipes/configs/demo_causal_sft\.yaml`"):
        check_model("causal SFT", "outputs/demo_causal_sft", repo=REPO)  # the recipe is the config's last word


def test_an_unknown_path_gets_a_generic_hint(demo_dataset_dir, tmp_path):
    models = EvaluateArguments(models=[str(tmp_path / "nowhere")], output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"no checkpoint at .*nowhere.*recipes/sft\.py or recipes/polishppo\.py"):
        evaluate.main(demo_split(demo_dataset_dir), models, fast_metrics())


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("SFT=outputs/demo_sft", ("SFT", "outputs/demo_sft")),
        ("SFT + PolishPPO = outputs/a=b", ("SFT + PolishPPO", "outputs/a=b")),
        ("outputs/demo_sft", ("outputs/demo_sft", "outputs/demo_sft")),
        ({"name": "base", "path": "tiny"}, ("base", "tiny")),
    ],
)
def test_model_entries(entry, expected):
    assert parse_model_entry(entry) == expected


@pytest.mark.parametrize(
    ("models", "match"),
    [([], "--models is empty"), (["a=tiny", "a=outputs/x"], "its own name"), ([{"name": "x"}], "cannot read")],
)
def test_bad_model_lists_are_refused(models, match):
    with pytest.raises(ValueError, match=match):
        EvaluateArguments(models=models)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"split": "test"}, "--split"),
        ({"tokenize": "spacy"}, "--tokenize"),
        ({"metrics": ["bleurt"]}, "bleurt"),
        ({"temperature": 0}, "--temperature"),
        ({"generation_kwargs": "{not json"}, "--generation_kwargs must be a JSON object"),
        ({"generation_kwargs": '{"num_return_sequences": 3}'}, "--generation_kwargs .*num_return_sequences"),
    ],
)
def test_bad_evaluation_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        EvaluationArguments(**settings)


def test_demo_config_parses_to_the_before_after_comparison():
    parser = TrlParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments))
    script, models, settings = parser.parse_args_and_config(
        ["--config", str(REPO / "recipes/configs/demo_evaluate.yaml")]
    )
    assert models.models == [
        ("untrained", "tiny"),
        ("SFT", "outputs/demo_sft"),
        ("SFT + PolishPPO", "outputs/demo_polishppo"),
    ]
    assert (settings.tokenize, script.demo_lang, settings.num_beams, settings.do_sample) == ("ptb", "en", 1, False)


@pytest.mark.parametrize(
    ("config", "paths", "settings"),
    [
        ("artmuse_evaluate.yaml", ["train_file", "eval_file", "image_root"], ("jieba", "zh", "bertscore")),
        (
            "cococn_evaluate.yaml",
            ["coco_train_annotations", "coco_eval_annotations", "coco_image_dir"],
            ("jieba", "zh", "cider"),
        ),
    ],
)
def test_paper_configs_parse_once_their_data_paths_exist(tmp_path, config, paths, settings):
    """Every key of the ArtMuse / COCO-CN configs is a real argument; only the placeholder paths need filling in."""
    for name in paths:
        (tmp_path / name).touch()
    placeholders = [argument for name in paths for argument in (f"--{name}", str(tmp_path / name))]
    parser = TrlParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments))
    script, models, evaluation = parser.parse_args_and_config(
        ["--config", str(REPO / "recipes/configs" / config), *placeholders]
    )
    assert [name for name, _ in models.models] == ["SFT", "SFT + PolishPPO"]
    assert (evaluation.tokenize, script.lang) == settings[:2] and settings[2] in evaluation.metrics


def test_generation_kwargs_reach_generate_from_the_command_line():
    from trl import TrlParser

    from tippo_rl.script_arguments import TIPPoScriptArguments

    parser = TrlParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments))
    _, _, eval_args = parser.parse_args_and_config(
        args=[
            "--models",
            "tiny",
            "--num_beams",
            "2",
            "--generation_kwargs",
            '{"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}',
        ]
    )
    assert eval_args.generate_kwargs() == {
        "num_beams": 2,
        "do_sample": False,
        "repetition_penalty": 1.2,
        "no_repeat_ngram_size": 3,
    }


def test_training_curves_fall_back_on_the_newest_checkpoints_log(tmp_path):
    from tippo_rl.evaluation.reports import training_log_history

    for step, loss in ((2, 3.0), (10, 1.0)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}/trainer_state.json").write_text(
            json.dumps({"log_history": [{"step": step, "loss": loss}]})
        )
    assert training_log_history(tmp_path) == [{"step": 10, "loss": 1.0}]  # checkpoint-10, not checkpoint-2 (by name)
    assert training_log_history(tmp_path / "absent") is None
