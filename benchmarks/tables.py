"""A benchmark's results: medians and paired ratios of alternated timings, Markdown tables, and the JSON file."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Round-by-round ratios of two timings measured alternately (each round's pair shares the machine's load)."""
    return [a / b for a, b in zip(numerator, denominator) if a and b]


def fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    return format(value, spec)


def print_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Print (and return) a GitHub-flavoured Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells),
    ]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
