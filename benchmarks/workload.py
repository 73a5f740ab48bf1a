"""What the training benchmarks feed the model beyond the demo data as it is: longer texts, for realistic lengths."""

from __future__ import annotations


def lengthen(text: str, words: int) -> str:
    """`text` repeated until it has at least `words` words (longer references, for realistic target lengths)."""
    if words <= 0:
        return text
    out = text
    while len(out.split()) < words:
        out = f"{out} {text}"
    return out
