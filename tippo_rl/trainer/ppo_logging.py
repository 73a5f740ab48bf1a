"""What PPO logs: per-iteration rollout metrics (rewards, returns, advantages, completion lengths), per-step loss
metrics, the reward plug-ins' own metrics (`log_metric`) and columns (`log_extra`), a warning, once, for a reward
that cannot move the policy, and the generation metrics of evaluation (PPO has no eval loss). Every process takes part
in the same reductions, in the same order."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
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
        lengths = gather(mask.sum(1).float())
        self._metrics["completions/mean_length"].append(lengths.mean().item())
        terminated = gather((rollouts["completion_ids"] == self.eos_token_id).any(1).float())
        self._metrics["completions/clipped_ratio"].append(1.0 - terminated.mean().item())
        self._metrics["iteration"].append(float(self.iteration))
        self._flush_reward_metrics()

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
