"""Evaluation: caption metrics as the coco-caption tools compute them, scoring TIPPo models, and reports.

- `metrics`: [`compute_metrics`] (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, BERTScore) and [`MetricsResult`];
  `tokenization` and `scorers` (METEOR's JVM, BERTScore) are what it runs, `external_tools` what they need.
- `model_evaluation`: [`EvaluationArguments`], [`score_model`], [`evaluate_models`]: generate with models, score
  their predictions and write the comparison (`recipes/evaluate.py`).
- `reports`: markdown tables, spreads over seeds, examples and plots.
- `cli`: the `tippo-eval` command (scores prediction files against reference files).
"""

from .cli import load_predictions, load_references
from .external_tools import ExternalToolError, JavaNotFoundError
from .metrics import (
    DEFAULT_METRICS,
    LANGS,
    METRICS,
    MetricsResult,
    MetricsWarning,
    compute_metrics,
    normalize_metric_names,
)
from .model_evaluation import (
    EvaluateArguments,
    EvaluationArguments,
    evaluate_models,
    references_of,
    scene_fields,
    score_model,
    write_predictions,
)
from .scorers import MeteorScorer
from .tokenization import TOKENIZE_MODES, tokenize_texts


__all__ = [
    "DEFAULT_METRICS",
    "LANGS",
    "METRICS",
    "TOKENIZE_MODES",
    "EvaluateArguments",
    "EvaluationArguments",
    "ExternalToolError",
    "JavaNotFoundError",
    "MeteorScorer",
    "MetricsResult",
    "MetricsWarning",
    "compute_metrics",
    "evaluate_models",
    "load_predictions",
    "load_references",
    "normalize_metric_names",
    "references_of",
    "scene_fields",
    "score_model",
    "tokenize_texts",
    "write_predictions",
]
