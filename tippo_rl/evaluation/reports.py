"""Reporting scores: markdown tables (scores ×100, spreads over seeds), examples, bar charts of cells and the
training curves the recipes logged.

- [`scores_table`], [`examples_section`]: markdown for `report.md`.
- [`spread_table`], [`plot_cells`]: scores over seeds (`recipes/ablate.py`).
- [`plot_training_curves`], [`plot_curves`]: PNG line plots of training logs (`trainer.state.log_history`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint

from .metrics import MetricsResult


# Columns of the report tables, in this order, where computed (metrics.json keeps every score).
TABLE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "BERTScore-F1")


def scores_table(rows: Sequence[tuple[Sequence[str], MetricsResult]], headers: Sequence[str]) -> str:
    """A markdown table: the leading cells of each row (named by `headers`), then its scores ×100 (as papers print
    them, CIDEr-D included) and its count of empty predictions."""
    metric_columns = [name for name in TABLE_METRICS if any(name in result.corpus for _, result in rows)]
    lines = [
        "| " + " | ".join([*headers, *metric_columns, "empty"]) + " |",
        "|" + "---|" * len(headers) + "---:|" * (len(metric_columns) + 1),
    ]
    for cells, result in rows:
        scores = [f"{100 * result.corpus[name]:.2f}" if name in result.corpus else "–" for name in metric_columns]
        lines.append("| " + " | ".join([*cells, *scores, f"{result.n_empty_predictions}/{result.n_samples}"]) + " |")
    return "\n".join(lines)


def spread_cell(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """`mean` of one value, `mean (min–max)` of several (several seeds of a cell), scaled."""
    scaled = [scale * value for value in values]
    mean = sum(scaled) / len(scaled)
    return (
        f"{mean:.{digits}f}"
        if len(scaled) == 1
        else f"{mean:.{digits}f} ({min(scaled):.{digits}f}–{max(scaled):.{digits}f})"
    )


def spread_table(
    rows: Sequence[tuple[Sequence[str], Sequence[Mapping[str, float]]]],
    headers: Sequence[str],
    columns: Sequence[str],
    digits: int = 2,
) -> str:
    """A markdown table of scores ×100 over seeds: each row is its leading cells and one score mapping per seed;
    a column shows the mean, with the range when there are several seeds."""
    columns = [name for name in columns if any(name in scores for _, runs in rows for scores in runs)]
    lines = ["| " + " | ".join([*headers, *columns]) + " |", "|" + "---|" * len(headers) + "---:|" * len(columns)]
    for cells, runs in rows:
        values = [
            spread_cell([scores[name] for scores in runs], digits=digits)
            if all(name in scores for scores in runs)
            else "–"
            for name in columns
        ]
        lines.append("| " + " | ".join([*cells, *values]) + " |")
    return "\n".join(lines)


def plot_cells(path: str | Path, cells: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]) -> None:
    """Save bar charts (one panel per metric, ×100) of `cells` (`{cell label: {metric: one value per seed}}`): the
    bar is the mean over seeds, the dots are the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 4.2), squeeze=False)
    labels = list(cells)
    for axis, metric in zip(axes[0], metrics):
        for position, label in enumerate(labels):
            values = [100 * value for value in cells[label].get(metric, [])]
            if not values:
                continue
            axis.bar(position, sum(values) / len(values), color=f"C{position % 10}", alpha=0.6)
            axis.scatter([position] * len(values), values, color="black", s=10, zorder=3)
        axis.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        axis.set(title=metric, ylabel="×100 (bar: mean; dots: seeds)")
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def examples_section(dataset: Dataset, predictions: Mapping[str, Mapping[str, str]], num_examples: int) -> str:
    """Markdown: the first `num_examples` samples with their reference and each model's prediction
    (`predictions` is `{model name: {id: text}}`)."""
    blocks = []
    for row in dataset.select(range(min(num_examples, len(dataset)))):
        lines = [f"**{row['id']}** — title: {row['title']!r}", "", f"- reference: {row['references'][0]}"]
        lines += [f"- {name}: {texts[row['id']] or '(empty)'}" for name, texts in predictions.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def log_curve(log_history: Sequence[Mapping], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged quantity in a Trainer's `state.log_history`."""
    points = [(entry["step"], entry[key]) for entry in log_history if entry.get(key) is not None]
    return [step for step, _ in points], [value for _, value in points]


# (panel title, y label, logged keys): each stage's losses on an axis of its own (SFT's per-token NTP and contrastive
# losses and PPO's surrogate/value losses differ by orders of magnitude, and each stage counts its steps from 0), then
# the rewards of the RL stages (0–1, as logged).
TRAINING_CURVES = (
    ("SFT loss", "loss (per token)", ("loss/ntp", "loss/contrastive")),
    ("PPO / PolishPPO loss", "loss", ("loss/policy", "loss/value")),
    ("rewards (sampled rollouts)", "mean reward", ("rewards/literal/mean", "rewards/semantic/mean", "returns/mean")),
    (  # what evaluation decodes (greedy) against what RL samples, on held-out prompts
        "held-out rewards: greedy vs sampled",
        "mean reward",
        ("eval_rewards/literal", "eval_sampled_rewards/literal", "eval_rewards/cider", "eval_sampled_rewards/cider"),
    ),
)


def training_log_history(model_dir: str | Path) -> list[dict] | None:
    """The log history a recipe left in `model_dir` (`trainer_state.json`, else the newest checkpoint's); None if none."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return None
    last_checkpoint = get_last_checkpoint(str(folder))  # transformers' newest checkpoint-N, as resuming picks it
    for state in (folder / "trainer_state.json", Path(last_checkpoint or folder) / "trainer_state.json"):
        if state.is_file():
            return json.loads(state.read_text(encoding="utf-8")).get("log_history") or None
    return None


def training_curve_panels(
    histories: Mapping[str, Sequence[Mapping]],
) -> list[tuple[str, str, dict[str, tuple[list, list]]]]:
    """The `TRAINING_CURVES` panels that have something to draw, each `(title, y label, {"model: key": (steps,
    values)})`, from each model's log history (`{model name: log_history}`)."""
    panels = []
    for title, ylabel, keys in TRAINING_CURVES:
        lines = {f"{name}: {key}": log_curve(history, key) for name, history in histories.items() for key in keys}
        lines = {label: points for label, points in lines.items() if points[0]}
        if lines:
            panels.append((title, ylabel, lines))
    return panels


def plot_training_curves(path: str | Path, histories: Mapping[str, Sequence[Mapping]]) -> bool:
    """`TRAINING_CURVES` of each model's log history (`{model name: log_history}`) as one PNG, a panel per stage's
    losses; False if nothing to plot."""
    panels = training_curve_panels(histories)
    if not panels:
        return False
    plot_curves(path, panels)
    return True


def plot_curves(path: str | Path, panels: Sequence[tuple[str, str, Mapping[str, tuple[list, list]]]]) -> None:
    """Save a row of line plots as a PNG. `panels`: `(title, y label, {line label: (steps, values)})` each."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (title, ylabel, lines) in zip(axes[0], panels):
        for label, (steps, values) in lines.items():
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        axis.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
