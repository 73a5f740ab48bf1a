"""``tippo-eval``: score generated captions against references with the standard caption metrics.

Usage::

    tippo-eval --predictions preds.jsonl --references refs.jsonl [--lang auto|zh|en] [--tokenize none|char|jieba|ptb]
               [--metrics bleu,meteor,rouge_l,cider,bertscore] [--bertscore-model NAME_OR_PATH]
               [--per-sample FILE] [--on-missing error|skip]

Prints one JSON object on stdout: the corpus scores (``BLEU-1`` .. ``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``,
``BERTScore-P/R/F1``; 0-1 as pycocoevalcap reports them, papers print them ×100) and ``tokenize``, ``lang``,
``n_samples`` (plus counts of empty predictions and skipped ids). Warnings go to stderr. See
:mod:`tippo_rl.evaluation.metrics` for what each option does.

Input files (the format is recognised from the content):

* JSONL, one object a line: predictions ``{"id": ..., "prediction": "..."}``; references
  ``{"id": ..., "references": ["...", ...]}`` or ``{"id": ..., "reference": "..."}`` (rows with the same id are
  merged).
* COCO-style JSON: results ``[{"image_id": ..., "caption": "..."}]``; annotations
  ``{"images": [{"id": ...}], "annotations": [{"image_id": ..., "caption": "..."}]}``.
* A JSON list of the JSONL rows, or a JSON object mapping id -> prediction / id -> list of references.

Ids are matched as strings, so ``17`` in one file matches ``"17"`` in the other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..language import detect_language
from .external_tools import ExternalToolError
from .metrics import DEFAULT_METRICS, LANGS, METRICS, compute_metrics, metric_options, normalize_metric_names
from .tokenization import TOKENIZE_MODES


__all__ = ["load_predictions", "load_references", "main"]

PROG = "tippo-eval"

_PRED_TEXT_KEYS = ("prediction", "caption")
_REF_TEXT_KEYS = ("references", "reference", "caption")
_ID_KEYS = ("id", "image_id")


# ----------------------------------------------------------------------------------------------------------
# Reading the files
# ----------------------------------------------------------------------------------------------------------


def _read_records(path: str | Path) -> tuple[Any, str]:
    """The file's content as one JSON document, or as a list of JSONL rows. Returns (data, "json"|"jsonl")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, expected a JSON or JSONL file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        pass
    else:
        if isinstance(data, dict) and any(k in data for k in _ID_KEYS):
            return [(1, data)], "jsonl"  # a JSONL file with a single row
        return data, "json"
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {lineno}: neither a JSON file nor valid JSONL ({e.msg})") from None
    return rows, "jsonl"


def _rows(path: str | Path, data: Any, kind: str) -> list[tuple[str, Any]]:
    """(where, row) pairs: JSONL lines, or the items of a JSON list."""
    if kind == "jsonl":
        return [(f"{path} line {n}", row) for n, row in data]
    return [(f"{path} item {i}", row) for i, row in enumerate(data)]


def _row_id(where: str, row: Any, text_key: str) -> Any:
    """The row's id: ``image_id`` first in COCO-style rows (text in ``caption``, where ``id`` is the annotation's
    own id), ``id`` first otherwise."""
    keys = ("image_id", "id") if text_key == "caption" else _ID_KEYS
    for key in keys:
        if key in row:
            if row[key] is None or isinstance(row[key], (dict, list)):
                raise ValueError(f"{where}: '{key}' must be a string or a number, got {row[key]!r:.60}")
            return row[key]
    raise ValueError(f"{where}: no 'id' (or 'image_id') field")


def _text_key(where: str, row: Any, keys: tuple[str, ...]) -> str:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with an 'id' and {keys[0]!r}, got {type(row).__name__}")
    key = next((k for k in keys if k in row), None)
    if key is None:
        alternatives = " / ".join(repr(k) for k in keys[1:])
        raise ValueError(f"{where}: no {keys[0]!r} (or {alternatives}) field")
    return key


def load_predictions(path: str | Path) -> tuple[dict[str, str | None], dict[str, Any]]:
    """Read a predictions file (JSONL rows, COCO results, or a JSON id -> text object).

    Returns:
        ``(predictions, original_ids)``: predictions keyed by the id as a string, and string id -> the id as
        written in the file (for the per-sample output).
    """
    data, kind = _read_records(path)
    preds: dict[str, str | None] = {}
    original: dict[str, Any] = {}
    where_of: dict[str, str] = {}
    if kind == "json" and isinstance(data, dict):
        if "annotations" in data:
            raise ValueError(f"{path}: this looks like a COCO annotation (reference) file, not predictions")
        items = [(f"{path} key {k!r}", k, v) for k, v in data.items()]
    else:
        if kind == "json" and not isinstance(data, list):
            raise ValueError(f"{path}: expected JSON rows or a list of objects, got a {type(data).__name__}")
        items = []
        for where, row in _rows(path, data, kind):
            key = _text_key(where, row, _PRED_TEXT_KEYS)
            id_ = _row_id(where, row, key)
            items.append((where, id_, row[key]))
    for where, id_, text in items:
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: the prediction must be a string, got {text!r:.60}")
        sid = str(id_)
        if sid in preds:
            raise ValueError(f"{where}: id {id_!r} has a second prediction (first at {where_of[sid]})")
        preds[sid], original[sid], where_of[sid] = text, id_, where
    if not preds:
        raise ValueError(f"{path}: no predictions in the file")
    return preds, original


def _as_ref_list(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{where}: references must be a string or a list of strings, got {value!r:.60}")


def load_references(path: str | Path) -> dict[str, list[str]]:
    """Read a references file (JSONL rows, COCO annotations, or a JSON id -> references object).

    Rows with the same id are merged, so one caption per row works as well as one list per id. In a COCO file
    every entry of ``images`` is an id to score, even one without annotations (it is reported as missing).

    Returns:
        id as a string -> list of reference texts.
    """
    data, kind = _read_records(path)
    refs: dict[str, list[str]] = {}
    if kind == "json" and isinstance(data, dict) and "annotations" in data:
        anns = data["annotations"]
        if not isinstance(anns, list):
            raise ValueError(f"{path}: 'annotations' must be a list")
        for img in data.get("images") or []:
            if isinstance(img, dict) and "id" in img:
                refs.setdefault(str(img["id"]), [])
        for i, ann in enumerate(anns):
            where = f"{path} annotations[{i}]"
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise ValueError(f"{where}: expected an object with 'image_id' and 'caption'")
            refs.setdefault(str(ann["image_id"]), []).extend(_as_ref_list(where, ann["caption"]))
    elif kind == "json" and isinstance(data, dict):
        for k, v in data.items():
            refs.setdefault(str(k), []).extend(_as_ref_list(f"{path} key {k!r}", v))
    else:
        if kind == "json" and not isinstance(data, list):
            raise ValueError(f"{path}: expected JSON rows, COCO annotations or an object, got a {type(data).__name__}")
        for where, row in _rows(path, data, kind):
            key = _text_key(where, row, _REF_TEXT_KEYS)
            id_ = _row_id(where, row, key)
            refs.setdefault(str(id_), []).extend(_as_ref_list(where, row[key]))
    if not refs:
        raise ValueError(f"{path}: no references in the file")
    return refs


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _parse_metrics(value: str) -> list[str]:
    try:
        return normalize_metric_names(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``tippo-eval`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Score captions with BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap, the coco-caption code) and "
            "BERTScore (bert-score). Prints one JSON object with the corpus scores on stdout."
        ),
        epilog=(
            "Scores are 0-1 as pycocoevalcap reports them (CIDEr 0-10); paper tables show them x100. "
            'Input files: JSONL rows {"id", "prediction"} / {"id", "references": [...]} (or "reference": '
            'str), or COCO JSON (results [{"image_id", "caption"}], annotations {"images", "annotations"}). '
            "METEOR and --tokenize ptb need Java (apt-get install default-jre-headless)."
        ),
    )
    p.add_argument("--predictions", "-p", required=True, metavar="FILE", help="generated captions (JSONL or JSON)")
    p.add_argument("--references", "-r", required=True, metavar="FILE", help="reference captions (JSONL or JSON)")
    p.add_argument(
        "--lang",
        choices=("auto", *LANGS),
        default="auto",
        help="language of the texts (default auto: read from the references, zh where CJK ideographs are a third of the letters)",
    )
    p.add_argument(
        "--tokenize",
        choices=TOKENIZE_MODES,
        default="none",
        help=(
            "none: texts are pre-segmented with spaces and scored as given (matches the published COCO-CN "
            "numbers); char: one token per CJK character; jieba: jieba word segmentation; ptb: coco-caption's "
            "English PTB tokenizer (needs Java). Default: none"
        ),
    )
    p.add_argument(
        "--metrics",
        type=_parse_metrics,
        default=None,
        metavar="LIST",
        help=f"comma-separated, from {','.join(METRICS)} (default: {','.join(DEFAULT_METRICS)}, "
        "plus bertscore when --bertscore-model is given)",
    )
    p.add_argument(
        "--bertscore-model",
        metavar="NAME_OR_PATH",
        help="BERTScore model: a hub name or a local directory (default: bert_score's model for --lang)",
    )
    p.add_argument(
        "--bertscore-num-layers",
        type=int,
        metavar="N",
        help="which layer BERTScore uses; required for models bert_score has no default for (local paths)",
    )
    p.add_argument("--bertscore-device", metavar="DEVICE", help="e.g. cpu, cuda (default: cuda when available)")
    p.add_argument("--bertscore-batch-size", type=int, default=64, metavar="N", help="default: 64")
    p.add_argument("--per-sample", metavar="FILE", help="also write per-sample scores here, one JSON object a line")
    p.add_argument(
        "--on-missing",
        choices=("error", "skip"),
        default="error",
        help="ids present in only one file, or with empty references: stop with an error (default) or skip them",
    )
    p.add_argument(
        "--on-empty",
        choices=("warn", "error"),
        default="warn",
        help="empty predictions: score them as empty, 0 by every metric, and warn (default), or stop with an error",
    )
    return p


def _fail(message: str) -> int:
    # One line, so that it reads well in logs and scripts can grep it.
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tippo-eval``; returns the exit status (0, or 2 for a user error; bad arguments exit via argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.metrics is None:
        metrics = list(DEFAULT_METRICS) + (["bertscore"] if args.bertscore_model else [])
    else:
        metrics = args.metrics
        if args.bertscore_model and "bertscore" not in metrics:
            parser.error("--bertscore-model is given but bertscore is not in --metrics")

    try:
        predictions, original_ids = load_predictions(args.predictions)
        references = load_references(args.references)
        if args.lang == "auto":
            args.lang = detect_language(text for texts in references.values() for text in texts)
        # Keep stdout for the single JSON object, whatever a library prints.
        with contextlib.redirect_stdout(sys.stderr):
            result = compute_metrics(
                predictions,
                references,
                metrics=metrics,
                **metric_options(args),
                issue_warnings=False,  # printed below as one clean line each, not with warnings' file:line prefix
            )
    except (ValueError, ExternalToolError) as e:
        return _fail(str(e))

    for message in result.warnings:
        print(f"{PROG}: warning: {message}", file=sys.stderr)

    if args.per_sample:
        try:
            with open(args.per_sample, "w", encoding="utf-8") as f:
                for sid, scores in result.per_sample.items():
                    f.write(json.dumps({"id": original_ids.get(sid, sid), **scores}, ensure_ascii=False) + "\n")
        except OSError as e:
            return _fail(f"cannot write --per-sample file {args.per_sample}: {e.strerror or e}")

    print(json.dumps(result.summary(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
