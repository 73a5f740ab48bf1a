"""What PPO logs: per-iteration rollout metrics (rewards, returns, advantages, completion lengths), per-step loss
metrics, the reward plug-ins' own metrics (`log_metric`) and columns (`log_extra`), a warning, once, for a reward
that cannot move the policy, and the generation metrics of evaluation (PPO has no eval loss). Every process takes part
in the same reductions, in the same order."""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset

from ..feature_cache import cache_features_for_training
from .model_wrappers import unwrap_tippo
from .ppo_math import masked_global_mean_std
from .step_metrics import StepMetrics


class PPOLoggingMixin:
    """The logging and evaluation of [`PPOTrainer`]."""

    def _init_logging(self) -> None:
        self._metrics: dict[str, list[float]] = defaultdict(list)  # per iteration, already reduced: logged means
        self._step_metrics = StepMetrics()  # per step, on the device until log()
        self._reward_warnings: set[tuple[str, str]] = set()  # (reward, problem) already reported
        self._pending_reward_metrics: dict[str, list[float]] = defaultdict(list)  # from rewards' log_metric
        self.reward_extras: dict[str, list] = {}  # from rewards' log_extra: the latest rollout batch's columns

    def log_reward_metric(self, name: str, value: float) -> None:
        """`log_metric` of the reward functions (TRL's GRPO convention): logged under `name`, averaged over the
        iteration's calls and all processes."""
        self._pending_reward_metrics[name].append(float(value))

    def log_reward_extra(self, column: str, values: list) -> None:
        """`log_extra` of the reward functions: a column of per-sample values, kept in `reward_extras` for the latest
        rollout batch and shown in the evaluation's completions table."""
        self.reward_extras[column] = list(values)

    def _log_metric(self, name: str, value: torch.Tensor | float) -> None:
        """Record a per-step scalar; `log()` reports its mean over the steps since the last log and all processes."""
        self._step_metrics.add(name, value, self.accelerator.device)

    def _log_rollout_metrics(
        self, rewards: torch.Tensor, returns: torch.Tensor, advantages: torch.Tensor, rollouts: dict[str, Any]
    ) -> None:
        gather = self.accelerator.gather
        all_rewards = gather(rewards.T.contiguous()).T  # (n_funcs, global batch)
        for name, values in zip(self.reward_names, all_rewards):
            self._metrics[f"rewards/{name}/mean"].append(torch.nanmean(values).item())
            self._metrics[f"rewards/{name}/std"].append(_nanstd(values))
            self._warn_if_uninformative(name, values)
        all_returns = gather(returns)
        self._metrics["returns/mean"].append(all_returns.mean().item())
        self._metrics["returns/std"].append(all_returns.std(correction=0).item())
        mask = rollouts["completion_mask"]
        mean, std = masked_global_mean_std(advantages, mask, self.accelerator)
        self._metrics["advantages/mean"].append(mean)
        self._metrics["advantages/std"].append(std)
        # The share of completions whose first token's advantage is negative: ~1/2 when advantages carry no position bias.
        self._metrics["advantages/first_token_negative"].append(gather((advantages[:, 0] < 0).float()).mean().item())
        lengths = gather(rollouts.get("sampled_mask", mask).sum(1).float())
        self._metrics["completions/mean_length"].append(lengths.mean().item())
        terminated = gather((rollouts["completion_ids"] == self.eos_token_id).any(1).float())
        self._metrics["completions/clipped_ratio"].append(1.0 - terminated.mean().item())
        self._metrics["iteration"].append(float(self.iteration))
        self._flush_reward_metrics()
        if self.args.log_completions:  # this process's rows of the latest rollout batch, for the next log()
            self._latest_completions = {
                "prompt": list(rollouts["prompts"]),
                "completion": list(rollouts["completions"]),
                "reference": list(rollouts["columns"].get("reference", [""] * len(returns))),
                **{name: values.tolist() for name, values in zip(self.reward_names, rewards)},
                "advantage": advantages[:, 0].tolist(),
            }

    def _log_completions(self) -> None:
        """`log_completions`: the latest rollout batch's rows from every process — a console table of
        `num_completions_to_print` rows (TRL's), a wandb table and TensorBoard text where reported to, and every row
        appended to `output_dir/completions.jsonl` with its step."""
        latest, self._latest_completions = getattr(self, "_latest_completions", None), None  # each row once
        gathered = gather_object([latest])
        if not self.accelerator.is_main_process or not any(gathered):
            return
        table = {key: [value for part in gathered if part for value in part[key]] for key in gathered[0]}
        step = self.state.global_step
        with open(Path(self.args.output_dir) / "completions.jsonl", "a", encoding="utf-8") as file:
            for row in zip(*table.values()):
                file.write(json.dumps({"step": step, **dict(zip(table, row))}, ensure_ascii=False) + "\n")
        shown = {key: values[: self.args.num_completions_to_print] for key, values in table.items()}
        rewards = {name: shown[name] for name in self.reward_names}
        try:
            from trl.trainer.utils import print_prompt_completions_sample

            print_prompt_completions_sample(
                shown["prompt"], shown["completion"], rewards, shown["advantage"], step,
                extra={"reference": shown["reference"]},
            )  # fmt: skip
        except ImportError:  # rich is missing: a plain line per sample
            for row in zip(*shown.values()):
                print(dict(zip(shown, row)))
        report_to = self.args.report_to or []
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                rows = [[step, *row] for row in zip(*shown.values())]
                wandb.log({"completions": wandb.Table(columns=["step", *shown], data=rows)})
        if "tensorboard" in report_to:
            writer = next((getattr(c, "tb_writer", None) for c in self.callback_handler.callbacks), None)
            if writer is not None:
                lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
                lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in zip(*shown.values())]
                writer.add_text("completions", "\n".join(lines), step)

    def _flush_reward_metrics(self) -> None:
        # Sorted names, gathered from every process: all processes take part in the same gathers, in the same order,
        # even when a reward logs a metric on some of them only.
        names = sorted({name for names in gather_object([list(self._pending_reward_metrics)]) for name in names})
        for name in names:
            values = self._pending_reward_metrics.get(name, [])
            stats = torch.tensor([sum(values), len(values)], dtype=torch.float64, device=self.accelerator.device)
            total, count = self.accelerator.reduce(stats, reduction="sum").tolist()
            if count:
                self._metrics[name].append(total / count)
        self._pending_reward_metrics.clear()

    def _warn_if_uninformative(self, name: str, values: torch.Tensor) -> None:
        """Say (once per reward and problem) when a reward cannot move the policy: None for every sample of a rollout
        batch, or the same value for all of them (its part of every advantage is then 0)."""
        finite = values[~torch.isnan(values)]
        if len(finite) == 0:
            problem, message = (
                "none",
                f"returned None for all {len(values)} samples of iteration {self.iteration}: it has no effect",
            )
        elif len(finite) > 1 and bool((finite == finite[0]).all()):
            problem, message = (
                "constant",
                (
                    f"gave all {len(finite)} samples of iteration {self.iteration} the same value ({finite[0].item():.4g}): it "
                    "adds nothing to the advantages"
                ),
            )
        else:
            return
        if (name, problem) not in self._reward_warnings and self.accelerator.is_main_process:
            self._reward_warnings.add((name, problem))
            warnings.warn(
                f"reward {name!r} {message} (said once; the rewards/{name}/* metrics show every iteration)",
                UserWarning,
                stacklevel=2,
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self.args.log_completions and "loss" in logs:  # a training step's log
            self._log_completions()
        if self.model.training:
            self._step_metrics.reduce_into(self._metrics, self.accelerator)
            for key, values in self._metrics.items():
                finite = [v for v in values if not math.isnan(v)]
                logs[key] = sum(finite) / len(finite) if finite else None
            self._metrics.clear()
        super().log(logs, start_time)

    def evaluate(
        self, eval_dataset: Dataset | None = None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Decode the eval split and log generation metrics (`eval_rouge_l`, `eval_cider`, `eval_literal`,
        `eval_rewards/<name>`): PPO has no eval loss. `metric_for_best_model` may name any of them."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError(
                "PPOTrainer.evaluate needs an eval dataset: pass eval_dataset to the trainer or to evaluate()"
            )
        if eval_dataset is not None:
            (dataset,) = cache_features_for_training(self.args, unwrap_tippo(self.model), self.processor, dataset)
        was_training = self.model.training
        self.model.eval()  # log() then keeps the training metrics for the next training log
        try:
            metrics = self.generation_metrics(dataset, metric_key_prefix)
            self.log(metrics)
        finally:
            self.model.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def _nanstd(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return finite.std(correction=0).item() if len(finite) else float("nan")
