"""Evaluating TIPPo models: generate on a dataset split, score, write the predictions (`recipes/evaluate.py`,
`recipes/ablate.py`).

- [`EvaluationArguments`]: how predictions are generated (split, decoding) and scored (metrics, tokenisation, language).
- [`score_model`]: generate on a dataset and score with `tippo_rl.evaluation.compute_metrics`.
- [`write_predictions`]: JSONL predictions with their references and per-sample scores.
- [`scene_fields`]: on the embedded default, how often predictions get each field of the scene right (place, object
  count, colour, shape), tabulated like scores over seeds by `tippo_rl.evaluation.reports.spread_table`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed

from ..demo_data import scene_field_accuracy
from ..generation import generate_predictions
from ..modeling_tippo import TIPPoModel
from ..processing_tippo import TIPPoProcessor
from .metrics import DEFAULT_METRICS, LANGS, MetricsResult, MetricsWarning, compute_metrics, normalize_metric_names
from .scorers import MeteorScorer
from .tokenization import TOKENIZE_MODES


SPLITS = ("eval", "train")


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
