"""The paper's ablation grid (Table 3, Fig. 2): {TIP, TIPPo} × {NTP only, PolishPPO only, NTP → PolishPPO}, over seeds.

    python recipes/ablate.py --config recipes/configs/demo_ablate.yaml

Every cell trains in this process by the recipes' own `main` (recipes/sft.py, recipes/polishppo.py), from their
configs (`sft_config`, `polishppo_config`) plus `*_overrides` (e.g. fewer steps). TIP is the same model without DAA
and DO (`use_daa_do: false`); "PolishPPO only" starts PolishPPO from the untrained model (saved to `untrained/`),
"NTP → PolishPPO" from the "NTP only" model. Each seed of `seeds` runs the whole grid again with that seed for the
fresh model's initialisation and for both trainers. All cells train and are evaluated on the dataset set here, with
the evaluation settings here.

Writes into `output_dir`: a folder per trained model (`<variant>/seed<seed>/{untrained,sft,polishppo,sft_polishppo}`),
`ablation.md` (the tables ×100: the mean over seeds and its range), `ablation.json` (every score of every seed, the
settings, training times), `log_history.json` (the trainers' logs), `loss.png` / `rewards.png` (training curves of
the first seed) and `ablation.png` (each cell's scores, seed by seed).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tippo_rl import TIPPoForConditionalGeneration, TIPPoProcessor
from tippo_rl.data import load_datasets
from tippo_rl.evaluation import EvaluationArguments, MeteorScorer, scene_fields, score_model
from tippo_rl.evaluation.model_evaluation import SCENE_FIELDS, SCENE_FIELDS_NOTE
from tippo_rl.evaluation.reports import TABLE_METRICS, log_curve, plot_cells, plot_curves, spread_table
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.options import option
from tippo_rl.output_dir_lock import output_dir_lock
from tippo_rl.presets import load_model_and_processor
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer import TIPPoSFTConfig
from tippo_rl.trainer.polishppo_config import PolishPPOConfig


RECIPES = Path(__file__).resolve().parent  # sft.py and polishppo.py, whose `main` trains each stage
VARIANTS = {"TIP": False, "TIPPo": True}  # name → use_daa_do
SCHEDULES = {"ntp": "NTP only", "polishppo": "PolishPPO only", "ntp+polishppo": "NTP → PolishPPO"}
MODEL_DIRS = {"ntp": "sft", "polishppo": "polishppo", "ntp+polishppo": "sft_polishppo"}  # schedule → trained model
STAGE_LABELS = {"sft": "NTP", "polishppo": "PolishPPO only", "sft_polishppo": "NTP → PolishPPO"}


@dataclass
class AblationArguments:
    """Which cells of the grid to run and how each stage trains."""

    output_dir: str = option("outputs/ablate", "Where the models, tables and plots go.")
    variants: list[str] = option(
        default_factory=lambda: list(VARIANTS), help="Models: `TIP` (no DAA, no DO) and/or `TIPPo`."
    )
    schedules: list[str] = option(
        default_factory=lambda: list(SCHEDULES),
        help="Training schedules: `ntp` (SFT only), `polishppo` (PolishPPO from the untrained model), `ntp+polishppo`.",
    )
    sft_config: str = option("recipes/configs/demo_sft.yaml", "The SFT recipe config every SFT stage starts from.")
    sft_overrides: list[str] = option(
        default_factory=list,
        help="`key=value` settings on top of `sft_config`, e.g. `max_steps=100` (one value each).",
    )
    polishppo_config: str = option(
        "recipes/configs/demo_polishppo.yaml", "The PolishPPO recipe config every PolishPPO stage starts from."
    )
    polishppo_overrides: list[str] = option(
        default_factory=list, help="`key=value` settings on top of `polishppo_config`, e.g. `total_iterations=10`."
    )
    seeds: list[int] = option(
        default_factory=lambda: [0],
        help="One grid per seed (the fresh model's `seed_model` and both trainers' `seed`); tables show the mean and range.",
    )

    def __post_init__(self):
        for name, given, known in (("variants", self.variants, VARIANTS), ("schedules", self.schedules, SCHEDULES)):
            unknown = [value for value in given if value not in known]
            if unknown or not given:
                raise ValueError(f"--{name} must be a non-empty list from {', '.join(known)}; got {given}")
        for name in ("sft_config", "polishppo_config"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"--{name} {getattr(self, name)!r} does not exist")
        for item in self.sft_overrides + self.polishppo_overrides:
            if "=" not in item:
                raise ValueError(f"overrides are `key=value`; got {item!r}")
            if item.split("=", 1)[0] in ("seed", "seed_model"):
                raise ValueError(f"overrides: {item!r} — set seeds with --seeds, which applies them to every stage")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be a non-empty list of distinct integers; got {self.seeds}")


def load_recipe(name: str):
    """`recipes/<name>.py` as a module (recipes/ is not a package), for its `main`."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_stage(dataclass_types, config: str, overrides: list[str], **forced) -> tuple:
    """A stage's arguments as its recipe parses them: `config`, then the overrides, then `forced` settings."""
    args = [
        "--config",
        config,
        *(f"--{item}" for item in overrides),
        *(f"--{key}={value}" for key, value in forced.items()),
    ]
    return TIPPoParser(dataclass_types).parse_args_and_config(args)


def sft_stage(
    ablation: AblationArguments, use_daa_do: bool, seed: int, output_dir: Path
) -> tuple[TIPPoSFTConfig, TIPPoModelConfig]:
    """An SFT stage's training and model arguments: `sft_config` + overrides, for this variant, seed and output folder."""
    _, training_args, model_args = parse_stage(
        (TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig), ablation.sft_config, ablation.sft_overrides,
        output_dir=output_dir, use_daa_do=use_daa_do, seed=seed, seed_model=seed,
    )  # fmt: skip
    return training_args, model_args


def train_sft(
    script_args: TIPPoScriptArguments, ablation: AblationArguments, use_daa_do: bool, seed: int, output_dir: Path
) -> list[dict]:
    """SFT (L_NTP + α·L_C) of a fresh model by recipes/sft.py's `main`; returns the trainer's log history."""
    training_args, model_args = sft_stage(ablation, use_daa_do, seed, output_dir)
    return load_recipe("sft").main(script_args, training_args, model_args).state.log_history


def save_untrained(
    script_args: TIPPoScriptArguments, ablation: AblationArguments, use_daa_do: bool, seed: int, output_dir: Path
) -> None:
    """The fresh model the SFT stage starts from (same preset and seed), saved for "PolishPPO only" to start from."""
    _, model_args = sft_stage(ablation, use_daa_do, seed, output_dir)
    model, processor = load_model_and_processor(model_args, lang=script_args.demo_lang)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)


def train_polishppo(
    script_args: TIPPoScriptArguments, ablation: AblationArguments, seed: int, start: Path, output_dir: Path
) -> list[dict]:
    """PolishPPO from the model saved in `start`, by recipes/polishppo.py's `main`; returns the trainer's logs."""
    _, training_args, model_args = parse_stage(
        (TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig), ablation.polishppo_config, ablation.polishppo_overrides,
        output_dir=output_dir, model_name_or_path=start, seed=seed,
    )  # fmt: skip
    return load_recipe("polishppo").main(script_args, training_args, model_args).state.log_history


def plot_training(histories: dict[str, list[dict]], output_dir: Path) -> None:
    """`loss.png` (SFT's L_SFT and L_NTP, PolishPPO's loss) and `rewards.png` (PolishPPO's mean rewards per
    iteration); `histories` is keyed `variant/stage`."""

    def lines(stages, key):
        runs = {run: history for run, history in histories.items() if run.split("/")[1] in stages}
        return {
            f"{run.split('/')[0]} · {STAGE_LABELS[run.split('/')[1]]}": log_curve(history, key)
            for run, history in runs.items()
        }

    ppo = ("polishppo", "sft_polishppo")
    plot_curves(
        output_dir / "loss.png",
        [
            ("SFT: L_SFT = L_NTP + α·L_C", "loss", lines(["sft"], "loss")),
            ("SFT: next-token loss L_NTP", "loss", lines(["sft"], "loss/ntp")),
            ("PolishPPO: clipped surrogate + KL", "loss", lines(ppo, "loss")),
        ],
    )
    plot_curves(
        output_dir / "rewards.png",
        [
            ("PolishPPO: R_literal (Eq. 7)", "mean over the iteration's rollouts", lines(ppo, "rewards/literal/mean")),
            (
                "PolishPPO: R_semantic (Eq. 8)",
                "mean over the iteration's rollouts",
                lines(ppo, "rewards/semantic/mean"),
            ),
        ],
    )


def main(script_args: TIPPoScriptArguments, ablation: AblationArguments, eval_args: EvaluationArguments) -> str:
    """Train and evaluate every cell for every seed; returns the markdown tables (also printed)."""
    output_dir = Path(ablation.output_dir)
    train, evaluation = load_datasets(script_args)  # fail on bad data before any training
    dataset = train if eval_args.split == "train" else evaluation
    if dataset is None:
        raise ValueError(f"{script_args.dataset_id} has no evaluation split: set its eval file, or --split train")

    histories, seconds = {}, {}
    wanted = set(ablation.schedules)
    for seed in ablation.seeds:
        for variant in ablation.variants:
            folder = output_dir / variant / f"seed{seed}"
            stages = [("sft", None)] if wanted & {"ntp", "ntp+polishppo"} else []  # (stage, model it starts from)
            if "polishppo" in wanted:
                save_untrained(script_args, ablation, VARIANTS[variant], seed, folder / "untrained")
                stages.append(("polishppo", folder / "untrained"))
            if "ntp+polishppo" in wanted:
                stages.append(("sft_polishppo", folder / "sft"))
            for stage, start in stages:
                run = f"{variant}/{stage}/seed{seed}"
                print(f"== {variant}, seed {seed}: training {stage} → {folder / stage}")
                began = time.perf_counter()
                if start is None:
                    histories[run] = train_sft(script_args, ablation, VARIANTS[variant], seed, folder / stage)
                else:
                    histories[run] = train_polishppo(script_args, ablation, seed, start, folder / stage)
                seconds[run] = round(time.perf_counter() - began, 1)

    demo = script_args.dataset == "demo"
    cells, score_rows, field_rows, plotted = [], [], [], {}
    meteor = MeteorScorer() if "meteor" in eval_args.metrics else None
    try:
        for variant in ablation.variants:
            for schedule in ablation.schedules:
                runs = []
                for seed in ablation.seeds:
                    path = output_dir / variant / f"seed{seed}" / MODEL_DIRS[schedule]
                    model, processor = (
                        TIPPoForConditionalGeneration.from_pretrained(path),
                        TIPPoProcessor.from_pretrained(path),
                    )
                    predictions, result, _ = score_model(model, processor, dataset, eval_args, meteor)
                    fields = scene_fields(dataset, predictions, script_args.demo_lang) if demo else {}
                    runs.append(
                        {
                            "seed": seed,
                            "model": str(path),
                            **result.summary(),
                            **({"scene_fields": fields} if demo else {}),
                        }
                    )
                label = [variant, SCHEDULES[schedule]]
                score_rows.append((label, runs))
                field_rows.append((label, [run.get("scene_fields", {}) for run in runs]))
                plotted[f"{variant} · {SCHEDULES[schedule]}"] = {
                    **{name: [run[name] for run in runs] for name in TABLE_METRICS if name in runs[0]},
                    **{f"{name} right": [run["scene_fields"][name] for run in runs] for name in SCENE_FIELDS if demo},
                }
                cells.append({"variant": variant, "schedule": schedule, "seeds": runs})
    finally:
        if meteor is not None:
            meteor.close()

    first_seed = f"seed{ablation.seeds[0]}"
    plot_training(
        {run.rsplit("/", 1)[0]: history for run, history in histories.items() if run.endswith("/" + first_seed)},
        output_dir,
    )
    plot_cells(
        output_dir / "ablation.png",
        plotted,
        [m for m in ("ROUGE-L", "CIDEr", "place right", "object right") if any(m in c for c in plotted.values())],
    )
    seeds_note = (
        f"mean over seeds {ablation.seeds} (range in brackets)"
        if len(ablation.seeds) > 1
        else f"seed {ablation.seeds[0]}"
    )
    table = spread_table(score_rows, ["Model", "Training"], TABLE_METRICS)
    if demo:
        table += f"\n\n{SCENE_FIELDS_NOTE}\n\n"
        table += spread_table(field_rows, ["Model", "Training"], SCENE_FIELDS, digits=1)
    settings = {
        "dataset": asdict(script_args),
        "ablation": asdict(ablation),
        "evaluation": asdict(eval_args),
        "n_samples": len(dataset),
    }
    report = "\n\n".join(
        [
            f"# Ablation on {script_args.dataset_id} ({eval_args.split} split, {len(dataset)} samples; {seeds_note})",
            table,
            f"Scores ×100 (CIDEr-D too). TIP: no DAA, no DO. "
            f"SFT: `{ablation.sft_config}` with {', '.join(ablation.sft_overrides) or 'no overrides'}; "
            f"PolishPPO: `{ablation.polishppo_config}` with {', '.join(ablation.polishppo_overrides) or 'no overrides'}. "
            f"Metrics: tokenize `{eval_args.tokenize}`, lang `{eval_args.lang}`. Training times (s): "
            + ", ".join(f"{run} {value}" for run, value in seconds.items())
            + ".",
            f"![cells](ablation.png)\n\nTraining curves ({first_seed}):\n\n![losses](loss.png)\n\n![rewards](rewards.png)",
        ]
    )
    (output_dir / "ablation.md").write_text(report + "\n", encoding="utf-8")
    summary = {"settings": settings, "training_seconds": seconds, "cells": cells}
    (output_dir / "ablation.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (output_dir / "log_history.json").write_text(json.dumps(histories, indent=1) + "\n", encoding="utf-8")
    print(table)
    print(f"\nAblation tables, scores, logs and plots written to {output_dir}")
    return table


if __name__ == "__main__":
    parser = TIPPoParser((TIPPoScriptArguments, AblationArguments, EvaluationArguments))
    with parser.reporting_input_errors():  # another run writing into output_dir: one line, exit status 2
        script_args, ablation, eval_args = parser.parse_args_and_config()
        try:
            with output_dir_lock(ablation.output_dir):
                main(script_args, ablation, eval_args)
        except ValueError as error:
            sys.exit(f"ablate.py: error: {error}")
