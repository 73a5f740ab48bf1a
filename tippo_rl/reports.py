"""Scoring trained TIPPo models and reporting the scores, for `recipes/evaluate.py` and `recipes/ablate.py`.

- [`EvaluationArguments`]: how predictions are generated (split, decoding) and scored (metrics, tokenisation, language).
- [`score_model`]: generate on a dataset and score with `tippo_rl.metrics.compute_metrics`.
- [`write_predictions`], [`scores_table`], [`examples_section`]: JSONL predictions and markdown for reports.
- [`scene_fields`]: on the embedded default, how often predictions get each field of the scene right (place, object
  count, colour, shape), tabulated like scores over seeds by [`spread_table`].
- [`plot_curves`]: PNG line plots of training logs (`trainer.state.log_history`).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .demo_data import scene_field_accuracy
from .generation import generate_predictions
from .metrics import (
    DEFAULT_METRICS,
    LANGS,
    TOKENIZE_MODES,
    MeteorScorer,
    MetricsResult,
    MetricsWarning,
    compute_metrics,
    normalize_metric_names,
)
from .modeling_tippo import TIPPoModel
from .processing_tippo import TIPPoProcessor


SPLITS = ("eval", "train")
# Columns of the report tables, in this order, where computed (metrics.json keeps every score).
TABLE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "BERTScore-F1")


@dataclass
class EvaluationArguments:
    """How a model's predictions are generated and scored."""

    split: str = field(
        default="eval", metadata={"help": "Which split of the dataset to generate on: `eval` or `train`."}
    )
    batch_size: int = field(default=16, metadata={"help": "Samples per generation batch."})
    num_beams: int = field(
        default=1, metadata={"help": "Beam search width (1: greedy, or sampling with `do_sample`)."}
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy/beam decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with `do_sample`)."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest generation; None: the model's generation config."}
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": 'More options for model.generate, a JSON object (YAML: a mapping), e.g. {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}; they override the options above.'
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Random seed set before each model generates (matters with `do_sample`)."}
    )
    device: str | None = field(default=None, metadata={"help": "`cpu`, `cuda`, …; None: CUDA when available."})
    metrics: list[str] = field(
        default_factory=lambda: list(DEFAULT_METRICS),
        metadata={"help": "Any of bleu, meteor, rouge_l, cider, bertscore (METEOR and `tokenize: ptb` need Java)."},
    )
    tokenize: str = field(
        default="none",
        metadata={
            "help": "What the n-gram metrics see as words: `none` (pre-segmented), `char`, `jieba` (Chinese) or `ptb` (English, coco-caption's default)."
        },
    )
    lang: str = field(default="zh", metadata={"help": "Language of the texts for the metrics: `zh` or `en`."})
    bertscore_model: str | None = field(
        default=None, metadata={"help": "BERTScore model (name or folder); None: bert_score's default for `lang`."}
    )
    bertscore_num_layers: int | None = field(
        default=None, metadata={"help": "BERTScore layer; required for models bert_score has no default for."}
    )
    num_examples: int = field(
        default=3, metadata={"help": "Samples shown with every model's prediction in the markdown report."}
    )

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if self.batch_size < 1 or self.num_beams < 1:
            raise ValueError(f"--batch_size and --num_beams must be ≥ 1; got {self.batch_size} and {self.num_beams}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0; got {self.temperature}")
        if self.tokenize not in TOKENIZE_MODES:
            raise ValueError(f"--tokenize must be one of {', '.join(TOKENIZE_MODES)}; got {self.tokenize!r}")
        if self.lang not in LANGS:
            raise ValueError(f"--lang must be one of {', '.join(LANGS)}; got {self.lang!r}")
        if isinstance(self.generation_kwargs, str):
            try:
                self.generation_kwargs = json.loads(self.generation_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"--generation_kwargs must be a JSON object, got {self.generation_kwargs!r}: {error}"
                ) from error
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

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate`."""
        kwargs = {"num_beams": self.num_beams, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs["temperature"] = self.temperature
        if self.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.max_new_tokens
        return {**kwargs, **(self.generation_kwargs or {})}


def references_of(dataset: Dataset) -> dict[str, list[str]]:
    """`{row id: reference texts}`; raises if ids repeat (predictions are matched to references by id)."""
    references = dict(zip(dataset["id"], dataset["references"]))
    if len(references) != len(dataset):
        raise ValueError(f"the dataset's ids are not unique ({len(dataset)} rows, {len(references)} ids)")
    return references


def score_model(
    model: TIPPoModel,
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
    set_seed(args.seed)
    start = time.perf_counter()
    predictions = generate_predictions(
        model.to(args.device), processor, dataset, batch_size=args.batch_size, progress=True, **args.generate_kwargs()
    )
    seconds = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)
        result = compute_metrics(
            predictions,
            references,
            metrics=args.metrics,
            tokenize=args.tokenize,
            lang=args.lang,
            bertscore_model=args.bertscore_model,
            bertscore_num_layers=args.bertscore_num_layers,
            bertscore_device=args.device,
            progress=True,
            meteor_scorer=meteor_scorer,
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


def scores_table(rows: Sequence[tuple[Sequence[str], MetricsResult]], headers: Sequence[str]) -> str:
    """A markdown table: the leading cells of each row (named by `headers`), then its scores ×100 (as papers print
    them, CIDEr-D included) and its count of empty predictions."""
    metric_columns = [name for name in TABLE_METRICS if any(name in result.corpus for _, result in rows)]
    lines = [
        "| " + " | ".join([*headers, *metric_columns, "empty"]) + " |",
        "|" + "---|" * len(headers) + "---:|" * (len(metric_columns) + 1),
    ]
    for cells, result in rows:
        scores = [f"{100 * result.corpus[name]:.2f}" if name in result.corpus else "–" for name in metric_columns]
        lines.append("| " + " | ".join([*cells, *scores, f"{result.n_empty_predictions}/{result.n_samples}"]) + " |")
    return "\n".join(lines)


SCENE_FIELDS = ("place", "count", "colour", "shape", "object", "objects_any_order")
SCENE_FIELDS_NOTE = (
    "Scene fields right (%): place and object count per sample; colour, shape and object (both) per image, in order; "
    "objects_any_order: the objects named, in any order (multiset F1)."
)


def scene_fields(dataset: Dataset, predictions: Mapping[str, str], lang: str) -> dict[str, float]:
    """Per-field accuracy of `predictions` against the rows' first reference (embedded default only: see
    `tippo_rl.demo_data.scene_field_accuracy`)."""
    rows = list(zip(dataset["id"], dataset["references"]))
    return scene_field_accuracy(
        [predictions[row_id] for row_id, _ in rows], [references[0] for _, references in rows], lang
    )


def spread_cell(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """`mean` of one value, `mean (min–max)` of several (several seeds of a cell), scaled."""
    scaled = [scale * value for value in values]
    mean = sum(scaled) / len(scaled)
    return (
        f"{mean:.{digits}f}"
        if len(scaled) == 1
        else f"{mean:.{digits}f} ({min(scaled):.{digits}f}–{max(scaled):.{digits}f})"
    )


def spread_table(
    rows: Sequence[tuple[Sequence[str], Sequence[Mapping[str, float]]]],
    headers: Sequence[str],
    columns: Sequence[str],
    digits: int = 2,
) -> str:
    """A markdown table of scores ×100 over seeds: each row is its leading cells and one score mapping per seed;
    a column shows the mean, with the range when there are several seeds."""
    columns = [name for name in columns if any(name in scores for _, runs in rows for scores in runs)]
    lines = ["| " + " | ".join([*headers, *columns]) + " |", "|" + "---|" * len(headers) + "---:|" * len(columns)]
    for cells, runs in rows:
        values = [
            spread_cell([scores[name] for scores in runs], digits=digits)
            if all(name in scores for scores in runs)
            else "–"
            for name in columns
        ]
        lines.append("| " + " | ".join([*cells, *values]) + " |")
    return "\n".join(lines)


def plot_cells(path: str | Path, cells: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]) -> None:
    """Save bar charts (one panel per metric, ×100) of `cells` (`{cell label: {metric: one value per seed}}`): the
    bar is the mean over seeds, the dots are the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 4.2), squeeze=False)
    labels = list(cells)
    for axis, metric in zip(axes[0], metrics):
        for position, label in enumerate(labels):
            values = [100 * value for value in cells[label].get(metric, [])]
            if not values:
                continue
            axis.bar(position, sum(values) / len(values), color=f"C{position % 10}", alpha=0.6)
            axis.scatter([position] * len(values), values, color="black", s=10, zorder=3)
        axis.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        axis.set(title=metric, ylabel="×100 (bar: mean; dots: seeds)")
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def examples_section(dataset: Dataset, predictions: Mapping[str, Mapping[str, str]], num_examples: int) -> str:
    """Markdown: the first `num_examples` samples with their reference and each model's prediction
    (`predictions` is `{model name: {id: text}}`)."""
    blocks = []
    for row in dataset.select(range(min(num_examples, len(dataset)))):
        lines = [f"**{row['id']}** — title: {row['title']!r}", "", f"- reference: {row['references'][0]}"]
        lines += [f"- {name}: {texts[row['id']] or '(empty)'}" for name, texts in predictions.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def log_curve(log_history: Sequence[Mapping], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged quantity in a Trainer's `state.log_history`."""
    points = [(entry["step"], entry[key]) for entry in log_history if entry.get(key) is not None]
    return [step for step, _ in points], [value for _, value in points]


TRAINING_CURVES = (  # (panel title, y label, logged keys): the losses of SFT and the rewards of the RL stages
    ("training loss", "loss", ("loss/ntp", "loss/contrastive", "loss/policy")),
    ("rewards (sampled rollouts)", "mean reward", ("rewards/literal/mean", "rewards/semantic/mean", "returns/mean")),
)


def training_log_history(model_dir: str | Path) -> list[dict] | None:
    """The log history a recipe left in `model_dir` (`trainer_state.json`, else the newest checkpoint's); None if none."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return None
    last_checkpoint = get_last_checkpoint(str(folder))  # transformers' newest checkpoint-N, as resuming picks it
    for state in (folder / "trainer_state.json", Path(last_checkpoint or folder) / "trainer_state.json"):
        if state.is_file():
            return json.loads(state.read_text(encoding="utf-8")).get("log_history") or None
    return None


def plot_training_curves(path: str | Path, histories: Mapping[str, Sequence[Mapping]]) -> bool:
    """`TRAINING_CURVES` of each model's log history (`{model name: log_history}`) as one PNG; False if nothing to plot."""
    panels = []
    for title, ylabel, keys in TRAINING_CURVES:
        lines = {f"{name}: {key}": log_curve(history, key) for name, history in histories.items() for key in keys}
        lines = {label: points for label, points in lines.items() if points[0]}
        if lines:
            panels.append((title, ylabel, lines))
    if not panels:
        return False
    plot_curves(path, panels)
    return True


def plot_curves(path: str | Path, panels: Sequence[tuple[str, str, Mapping[str, tuple[list, list]]]]) -> None:
    """Save a row of line plots as a PNG. `panels`: `(title, y label, {line label: (steps, values)})` each."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (title, ylabel, lines) in zip(axes[0], panels):
        for label, (steps, values) in lines.items():
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        axis.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
