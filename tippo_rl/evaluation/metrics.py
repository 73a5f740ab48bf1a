"""Caption metrics that reproduce the standard tools: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and BERTScore.

The n-gram metrics are not reimplemented here: BLEU, ROUGE-L and CIDEr(-D) are pycocoevalcap's ``Bleu``,
``Rouge`` and ``Cider`` scorers (the coco-caption code), METEOR is pycocoevalcap's ``Meteor`` (the METEOR 1.5
jar, run with Java) and BERTScore is the ``bert-score`` package. This module only prepares their input
(tokenisation in ``tokenization``, id matching, empty texts), runs them (METEOR's JVM and BERTScore in ``scorers``)
and collects their output.

Scale: every score is what the tools return, a 0-1 float (CIDEr is 0-10). Paper tables, COCO-CN's included,
report the same numbers ×100 (BLEU-4 0.312 is printed as 31.2, CIDEr 0.95 as 95.0).

Tokenisation (``tokenize=``) decides what the n-gram metrics see as words:

* ``none``: the text is already segmented with spaces and is passed on exactly as given. With it the scores
  equal pycocoevalcap's on the same strings; it is how the published COCO-CN numbers are computed (on
  pre-segmented Chinese), so it is the default.
* ``char``: every CJK character is a token, runs of other letters/digits (``running``, ``3D``) stay words,
  every other symbol is its own token, whitespace is dropped.
* ``jieba``: ``jieba.lcut`` word segmentation (for raw Chinese); existing whitespace is a word boundary.
* ``ptb``: coco-caption's English default, the Stanford PTBTokenizer from pycocoevalcap (needs Java):
  lower-cases and drops punctuation.

Tokenised text is what BLEU, METEOR, ROUGE-L and CIDEr score; BERTScore always sees the original strings
because its model brings its own tokenizer. METEOR runs with coco-caption's settings (``-l en -norm``) for every
language, as the published numbers do; its normaliser splits CJK text into single characters, so on Chinese it
is a character-level score whatever the segmentation.

Example::

    from tippo_rl.evaluation import compute_metrics

    preds = {1: "一 只 狗 在 跑"}
    refs = {1: ["一 只 狗 在 草地 上 跑", "一 只 狗"]}
    result = compute_metrics(preds, refs, metrics=("bleu", "rouge_l"))
    result.corpus["BLEU-4"], result.per_sample[1]["ROUGE-L"]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..language import LANGUAGES
from .external_tools import _import, _require_java
from .scorers import MeteorScorer, _bertscore
from .tokenization import TOKENIZE_MODES, tokenize_texts


__all__ = [
    "DEFAULT_METRICS",
    "LANGS",
    "METRICS",
    "METRIC_OPTIONS",
    "MetricsResult",
    "MetricsWarning",
    "compute_metrics",
    "metric_options",
    "normalize_metric_names",
]

METRICS = ("bleu", "meteor", "rouge_l", "cider", "bertscore")
DEFAULT_METRICS = ("bleu", "meteor", "rouge_l", "cider")
LANGS = LANGUAGES  # compute_metrics' `lang`

# Accepted spellings of metric names -> canonical name: every name of METRICS, and these aliases.
_METRIC_ALIASES = {
    **{name: name for name in METRICS},
    "rougel": "rouge_l",
    "rouge": "rouge_l",
    "cider_d": "cider",
    "ciderd": "cider",
    "bert_score": "bertscore",
}

# compute_metrics' options that tippo-eval's command line and `EvaluationArguments` name as it does (see `metric_options`).
METRIC_OPTIONS = (
    "tokenize",
    "lang",
    "on_missing",
    "on_empty",
    "bertscore_model",
    "bertscore_num_layers",
    "bertscore_device",
    "bertscore_batch_size",
)

# How many ids an error message names before it says "... and N more".
_MAX_IDS_SHOWN = 10


class MetricsWarning(UserWarning):
    """Data was scored, but not exactly as given (an empty prediction, a dropped id or reference, ...)."""


@dataclass
class MetricsResult:
    """What :func:`compute_metrics` returns.

    Attributes:
        corpus: corpus-level score per metric, keys ``BLEU-1`` .. ``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``,
            ``BERTScore-P``, ``BERTScore-R``, ``BERTScore-F1`` (only those computed). 0-1 floats as the tools
            give them (CIDEr-D 0-10); paper tables show them ×100.
        per_sample: id -> {metric key -> score}, in the order of the predictions.
        tokenize, lang: the settings used.
        n_samples: how many ids were scored.
        n_empty_predictions: how many of them had an empty prediction (no token; scored as it is).
        skipped: ids left out with ``on_missing="skip"``, under ``predictions_without_references``,
            ``references_without_predictions`` and ``without_nonempty_references``.
        n_dropped_references: empty reference strings dropped with ``on_missing="skip"``.
        warnings: the warnings issued (also sent through :mod:`warnings` as :class:`MetricsWarning`, unless
            ``issue_warnings=False``).
        info: extra provenance, e.g. ``bertscore_model``, ``bertscore_num_layers``, ``bertscore_hash``.
    """

    corpus: dict[str, float]
    per_sample: dict[Hashable, dict[str, float]]
    tokenize: str
    lang: str
    n_samples: int
    n_empty_predictions: int = 0
    skipped: dict[str, list] = field(default_factory=dict)
    n_dropped_references: int = 0
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The corpus scores plus the settings and counts, as one flat JSON-ready dict."""
        out: dict[str, Any] = dict(self.corpus)
        out.update(
            tokenize=self.tokenize,
            lang=self.lang,
            n_samples=self.n_samples,
            n_empty_predictions=self.n_empty_predictions,
            n_skipped=sum(len(v) for v in self.skipped.values()),
            n_dropped_references=self.n_dropped_references,
        )
        out.update(self.info)
        return out


# ----------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------


def _show_ids(ids: Sequence, render=None) -> str:
    """The first few ids for an error message (strings quoted, so that ids "1" and 1 are told apart)."""
    render = render or (lambda i: repr(i) if isinstance(i, str) else str(i))
    shown = ", ".join(render(i) for i in ids[:_MAX_IDS_SHOWN])
    if len(ids) > _MAX_IDS_SHOWN:
        shown += f", ... and {len(ids) - _MAX_IDS_SHOWN} more"
    return shown


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def normalize_metric_names(metrics: str | Iterable[str]) -> list[str]:
    """Canonical metric names (``bleu``, ``meteor``, ``rouge_l``, ``cider``, ``bertscore``) from a list or a
    comma-separated string; case, ``-``/``_`` and a few aliases (``rouge``, ``cider-d``) are forgiven."""
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    out: list[str] = []
    for m in metrics:
        key = m.strip().lower().replace("-", "_")
        if not key:
            continue
        if key not in _METRIC_ALIASES:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        if _METRIC_ALIASES[key] not in out:
            out.append(_METRIC_ALIASES[key])
    if not out:
        raise ValueError(f"no metric requested; choose from {', '.join(METRICS)}")
    return out


def metric_options(arguments: Any) -> dict[str, Any]:
    """The :func:`compute_metrics` options that ``arguments`` (``tippo-eval``'s parsed command line,
    ``EvaluationArguments``) holds: each of ``METRIC_OPTIONS`` it has, under the same name."""
    return {name: getattr(arguments, name) for name in METRIC_OPTIONS if hasattr(arguments, name)}


def _check_texts(predictions: Mapping, references: Mapping) -> dict[Hashable, list[str]]:
    """Type checks; returns references with a lone string turned into a one-element list."""
    for k, p in predictions.items():
        if p is not None and not isinstance(p, str):
            raise ValueError(f"prediction for id {k!r} is a {type(p).__name__}, expected a string: {p!r:.80}")
    refs: dict[Hashable, list[str]] = {}
    for k, r in references.items():
        if r is None:
            r = []
        elif isinstance(r, str):
            r = [r]
        elif not isinstance(r, (list, tuple)) or not all(isinstance(x, str) for x in r):
            raise ValueError(f"references for id {k!r} must be a list of strings, got {r!r:.80}")
        refs[k] = list(r)
    return refs


class _Warnings(list):
    """The warnings of one :func:`compute_metrics` call, in order: kept for ``MetricsResult.warnings`` and, with
    ``issue``, sent through :mod:`warnings` as :class:`MetricsWarning`."""

    def __init__(self, issue: bool):
        super().__init__()
        self.issue = issue

    def __call__(self, message: str) -> None:
        self.append(message)
        if self.issue:
            # stacklevel 4: this call, the step that found the problem, compute_metrics, then the caller it is about.
            warnings.warn(message, MetricsWarning, stacklevel=4)


_SKIP_HINT = "pass on_missing='skip' (CLI: --on-missing skip) to leave them out"


def _check_options(
    metric_list: list[str],
    tokenize: str,
    lang: str,
    on_missing: str,
    on_empty: str,
    meteor_scorer: MeteorScorer | None,
) -> None:
    if tokenize not in TOKENIZE_MODES:
        raise ValueError(f"unknown tokenize mode {tokenize!r}; choose one of {', '.join(TOKENIZE_MODES)}")
    if lang not in LANGS:
        raise ValueError(f"unknown lang {lang!r}; choose one of {', '.join(LANGS)}")
    if tokenize == "ptb" and lang != "en":
        raise ValueError("tokenize='ptb' is the English PTB tokenizer; for Chinese use none, char or jieba")
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if on_empty not in ("warn", "error"):
        raise ValueError(f"on_empty must be 'warn' or 'error', got {on_empty!r}")
    # Fail before any work if Java is needed and missing.
    if ("meteor" in metric_list and meteor_scorer is None) or tokenize == "ptb":
        _require_java("METEOR" if "meteor" in metric_list else "PTB tokenisation (tokenize='ptb')")


def _match_ids(
    predictions: Mapping[Hashable, str | None],
    references: Mapping[Hashable, list[str]],
    on_missing: str,
    warn: _Warnings,
) -> tuple[list, dict[str, list]]:
    """The ids with a prediction and references, in the predictions' order, and the ids skipped (``on_missing="skip"``;
    with ``"error"`` an id on one side only raises)."""
    pred_no_ref = [k for k, p in predictions.items() if k not in references]
    ref_no_pred = [k for k in references if predictions.get(k) is None]
    problems = []
    if pred_no_ref:
        problems.append(
            f"{_plural(len(pred_no_ref), 'prediction')} without references (ids: {_show_ids(pred_no_ref)})"
        )
    if ref_no_pred:
        problems.append(
            f"{_plural(len(ref_no_pred), 'reference id')} without a prediction (ids: {_show_ids(ref_no_pred)})"
        )
    if problems and on_missing == "error":
        raise ValueError("; ".join(problems) + f"; {_SKIP_HINT}")
    skipped: dict[str, list] = {}
    if pred_no_ref:
        skipped["predictions_without_references"] = pred_no_ref
    if ref_no_pred:
        skipped["references_without_predictions"] = ref_no_pred
    if problems:
        warn("skipped " + "; ".join(problems))
    return [k for k, p in predictions.items() if p is not None and k in references], skipped


def _tokenize_all(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, list[str]], ids: list, tokenize: str
) -> tuple[dict[Hashable, str], dict[Hashable, list[str]], dict[Hashable, list[str]], list[tuple[Hashable, int]]]:
    """Tokenise every prediction and reference in one go (ptb: a single JVM run).

    Returns ``(prediction tokens, reference tokens, raw references, empty references)``: the references (tokenised
    and as given) without the ones that are empty after tokenisation, which are listed as ``(id, index)``.
    """
    flat_raw: list[str] = [predictions[k] for k in ids]
    for k in ids:
        flat_raw.extend(references[k])
    flat_tok = tokenize_texts(flat_raw, tokenize)
    pred_tok: dict[Hashable, str] = {}
    refs_tok: dict[Hashable, list[str]] = {}
    refs_raw: dict[Hashable, list[str]] = {}
    empty_refs: list[tuple[Hashable, int]] = []
    pos = len(ids)
    for j, k in enumerate(ids):
        pred_tok[k] = flat_tok[j]
        n = len(references[k])
        toks = flat_tok[pos : pos + n]
        keep = [i for i, t in enumerate(toks) if t.split()]
        empty_refs.extend((k, i) for i, t in enumerate(toks) if not t.split())
        refs_tok[k] = [toks[i] for i in keep]
        refs_raw[k] = [references[k][i] for i in keep]
        pos += n
    return pred_tok, refs_tok, refs_raw, empty_refs


def _drop_empty_references(
    ids: list,
    refs_tok: Mapping[Hashable, list[str]],
    empty_refs: list[tuple[Hashable, int]],
    tokenize: str,
    on_missing: str,
    skipped: dict[str, list],
    warn: _Warnings,
) -> tuple[list, int]:
    """Empty references: raise (``on_missing="error"``), or drop them and skip the ids left without one. Returns the
    ids kept and how many references were dropped from ids that have others."""
    no_refs = [k for k in ids if not refs_tok[k]]
    n_dropped = sum(1 for k, _ in empty_refs if refs_tok[k])
    if not (empty_refs or no_refs):
        return ids, n_dropped
    if on_missing == "error":
        after = f" after {tokenize} tokenisation" if tokenize != "none" else ""
        parts = []
        if empty_refs:
            where = _show_ids(empty_refs, render=lambda ki: f"{ki[0]!r}#{ki[1]}")
            verb = "is" if len(empty_refs) == 1 else "are"
            parts.append(f"{_plural(len(empty_refs), 'reference')} {verb} empty{after} (id#index: {where})")
        if no_refs:
            ids_shown = _show_ids(no_refs)
            parts.append(f"{_plural(len(no_refs), 'id')} without any non-empty reference (ids: {ids_shown})")
        raise ValueError("; ".join(parts) + f"; {_SKIP_HINT}")
    if n_dropped:
        warn(f"dropped {_plural(n_dropped, 'empty reference')} (ids with other references kept)")
    if no_refs:
        skipped["without_nonempty_references"] = no_refs
        warn(f"skipped {_plural(len(no_refs), 'id')} with no non-empty reference (ids: {_show_ids(no_refs)})")
    return [k for k in ids if refs_tok[k]], n_dropped


def _empty_predictions(
    ids: list, pred_tok: Mapping[Hashable, str], tokenize: str, on_empty: str, warn: _Warnings
) -> list:
    """The ids whose prediction has no token: raised with ``on_empty="error"``, else warned about (scored as empty)."""
    empty_preds = [k for k in ids if not pred_tok[k].split()]
    if empty_preds:
        if on_empty == "error":
            after = f" after {tokenize} tokenisation" if tokenize != "none" else ""
            raise ValueError(
                f"{_plural(len(empty_preds), 'prediction')} {'is' if len(empty_preds) == 1 else 'are'} empty{after} "
                f"(ids: {_show_ids(empty_preds)}); pass on_empty='warn' (CLI: --on-empty warn) to score them as empty"
            )
        warn(
            f"{_plural(len(empty_preds), 'prediction')} {'is' if len(empty_preds) == 1 else 'are'} empty and "
            f"scored as an empty caption (ids: {_show_ids(empty_preds)})"
        )
    return empty_preds


def _score(
    metric_list: list[str],
    ids: list,
    gts: Mapping[Hashable, list[str]],
    res: Mapping[Hashable, list[str]],
    bertscore_inputs: tuple[list[str], list[list[str]]],
    bertscore_options: dict[str, Any],
    meteor_scorer: MeteorScorer | None,
    progress: bool,
    warn: _Warnings,
) -> tuple[dict[str, float], dict[Hashable, dict[str, float]], dict[str, Any]]:
    """Run each metric's tool on the tokenised ``gts`` / ``res`` (BERTScore: on the raw texts). Returns
    ``(corpus, per_sample, info)``."""
    if "cider" in metric_list and len(ids) == 1:
        warn("CIDEr-D takes its idf weights from the references of the scored set; with one sample it is always 0")
    corpus: dict[str, float] = {}
    per_sample: dict[Hashable, dict[str, float]] = {k: {} for k in ids}
    info: dict[str, Any] = {}

    def put(name: str, score: float, scores: Sequence[float]) -> None:
        corpus[name] = float(score)
        for k, s in zip(ids, scores):
            per_sample[k][name] = float(s)

    from tqdm.auto import tqdm

    for metric in tqdm(metric_list, desc="Scoring", unit="metric", disable=not progress, leave=False):
        if metric == "bleu":
            Bleu = _import("pycocoevalcap.bleu.bleu", "pycocoevalcap").Bleu
            # verbose=0: upstream prints its length statistics to stdout otherwise.
            score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                put(f"BLEU-{n + 1}", score[n], scores[n])
        elif metric == "meteor":
            if meteor_scorer is not None:
                put("METEOR", *meteor_scorer.compute_score(gts, res))
            else:
                with MeteorScorer() as scorer:
                    put("METEOR", *scorer.compute_score(gts, res))
        elif metric == "rouge_l":
            Rouge = _import("pycocoevalcap.rouge.rouge", "pycocoevalcap").Rouge
            put("ROUGE-L", *Rouge().compute_score(gts, res))
        elif metric == "cider":
            Cider = _import("pycocoevalcap.cider.cider", "pycocoevalcap").Cider
            put("CIDEr", *Cider().compute_score(gts, res))
        elif metric == "bertscore":
            P, R, F, bs_info = _bertscore(*bertscore_inputs, **bertscore_options)
            # bert_score's corpus figure is the mean of the per-sample scores.
            for name, vals in (("BERTScore-P", P), ("BERTScore-R", R), ("BERTScore-F1", F)):
                put(name, math.fsum(vals) / len(vals), vals)
            info.update(bs_info)
    return corpus, per_sample, info


# ----------------------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------------------


def compute_metrics(
    predictions: Mapping[Hashable, str | None],
    references: Mapping[Hashable, Sequence[str] | str],
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    tokenize: str = "none",
    lang: str = "zh",
    *,
    on_missing: str = "error",
    on_empty: str = "warn",
    bertscore_model: str | None = None,
    bertscore_num_layers: int | None = None,
    bertscore_device: str | None = None,
    bertscore_batch_size: int = 64,
    meteor_scorer: MeteorScorer | None = None,
    progress: bool = False,
    issue_warnings: bool = True,
) -> MetricsResult:
    """Corpus and per-sample caption metrics, computed by the coco-caption tools and bert-score.

    Args:
        predictions: id -> generated text (one per id).
        references: id -> list of reference texts (a lone string is taken as a one-element list).
        metrics: any of ``bleu`` (BLEU-1..4), ``meteor``, ``rouge_l``, ``cider`` (CIDEr-D), ``bertscore``;
            a list or a comma-separated string.
        tokenize: ``none`` (pass-through, the text is pre-segmented; equals pycocoevalcap on the same strings),
            ``char``, ``jieba`` or ``ptb`` (English only, needs Java). See the module docstring.
        lang: ``zh`` or ``en``. Picks bert_score's default model when ``bertscore_model`` is not given and rules
            out ``ptb`` for Chinese. METEOR always runs with coco-caption's settings (``-l en -norm``).
        on_missing: ``"error"`` (default): raise ``ValueError`` naming the ids if a prediction has no reference,
            a reference has no prediction (or a ``None`` one), or a reference string is empty after tokenisation.
            ``"skip"``: leave such ids / empty reference strings out, with a counted :class:`MetricsWarning`.
        on_empty: an empty prediction (no token after tokenisation): ``"warn"`` (default) scores it as it is
            (the tools give an empty caption 0: BLEU through its brevity penalty, the METEOR jar, ROUGE-L, CIDEr,
            and BERTScore by bert_score's convention) and warns with the count; ``"error"`` raises naming the ids.
        bertscore_model: name or local directory of the BERTScore model (passed to ``from_pretrained``);
            ``None``: bert_score's default for ``lang`` (``bert-base-chinese`` / ``roberta-large``).
        bertscore_num_layers: which layer's output to use; required for models bert_score has no default for
            (local paths included).
        bertscore_device: e.g. ``"cpu"``, ``"cuda"``; ``None``: CUDA when available.
        bertscore_batch_size: BERTScore batch size.
        meteor_scorer: a running :class:`MeteorScorer` to reuse (it is not closed); ``None``: one is started and
            closed for this call.
        progress: show a progress bar over the metrics (METEOR and BERTScore take tens of seconds on a CPU).
        issue_warnings: send each warning through :mod:`warnings` as a :class:`MetricsWarning` (default); ``False``:
            only collect them in ``MetricsResult.warnings``, for callers that print them their own way.

    Returns:
        A :class:`MetricsResult`; ``.corpus`` has 0-1 scores (CIDEr 0-10), as pycocoevalcap reports them.

    Raises:
        ValueError: unusable input (mismatched ids, empty references, wrong types, unknown options).
        JavaNotFoundError: METEOR or ``ptb`` requested but ``java`` is not on PATH.
        ExternalToolError: the METEOR jar, the PTB tokenizer or the BERTScore model failed.
    """
    metric_list = normalize_metric_names(metrics)
    _check_options(metric_list, tokenize, lang, on_missing, on_empty, meteor_scorer)
    refs_in = _check_texts(predictions, references)
    warn = _Warnings(issue_warnings)

    ids, skipped = _match_ids(predictions, refs_in, on_missing, warn)
    pred_tok, refs_tok, refs_raw, empty_refs = _tokenize_all(predictions, refs_in, ids, tokenize)
    ids, n_dropped = _drop_empty_references(ids, refs_tok, empty_refs, tokenize, on_missing, skipped, warn)
    if not ids:
        raise ValueError("nothing to score: no id has both a prediction and a non-empty reference")
    empty_preds = _empty_predictions(ids, pred_tok, tokenize, on_empty, warn)

    corpus, per_sample, info = _score(
        metric_list,
        ids,
        gts={k: refs_tok[k] for k in ids},
        res={k: [pred_tok[k]] for k in ids},
        bertscore_inputs=([predictions[k] for k in ids], [refs_raw[k] for k in ids]),
        bertscore_options=dict(
            model=bertscore_model,
            num_layers=bertscore_num_layers,
            lang=lang,
            device=bertscore_device,
            batch_size=bertscore_batch_size,
        ),
        meteor_scorer=meteor_scorer,
        progress=progress,
        warn=warn,
    )
    return MetricsResult(
        corpus=corpus,
        per_sample=per_sample,
        tokenize=tokenize,
        lang=lang,
        n_samples=len(ids),
        n_empty_predictions=len(empty_preds),
        skipped=skipped,
        n_dropped_references=n_dropped,
        warnings=list(warn),
        info=info,
    )
