"""Evaluation: caption metrics as the coco-caption tools compute them, scoring TIPPo models, and reports.

- `metrics`: [`compute_metrics`] (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, BERTScore) and [`MetricsResult`];
  `tokenization` and `scorers` (METEOR's JVM, BERTScore) are what it runs, `external_tools` what they need.
- `model_evaluation`: [`EvaluationArguments`], [`score_model`], [`evaluate_models`]: generate with models, score
  their predictions and write the comparison (`recipes/evaluate.py`).
- `reports`: markdown tables, spreads over seeds, examples and plots.
- `cli`: the `tippo-eval` command (scores prediction files against reference files).

Names are imported on first use, as in `tippo_rl` (`tippo-eval` needs neither the model nor the datasets code).
"""

import importlib


_EXPORTS = {
    "load_predictions": "cli",
    "load_references": "cli",
    "ExternalToolError": "external_tools",
    "JavaNotFoundError": "external_tools",
    "DEFAULT_METRICS": "metrics",
    "LANGS": "metrics",
    "METRICS": "metrics",
    "MetricsResult": "metrics",
    "MetricsWarning": "metrics",
    "compute_metrics": "metrics",
    "normalize_metric_names": "metrics",
    "EvaluateArguments": "model_evaluation",
    "EvaluationArguments": "model_evaluation",
    "evaluate_models": "model_evaluation",
    "references_of": "model_evaluation",
    "scene_fields": "model_evaluation",
    "score_model": "model_evaluation",
    "write_predictions": "model_evaluation",
    "MeteorScorer": "scorers",
    "TOKENIZE_MODES": "tokenization",
    "tokenize_texts": "tokenization",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tippo_rl.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
