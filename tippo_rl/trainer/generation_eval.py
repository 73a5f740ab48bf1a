"""Evaluation during training by decoding: what both TIPPo trainers (SFT and PPO) log at each `eval_strategy` step.

The eval split (its first `eval_max_samples` rows) is decoded greedily, or with `eval_generation_kwargs`, and scored
with the project's metric code (`tippo_rl.evaluation.compute_metrics`: pycocoevalcap's ROUGE-L and CIDEr-D) and the
literal reward of Eq. 7. The metrics are logged as `eval_rouge_l`, `eval_cider`, `eval_literal` — on the 0–1 scale
pycocoevalcap and the rewards give (CIDEr-D about 0–10): tippo_rl logs and saves every score so, and only the markdown
tables of `report.md` / `ablation.md` print them ×100, as papers do — (and, for a PPO
trainer, `eval_rewards/<name>` of each reward plug-in on the greedy decode and `eval_sampled_rewards/<name>` on a
decode sampled as the rollouts are: whether RL improves what is evaluated, or only what it samples), so
`metric_for_best_model: eval_rouge_l` with `load_best_model_at_end` keeps the best greedy checkpoint. A few samples (title, completion, reference, rewards) go to the console (TRL's
`print_prompt_completions_sample`) and, with `report_to: wandb`, to a wandb table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.models import unwrap_model_for_generation

from ..evaluation import TOKENIZE_MODES, compute_metrics
from ..generation import generate_kwargs, generate_predictions
from ..rewards import literal_reward, score_rewards


logger = logging.getLogger(__name__)


@dataclass
class GenerationEvalArguments:
    """Fields shared by [`TIPPoSFTConfig`] and [`PPOConfig`]: how evaluation during training decodes and scores."""

    eval_max_samples: int | None = field(
        default=64,
        metadata={
            "help": "Decode at most this many eval rows at each evaluation during training (the first ones; None: all). Keeps evaluation cheap on a CPU. Not max_eval_samples, which keeps the first rows of the eval split for the whole run (the eval loss too); in recipes/evaluate.py, which has only that one, --eval_max_samples means max_eval_samples."
        },
    )
    eval_generation_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": '`generate()` options of the evaluation decode, e.g. {"num_beams": 4}. Default: greedy.'},
    )
    eval_tokenize: str = field(
        default="none",
        metadata={
            "help": "What ROUGE-L and CIDEr see as words: `none` (whitespace), `char`, `jieba` or `ptb` (needs Java; what recipes/evaluate.py uses for the demo)."
        },
    )
    eval_log_completions: int = field(
        default=4,
        metadata={
            "help": "Sample completions shown at each evaluation (console, and a wandb table with report_to wandb); 0: none."
        },
    )

    def _check_generation_eval_fields(self) -> None:
        if isinstance(self.eval_generation_kwargs, str):
            try:
                self.eval_generation_kwargs = json.loads(self.eval_generation_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"eval_generation_kwargs must be a JSON object, got {self.eval_generation_kwargs!r}: {error}"
                ) from error
        if self.eval_max_samples is not None and self.eval_max_samples < 1:
            raise ValueError(f"eval_max_samples must be ≥ 1 or None (all rows), got {self.eval_max_samples}")
        if self.eval_tokenize not in TOKENIZE_MODES:
            raise ValueError(f"eval_tokenize must be one of {', '.join(TOKENIZE_MODES)}, got {self.eval_tokenize!r}")
        if self.eval_log_completions < 0:
            raise ValueError(f"eval_log_completions must be ≥ 0, got {self.eval_log_completions}")


class GenerationEvalMixin:
    """`generation_metrics()` for a Trainer with `args` ([`GenerationEvalArguments`]), `processor` and `accelerator`.
    A trainer with `reward_funcs` / `reward_names` (PPO) also scores the completions with its rewards."""

    default_eval_generation_kwargs: dict[str, Any] = {}

    def generation_metrics(self, dataset, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Decode `dataset` (its first `eval_max_samples` rows) and score it: `{prefix_rouge_l, prefix_cider,
        prefix_literal, prefix_rewards/<name>...}`. Every process decodes the same rows, so every process holds the
        same metrics (what best-checkpoint selection compares)."""
        args = self.args
        if args.eval_max_samples is not None and len(dataset) > args.eval_max_samples:
            dataset = dataset.select(range(args.eval_max_samples))
        kwargs = generate_kwargs(
            {**self.default_eval_generation_kwargs, **(args.eval_generation_kwargs or {})},
            do_sample=False,
            num_beams=1,
        )
        reward_funcs = getattr(self, "reward_funcs", None)
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            policy = self._policy(unwrapped)
            decode = dict(
                batch_size=args.per_device_eval_batch_size,
                progress=not args.disable_tqdm and self.accelerator.is_main_process,
            )
            predictions = generate_predictions(policy, self.processor, dataset, **decode, **kwargs)
            # A PPO trainer optimises its sampled rollouts while evaluation decodes greedily, and the two can move
            # apart: the rollout decode of the same rows is scored too (`<prefix>_sampled_rewards/<name>`).
            sampled = (
                generate_predictions(
                    policy, self.processor, dataset, **decode, generation_config=self.generation_config
                )
                if reward_funcs
                else None
            )
        ids, titles, references = dataset["id"], dataset["title"], dataset["reference"]
        completions = [predictions[row_id] for row_id in ids]
        all_references = dict(zip(ids, dataset["references"]))
        result = compute_metrics(
            predictions,
            all_references,
            metrics=["rouge_l", "cider"],
            tokenize=args.eval_tokenize,
            lang="en" if args.eval_tokenize == "ptb" else "zh",  # lang only rules out ptb for Chinese here
            issue_warnings=False,  # an empty completion scores 0, as it should
        )
        literal = literal_reward(completions, references)
        metrics = {
            f"{metric_key_prefix}_rouge_l": result.corpus["ROUGE-L"],
            f"{metric_key_prefix}_cider": result.corpus["CIDEr"],
            f"{metric_key_prefix}_literal": sum(literal) / len(literal),
        }
        rewards = {"literal": literal}
        extras: dict[str, list] = {}  # columns the rewards add with log_extra, shown in the completions table
        if reward_funcs:
            columns = {
                name: list(dataset[name])
                for name in dataset.column_names
                if name not in ("image_features", "title_features")
            }
            for key, texts in (("rewards", completions), ("sampled_rewards", [sampled[i] for i in ids])):
                scores, _ = score_rewards(
                    reward_funcs,
                    prompts=list(titles),
                    completions=self.reward_completions(texts),
                    columns=columns,
                    trainer_state=self.state,
                    log_metric=lambda name, value: None,
                    log_extra=extras.__setitem__ if key == "rewards" else lambda name, value: None,
                )
                for name, values in zip(self.reward_names, scores):
                    if key == "rewards":
                        rewards[name] = values.tolist()
                    metrics[f"{metric_key_prefix}_{key}/{name}"] = torch.nanmean(values).item()
        self.eval_completions = {
            "title": list(titles),
            "completion": completions,
            "reference": list(references),
            **rewards,
        }
        self.eval_extra_columns = [column for column in extras if column not in self.eval_completions]
        self.eval_completions.update({column: list(extras[column]) for column in self.eval_extra_columns})
        self._log_completions_table()
        return metrics

    def _log_completions_table(self) -> None:
        n = self.args.eval_log_completions
        if not n or not self.accelerator.is_main_process:
            return
        table = {key: values[:n] for key, values in self.eval_completions.items()}
        extra_columns = ["reference", *getattr(self, "eval_extra_columns", [])]
        rewards = {key: values for key, values in table.items() if key not in ("title", "completion", *extra_columns)}
        try:
            from trl.trainer.utils import print_prompt_completions_sample

            print_prompt_completions_sample(
                table["title"],
                table["completion"],
                rewards,
                None,
                self.state.global_step,
                extra={key: table[key] for key in extra_columns},
            )
        except ImportError:  # rich is missing: a plain log line per sample
            for row in zip(*table.values()):
                logger.info("eval sample: %s", dict(zip(table, row)))
        if "wandb" in (self.args.report_to or []):
            import wandb

            if wandb.run is not None:
                columns = ["step", *table]
                rows = [[self.state.global_step, *row] for row in zip(*table.values())]
                wandb.log({"eval_completions": wandb.Table(columns=columns, data=rows)})
