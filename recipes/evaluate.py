"""Evaluate one or more TIPPo models on a dataset split: generate, score, and compare them in one table.

    python recipes/evaluate.py --config recipes/configs/demo_evaluate.yaml

Writes into `output_dir`: `predictions/<model>.jsonl` (prediction, references and per-sample scores per row),
`metrics.json` (every corpus score and the settings) and `report.md` (the table, ×100, and a few examples); prints
the table. Everything a run may change is in the YAML config or on the command line (`--help` lists it all), e.g.
`--models "SFT=outputs/demo_sft" --num_beams 4`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from trl import TrlParser

from tippo_rl import TIPPoModel, TIPPoProcessor, build_tiny_tippo
from tippo_rl.data import load_datasets
from tippo_rl.metrics import MeteorScorer
from tippo_rl.reports import (
    SCENE_FIELDS,
    SCENE_FIELDS_NOTE,
    EvaluationArguments,
    examples_section,
    plot_training_curves,
    scene_fields,
    score_model,
    scores_table,
    spread_table,
    training_log_history,
    write_predictions,
)
from tippo_rl.script_arguments import TIPPoScriptArguments


REPO = Path(__file__).resolve().parents[1]
FRESH_TINY = "tiny"


@dataclass
class EvaluateArguments:
    """Which models to compare and where the report goes."""

    models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Models to compare, each `NAME=PATH` (or just PATH): a saved TIPPo model folder or Hub id, or "
            "`tiny` for a freshly built, untrained tiny preset (the 'before' baseline). In YAML a mapping "
            "`{name: ..., path: ...}` works too."
        },
    )
    output_dir: str = field(
        default="outputs/evaluate", metadata={"help": "Where predictions, metrics.json and report.md go."}
    )

    def __post_init__(self):
        if not self.models:
            raise ValueError("--models is empty: name at least one model, e.g. --models SFT=outputs/demo_sft")
        self.models = [parse_model_entry(entry) for entry in self.models]
        names = [name for name, _ in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"--models: every model needs its own name; got {names}")


def parse_model_entry(entry) -> tuple[str, str]:
    """`NAME=PATH`, `PATH` or `{name, path}` → (name, path)."""
    if isinstance(entry, dict) and set(entry) <= {"name", "path"} and "path" in entry:
        return str(entry.get("name", entry["path"])), str(entry["path"])
    if isinstance(entry, str) and entry.strip():
        name, sep, path = entry.partition("=")
        return (name.strip(), path.strip()) if sep else (entry.strip(), entry.strip())
    raise ValueError(f"--models: cannot read {entry!r}; write NAME=PATH (YAML: {{name: NAME, path: PATH}})")


GENERIC_HINT = (
    "Train it first with recipes/sft.py or recipes/polishppo.py (the folder is their `output_dir`), or fix the path."
)


def how_to_produce(path: str) -> str | None:
    """The command that trains the model in `path`, if a recipe config in recipes/configs has it as `output_dir`."""
    for config in sorted((REPO / "recipes" / "configs").glob("*.yaml")):
        output_dir = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("output_dir")
        recipe = REPO / "recipes" / f"{config.stem.split('_', 1)[-1]}.py"
        # Recipes write `output_dir` relative to where they run, as this script reads `path`.
        if output_dir and Path(output_dir).resolve() == Path(path).resolve() and recipe.exists():
            config_path, recipe_path = config.relative_to(REPO), recipe.relative_to(REPO)
            launcher = "accelerate launch" + (
                " --config_file accelerate_configs/cpu.yaml" if config.stem.startswith("demo_") else ""
            )
            hint = f"Train it first: `{launcher} {recipe_path} --config {config_path}`"
            target = config.stem.replace("_", "-")
            makefile = REPO / "Makefile"
            if makefile.exists() and re.search(rf"^{re.escape(target)}:", makefile.read_text(), re.MULTILINE):
                hint += f" (or `make {target}`)"
            return hint + "."
    return None


def check_model(name: str, path: str) -> None:
    """Raise, saying how to produce it, if `path` should be a local model folder but holds none. (A path that can
    only be a Hub id, `org/name`, is left to `from_pretrained`.)"""
    folder = Path(path)
    if path == FRESH_TINY or (folder / "config.json").is_file():
        return
    hint = how_to_produce(path)
    hub_id_like = path.count("/") == 1 and not path.startswith((".", "/", "~")) and not folder.parent.is_dir()
    if folder.exists():
        raise ValueError(f"model {name!r}: {path!r} holds no saved model (no config.json). {hint or GENERIC_HINT}")
    if hint or not hub_id_like:
        raise ValueError(f"model {name!r}: no checkpoint at {path!r}. {hint or GENERIC_HINT}")


def load_model(name: str, path: str, lang: str) -> tuple[TIPPoModel, TIPPoProcessor]:
    """The model called `name`: a fresh tiny preset for `tiny`, else a saved model (folder or Hub id)."""
    if path == FRESH_TINY:
        return build_tiny_tippo(lang=lang, seed=0)
    try:
        return TIPPoModel.from_pretrained(path), TIPPoProcessor.from_pretrained(path)
    except OSError as error:
        raise ValueError(f"model {name!r}: cannot load {path!r}: {error}") from error


def main(script_args: TIPPoScriptArguments, evaluate_args: EvaluateArguments, eval_args: EvaluationArguments) -> str:
    """Evaluate every model of `evaluate_args.models`; returns the markdown table (also printed)."""
    train, evaluation = load_datasets(script_args)
    dataset = train if eval_args.split == "train" else evaluation
    if dataset is None:
        raise ValueError(
            f"{script_args.dataset_id} has no evaluation split: set --eval_file (artmuse) or "
            "--coco_eval_annotations (cococn), or evaluate on --split train"
        )
    for name, path in evaluate_args.models:  # fail on a missing checkpoint before spending time on the others
        check_model(name, path)
    output_dir = Path(evaluate_args.output_dir)
    results, predictions, summaries, files, fields = [], {}, {}, [], []
    meteor = MeteorScorer() if "meteor" in eval_args.metrics else None
    try:
        for name, path in evaluate_args.models:
            model, processor = load_model(name, path, script_args.demo_lang)
            predictions[name], result, seconds = score_model(model, processor, dataset, eval_args, meteor)
            for message in result.warnings:
                print(f"{name}: {message}", file=sys.stderr)
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
            file_name = (
                f"predictions/{stem}.jsonl"
                if stem not in (Path(f).stem for f in files)
                else f"predictions/{stem}-{len(files)}.jsonl"
            )
            files.append(file_name)
            write_predictions(output_dir / file_name, dataset, predictions[name], result)
            results.append(([name], result))
            summaries[name] = {
                "path": path,
                "predictions": file_name,
                "generation_seconds": round(seconds, 2),
                **result.summary(),
            }
            if script_args.dataset == "demo":  # the embedded default's references can be read back field by field
                summaries[name]["scene_fields"] = scene_fields(dataset, predictions[name], script_args.demo_lang)
                fields.append(([name], [summaries[name]["scene_fields"]]))
    finally:
        if meteor is not None:
            meteor.close()

    histories = {
        name: history
        for name, path in evaluate_args.models
        if path != FRESH_TINY and (history := training_log_history(path))
    }
    curves = plot_training_curves(output_dir / "training_curves.png", histories) if histories else False
    table = scores_table(results, ["Model"])
    if fields:
        table += f"\n\n{SCENE_FIELDS_NOTE}\n\n"
        table += spread_table(fields, ["Model"], SCENE_FIELDS, digits=1)
    decoding = ", ".join(f"{key} {value}" for key, value in eval_args.generate_kwargs().items())
    report = "\n\n".join(
        [
            f"# Evaluation on {script_args.dataset_id} ({eval_args.split} split, {len(dataset)} samples)",
            table,
            f"Scores ×100 (CIDEr-D too); `empty`: predictions without a token. Decoding: {decoding}. "
            f"Metrics: {', '.join(eval_args.metrics)}; tokenize `{eval_args.tokenize}`, lang `{eval_args.lang}`. "
            "Per-sample scores: `predictions/*.jsonl`; all scores: `metrics.json`.",
            "## Examples",
            examples_section(dataset, predictions, eval_args.num_examples),
            *(
                [
                    "## Training curves",
                    f"Logged by the recipes ({', '.join(histories)}):",
                    "![training curves](training_curves.png)",
                ]
                if curves
                else []
            ),
        ]
    )
    (output_dir / "report.md").write_text(report + "\n", encoding="utf-8")
    settings = {"dataset": asdict(script_args), "evaluation": asdict(eval_args), "n_samples": len(dataset)}
    metrics = {"settings": settings, "models": summaries}
    (output_dir / "metrics.json").write_text(
        json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(table)
    if curves:
        print(f"Training curves: {output_dir / 'training_curves.png'}")
    print(f"\nReport, metrics and predictions written to {output_dir}")
    return table


if __name__ == "__main__":
    parser = TrlParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments))
    try:
        main(*parser.parse_args_and_config())
    except ValueError as error:
        sys.exit(f"evaluate.py: error: {error}")
