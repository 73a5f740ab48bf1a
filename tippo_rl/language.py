"""The language of a dataset's texts, which decides everything language-dependent: the semantic reward's embedder,
the metrics' tokenisation and the tiny preset's tokenizers."""

from __future__ import annotations

from collections.abc import Iterable


LANGS = ("en", "zh")


def _is_cjk(character: str) -> bool:
    code = ord(character)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF


def detect_language(texts: Iterable[str], max_texts: int = 200) -> str:
    """`zh` when CJK ideographs are at least a third of the letters of the first `max_texts` texts, else `en` (any
    other alphabetic language counts as `en` here: the English tools are the fallback)."""
    cjk = letters = 0
    for index, text in enumerate(texts):
        if index == max_texts:
            break
        for character in str(text):
            if _is_cjk(character):
                cjk += 1
                letters += 1
            elif character.isalpha():
                letters += 1
    return "zh" if letters and cjk / letters >= 1 / 3 else "en"
