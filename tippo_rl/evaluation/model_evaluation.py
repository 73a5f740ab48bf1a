"""Evaluating TIPPo models: generate on a dataset split, score, write the predictions and the comparison
(`recipes/evaluate.py`; `recipes/ablate.py` uses the first steps).

- [`EvaluationArguments`]: how predictions are generated (split, decoding) and scored (metrics, tokenisation, language).
- [`score_model`]: generate on a dataset and score with `tippo_rl.evaluation.compute_metrics`.
- [`write_predictions`]: JSONL predictions with their references and per-sample scores.
- [`scene_fields`]: on the embedded default, how often predictions get each field of the scene right (place, object
  count, colour, shape), tabulated like scores over seeds by `tippo_rl.evaluation.reports.spread_table`.
- [`EvaluateArguments`], [`evaluate_models`]: several models on one split → `predictions/<model>.jsonl`,
  `metrics.json`, `report.md` (and the recipes' training curves), with a missing checkpoint named before any work.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from transformers import set_seed

from ..data import load_datasets
from ..demo.scenes import scene_field_accuracy
from ..generation import generate_kwargs, generate_predictions
from ..language import detect_language
from ..modeling_tippo import TIPPoForConditionalGeneration
from ..options import option, parse_json_option
from ..presets import build_tiny_tippo
from ..processing_tippo import TIPPoProcessor
from ..script_arguments import TIPPoScriptArguments
from .metrics import DEFAULT_METRICS, LANGS, MetricsResult, compute_metrics, metric_options, normalize_metric_names
from .reports import examples_section, plot_training_curves, scores_table, spread_table, training_log_history
from .scorers import MeteorScorer
from .tokenization import TOKENIZE_MODES


logger = logging.getLogger(__name__)

SPLITS = ("eval", "train")


@dataclass
class EvaluationArguments:
    """How a model's predictions are generated and scored."""

    split: str = option("eval", "Which split of the dataset to generate on: `eval` or `train`.")
    batch_size: int = option(16, "Samples per generation batch.")
    num_beams: int = option(1, "Beam search width (1: greedy, or sampling with `do_sample`).")
    do_sample: bool = option(False, "Sample instead of greedy/beam decoding.")
    temperature: float = option(1.0, "Sampling temperature (with `do_sample`).")
    max_new_tokens: int | None = option(None, "Longest generation; None: the model's generation config.")
    generation_kwargs: dict | str | None = option(
        None,
        'More options for model.generate, a JSON object (YAML: a mapping), e.g. {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}; they override the options above.',
    )
    seed: int = option(0, "Random seed set before each model generates (matters with `do_sample`).")
    device: str | None = option(None, "`cpu`, `cuda`, …; None: CUDA when available.")
    metrics: list[str] = option(
        default_factory=lambda: list(DEFAULT_METRICS),
        help="Any of bleu, meteor, rouge_l, cider, bertscore (METEOR and `tokenize: ptb` need Java).",
    )
    tokenize: str = option(
        "auto",
        "What the n-gram metrics see as words: `none` (pre-segmented), `char`, `jieba` (Chinese) or `ptb` (English, coco-caption's default). `auto`: `jieba` for Chinese data, `ptb` for English (`char` where Java is missing, with a warning).",
    )
    # The texts' language: set from the data (--lang, a TIPPoScriptArguments option, or detected) by `score_model`.
    lang: str = field(default="auto", init=False)
    bertscore_model: str | None = option(
        None, "BERTScore model (name or folder); None: bert_score's default for `lang`."
    )
    bertscore_num_layers: int | None = option(
        None, "BERTScore layer; required for models bert_score has no default for."
    )
    num_examples: int = option(3, "Samples shown with every model's prediction in the markdown report.")

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if self.batch_size < 1 or self.num_beams < 1:
            raise ValueError(f"--batch_size and --num_beams must be ≥ 1; got {self.batch_size} and {self.num_beams}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0; got {self.temperature}")
        if self.tokenize not in ("auto", *TOKENIZE_MODES):
            raise ValueError(f"--tokenize must be auto or one of {', '.join(TOKENIZE_MODES)}; got {self.tokenize!r}")
        self.generation_kwargs = parse_json_option("--generation_kwargs", self.generation_kwargs)
        if self.generation_kwargs is not None and not isinstance(self.generation_kwargs, dict):
            raise ValueError(
                f"--generation_kwargs must be a JSON object of generate() options, got {self.generation_kwargs!r}"
            )
        if self.generation_kwargs:
            from transformers import GenerationConfig

            try:
                GenerationConfig(**self.generation_kwargs).validate(strict=True)
            except (ValueError, TypeError) as error:
                raise ValueError(f"--generation_kwargs {self.generation_kwargs}: {error}") from error
        self.metrics = normalize_metric_names(self.metrics)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def for_language(self, lang: str) -> None:
        """Set `lang` (`en`, `zh`) and, where `tokenize` is `auto`, the word segmentation standard for it."""
        if lang not in LANGS:
            raise ValueError(f"--lang must be one of {', '.join(LANGS)}; got {lang!r}")
        self.lang = lang
        if self.tokenize == "auto":
            self.tokenize = "jieba" if lang == "zh" else "ptb" if shutil.which("java") else "char"
            if self.tokenize == "char":
                logger.warning(
                    "tokenize auto: Java is not on PATH, so English is split into words by `char`, not coco-caption's "
                    "PTB tokenizer (scores differ slightly from the standard tools'); install Java for `ptb`"
                )

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate`."""
        return generate_kwargs(
            self.generation_kwargs,
            num_beams=self.num_beams,
            do_sample=self.do_sample,
            temperature=self.temperature if self.do_sample else None,
            max_new_tokens=self.max_new_tokens,
        )


def references_of(dataset: Dataset) -> dict[str, list[str]]:
    """`{row id: reference texts}`; raises if ids repeat (predictions are matched to references by id)."""
    references = dict(zip(dataset["id"], dataset["references"]))
    if len(references) != len(dataset):
        raise ValueError(f"the dataset's ids are not unique ({len(dataset)} rows, {len(references)} ids)")
    return references


def score_model(
    model: TIPPoForConditionalGeneration,
    processor: TIPPoProcessor,
    dataset: Dataset,
    args: EvaluationArguments,
    meteor_scorer: MeteorScorer | None = None,
) -> tuple[dict[str, str], MetricsResult, float]:
    """Generate for every row of `dataset` and score against its `references`.

    Returns `(predictions {id: text}, metrics, seconds spent generating)`. The metrics' warnings (e.g. empty
    predictions) are in `metrics.warnings`, not raised. Pass a running `MeteorScorer` to score several models without
    restarting Java each time.
    """
    references = references_of(dataset)
    if args.lang == "auto" or args.tokenize == "auto":
        args.for_language(detect_language(dataset["reference"]) if args.lang == "auto" else args.lang)
    set_seed(args.seed)
    start = time.perf_counter()
    predictions = generate_predictions(
        model.to(args.device), processor, dataset, batch_size=args.batch_size, progress=True, **args.generate_kwargs()
    )
    seconds = time.perf_counter() - start
    result = compute_metrics(
        predictions,
        references,
        metrics=args.metrics,
        **metric_options(args),  # tokenize, lang and the BERTScore model
        bertscore_device=args.device,
        progress=True,
        meteor_scorer=meteor_scorer,
        issue_warnings=False,
    )
    return predictions, result, seconds


def write_predictions(
    path: str | Path, dataset: Dataset, predictions: Mapping[str, str], result: MetricsResult
) -> None:
    """One JSON line per sample: `{id, title, prediction, references, scores}`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row_id, title, references in zip(dataset["id"], dataset["title"], dataset["references"]):
            row = {"id": row_id, "title": title, "prediction": predictions[row_id], "references": references}
            f.write(json.dumps({**row, "scores": result.per_sample.get(row_id, {})}, ensure_ascii=False) + "\n")


SCENE_FIELDS = ("place", "count", "colour", "shape", "object", "objects_any_order")
SCENE_FIELDS_NOTE = (
    "Scene fields right (%): place and object count per sample; colour, shape and object (both) per image, in order; "
    "objects_any_order: the objects named, in any order (multiset F1)."
)


def scene_fields(dataset: Dataset, predictions: Mapping[str, str], lang: str) -> dict[str, float]:
    """Per-field accuracy of `predictions` against the rows' first reference (embedded default only: see
    `tippo_rl.demo.scenes.scene_field_accuracy`)."""
    rows = list(zip(dataset["id"], dataset["references"]))
    return scene_field_accuracy(
        [predictions[row_id] for row_id, _ in rows], [references[0] for _, references in rows], lang
    )


FRESH_TINY = "tiny"


@dataclass
class EvaluateArguments:
    """Which models to compare and where the report goes."""

    models: list[str] = option(
        default_factory=list,
        help="Models to compare, each `NAME=PATH` (or just PATH): a saved TIPPo model folder or Hub id, or "
        "`tiny` for a freshly built, untrained tiny preset (the 'before' baseline). In YAML a mapping "
        "`{name: ..., path: ...}` works too.",
    )
    output_dir: str = option("outputs/evaluate", "Where predictions, metrics.json and report.md go.")

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


def how_to_produce(path: str, repo: str | Path | None) -> str | None:
    """The command that trains the model in `path`, if a recipe config in `repo`/recipes/configs has it as
    `output_dir` (`repo`: the project's checkout; None: no command to suggest)."""
    if repo is None:
        return None
    root = Path(repo)
    for config in sorted((root / "recipes" / "configs").glob("*.yaml")):
        output_dir = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("output_dir")
        recipe = root / "recipes" / f"{config.stem.rsplit('_', 1)[-1]}.py"
        # Recipes write `output_dir` relative to where they run, as the evaluation reads `path`.
        if output_dir and Path(output_dir).resolve() == Path(path).resolve() and recipe.exists():
            config_path, recipe_path = config.relative_to(root), recipe.relative_to(root)
            launcher = "accelerate launch" + (
                " --config_file accelerate_configs/cpu.yaml" if config.stem.startswith("demo_") else ""
            )
            hint = f"Train it first: `{launcher} {recipe_path} --config {config_path}`"
            target = config.stem.replace("_", "-")
            makefile = root / "Makefile"
            if makefile.exists() and re.search(rf"^{re.escape(target)}:", makefile.read_text(), re.MULTILINE):
                hint += f" (or `make {target}`)"
            return hint + "."
    return None


def check_model(name: str, path: str, repo: str | Path | None = None) -> None:
    """Raise, saying how to produce it (`how_to_produce`), if `path` should be a local model folder but holds none.
    (A path that can only be a Hub id, `org/name`, is left to `from_pretrained`.)"""
    folder = Path(path)
    if path == FRESH_TINY or (folder / "config.json").is_file():
        return
    hint = how_to_produce(path, repo)
    hub_id_like = path.count("/") == 1 and not path.startswith((".", "/", "~")) and not folder.parent.is_dir()
    if folder.exists():
        raise ValueError(f"model {name!r}: {path!r} holds no saved model (no config.json). {hint or GENERIC_HINT}")
    if hint or not hub_id_like:
        raise ValueError(f"model {name!r}: no checkpoint at {path!r}. {hint or GENERIC_HINT}")


def load_model(
    name: str, path: str, lang: str, texts: Sequence[str] | None = None
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor]:
    """The model called `name`: a fresh tiny preset for `tiny` (its words those of `texts` when given, as on a user's
    data; see `build_tiny_tippo`), else a saved model (folder or Hub id)."""
    if path == FRESH_TINY:
        return build_tiny_tippo(lang=lang, seed=0, texts=texts)
    try:
        return TIPPoForConditionalGeneration.from_pretrained(path), TIPPoProcessor.from_pretrained(path)
    except OSError as error:
        raise ValueError(f"model {name!r}: cannot load {path!r}: {error}") from error


def evaluation_split(script_args: TIPPoScriptArguments, eval_args: EvaluationArguments) -> Dataset:
    """The split `eval_args.split` of the dataset `script_args` names (only that split is read); raises if it has none."""
    train, evaluation = load_datasets(script_args, splits=(eval_args.split,))
    dataset = train if eval_args.split == "train" else evaluation
    if dataset is None:
        raise ValueError(
            f"{script_args.dataset_id} has no evaluation split: set --eval_file (artmuse) or "
            "--coco_eval_annotations (coco), or evaluate on --split train"
        )
    return dataset


def predictions_file(name: str, taken: Sequence[str]) -> str:
    """`predictions/<name>.jsonl` for a model, its name made safe for a file name; numbered when an earlier model's
    name gives the same file (`taken`: the files of the earlier models)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    return (
        f"predictions/{stem}.jsonl"
        if stem not in (Path(f).stem for f in taken)
        else f"predictions/{stem}-{len(taken)}.jsonl"
    )


def report_markdown(
    script_args: TIPPoScriptArguments,
    eval_args: EvaluationArguments,
    dataset: Dataset,
    table: str,
    predictions: Mapping[str, Mapping[str, str]],
    curves_of: Sequence[str],
) -> str:
    """`report.md`: the scores table, the settings, examples, and the training curves of the models in `curves_of`
    (drawn in `training_curves.png`)."""
    decoding = ", ".join(f"{key} {value}" for key, value in eval_args.generate_kwargs().items())
    return "\n\n".join(
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
                    f"Logged by the recipes ({', '.join(curves_of)}):",
                    "![training curves](training_curves.png)",
                ]
                if curves_of
                else []
            ),
        ]
    )


def evaluate_models(
    script_args: TIPPoScriptArguments,
    evaluate_args: EvaluateArguments,
    eval_args: EvaluationArguments,
    repo: str | Path | None = None,
    meteor_scorer: MeteorScorer | None = None,
) -> str:
    """Evaluate every model of `evaluate_args.models` on one split of `script_args`' dataset; returns the markdown
    table (also printed).

    Writes into `evaluate_args.output_dir`: `predictions/<model>.jsonl`, `metrics.json` (every corpus score and the
    settings), `report.md` (the table ×100, examples, and the training curves of models the recipes trained). `repo`:
    the project's checkout, where a missing model's error looks for the recipe config and `make` target that train it.
    `meteor_scorer`: a `MeteorScorer` started beforehand (its JVM loads for several seconds), used and left open; None:
    one is started here and closed at the end, when the metrics include METEOR.
    """
    dataset = evaluation_split(script_args, eval_args)
    lang = script_args.data_language(dataset["reference"])
    eval_args.for_language(lang)
    for name, path in evaluate_args.models:  # fail on a missing checkpoint before spending time on the others
        check_model(name, path, repo)
    output_dir = Path(evaluate_args.output_dir)
    results, predictions, summaries, files, fields = [], {}, {}, [], []  # one entry per model, in order
    own_meteor = meteor_scorer is None and "meteor" in eval_args.metrics
    meteor = MeteorScorer() if own_meteor else meteor_scorer if "meteor" in eval_args.metrics else None
    try:
        for name, path in evaluate_args.models:
            # A fresh tiny preset on a user's data writes that data's words (an untrained baseline: the evaluated
            # references' words, since only this split is read).
            texts = None if script_args.dataset == "demo" else dataset["reference"]
            model, processor = load_model(name, path, lang, texts)
            predictions[name], result, seconds = score_model(model, processor, dataset, eval_args, meteor)
            for message in result.warnings:
                print(f"{name}: {message}", file=sys.stderr)
            file_name = predictions_file(name, files)
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
                summaries[name]["scene_fields"] = scene_fields(dataset, predictions[name], lang)
                fields.append(([name], [summaries[name]["scene_fields"]]))
    finally:
        if own_meteor:
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
    report = report_markdown(script_args, eval_args, dataset, table, predictions, list(histories) if curves else [])
    (output_dir / "report.md").write_text(report + "\n", encoding="utf-8")
    settings = {"dataset": asdict(script_args), "evaluation": asdict(eval_args), "n_samples": len(dataset)}
    metrics = {"settings": settings, "models": summaries}
    (output_dir / "metrics.json").write_text(
        json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print("Scores ×100 (CIDEr-D too; metrics.json keeps them 0–1):")
    print(table)
    if curves:
        print(f"Training curves: {output_dir / 'training_curves.png'}")
    print(f"\nReport, metrics and predictions written to {output_dir}")
    return table
