"""Tokenisation before the n-gram metrics: ``none``, ``char``, ``jieba`` and ``ptb``; what each does is in
:mod:`tippo_rl.evaluation.metrics`."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence

from .external_tools import ExternalToolError, _import, _one_line, _require_java


TOKENIZE_MODES = ("none", "char", "jieba", "ptb")

# Hiragana/Katakana, CJK Ext. A, CJK Unified Ideographs, Compatibility Ideographs, Hangul syllables,
# Ext. B-F and the Compatibility Supplement.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f"
_CHAR_TOKEN_RE = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+|\S")


def _char_tokenize(text: str) -> str:
    return " ".join(_CHAR_TOKEN_RE.findall(text))


_jieba = None


def _jieba_tokenize(texts: Sequence[str]) -> list[str]:
    global _jieba
    if _jieba is None:
        import logging

        jieba = _import("jieba", "jieba")

        # jieba logs "Building prefix dict ..." at DEBUG/INFO on first use; keep the CLI's stderr for real problems.
        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    return [" ".join(w for w in _jieba.lcut(t) if w.strip()) for t in texts]


def _ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer, run on a temporary file outside the package directory.

    Same jar, same command line and same punctuation filter as ``PTBTokenizer.tokenize``; the upstream wrapper
    is not called because it writes its temporary file next to the jar (fails on a read-only site-packages) and
    silently drops captions after one that contains a ``\\r`` or another line separator.
    """
    java = _require_java("PTB tokenisation (--tokenize ptb)")
    ptb = _import("pycocoevalcap.tokenizer.ptbtokenizer", "pycocoevalcap")

    if not texts:
        return []
    jar = os.path.join(os.path.dirname(os.path.abspath(ptb.__file__)), ptb.STANFORD_CORENLP_3_4_1_JAR)
    cmd = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    with tempfile.TemporaryDirectory(prefix="tippo_ptb_") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "wb") as f:
            f.write("\n".join(_one_line(t) for t in texts).encode())
        try:
            proc = subprocess.run(cmd + [path], stdin=subprocess.DEVNULL, capture_output=True, timeout=3600)
        except subprocess.TimeoutExpired as e:
            raise ExternalToolError("the PTB tokenizer did not finish within an hour") from e
    if proc.returncode != 0:
        raise ExternalToolError(
            f"the PTB tokenizer (java) failed with exit code {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace').strip()[-500:]}"
        )
    lines = proc.stdout.decode().split("\n")
    if len(lines) < len(texts):
        raise ExternalToolError(f"the PTB tokenizer returned {len(lines)} lines for {len(texts)} captions")
    punct = set(ptb.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punct) for line in lines[: len(texts)]]


def tokenize_texts(texts: Sequence[str], mode: str = "none") -> list[str]:
    """Tokenise texts the way :func:`compute_metrics` does before BLEU/METEOR/ROUGE-L/CIDEr.

    Args:
        texts: the strings.
        mode: ``none`` (returned unchanged), ``char``, ``jieba`` or ``ptb``; see :mod:`tippo_rl.evaluation.metrics`.

    Returns:
        One string per text, tokens separated by single spaces (``none``: the text as given).
    """
    if mode not in TOKENIZE_MODES:
        raise ValueError(f"unknown tokenize mode {mode!r}; choose one of {', '.join(TOKENIZE_MODES)}")
    texts = list(texts)
    if mode == "none":
        return texts
    if mode == "char":
        return [_char_tokenize(t) for t in texts]
    if mode == "jieba":
        return _jieba_tokenize(texts)
    return _ptb_tokenize(texts)
