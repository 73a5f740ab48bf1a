"""The languages tippo_rl knows (`LANGUAGES`), the language of a dataset's texts (today it picks the semantic reward's
embedder for `semantic_model: auto`), and the CJK ideographs that language detection and the CIDEr-D reward's words
both read."""

from __future__ import annotations

import re
from collections.abc import Iterable


# The languages the metrics' word segmentation, the demo data and `detect_language` know.
LANGUAGES = ("zh", "en")
# CJK Unified Ideographs Ext. A, CJK Unified Ideographs, Compatibility Ideographs: a regex character class.
CJK_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_IDEOGRAPH = re.compile(f"[{CJK_IDEOGRAPHS}]")


def detect_language(texts: Iterable[str], max_texts: int = 200) -> str:
    """`zh` when CJK ideographs are at least a third of the letters of the first `max_texts` texts, else `en` (any
    other alphabetic language counts as `en` here: the English tools are the fallback)."""
    cjk = letters = 0
    for index, text in enumerate(texts):
        if index == max_texts:
            break
        for character in str(text):
            if _CJK_IDEOGRAPH.match(character):
                cjk += 1
                letters += 1
            elif character.isalpha():
                letters += 1
    return "zh" if letters and cjk / letters >= 1 / 3 else "en"
