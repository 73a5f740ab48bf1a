"""PPO for TIPPo on `transformers.Trainer`, laid out like TRL's `GRPOTrainer`.

The Trainer's dataloader yields a *rollout batch* (`per_device_train_batch_size · steps_per_generation` samples per
process, each repeated for every minibatch it will feed); `_prepare_inputs` turns it into rollouts once per PPO
iteration and hands out one minibatch per forward/backward pass; `compute_loss` is PPO's loss. Optimizer,
schedule, gradient accumulation and clipping, logging, checkpoints, DDP/DeepSpeed and PEFT are the Trainer's.

The algorithm's steps are methods, so a variant overrides one step (PolishPPO overrides `compute_returns`):

    generate_rollouts → score_rollouts → compute_returns → compute_rollout_log_probs (old, reference, values)
    → compute_advantages → build_loss_batch → whiten_advantages → num_ppo_epochs × minibatches of compute_loss

`compute_advantages` is GAE on a value head, or, without one, the sequence return minus a baseline
(`advantage_baseline`: the running normalisation of Eq. 6, the per-prompt group mean/std of GRPO, RLOO's leave-one-out
mean, or SCST's greedy decode), over `num_generations` completions per prompt.

The equations are in `ppo_math` (one line each, numbered); equation numbers marked "PPO" refer to Schulman et al. 2017
(arXiv:1707.06347).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate.utils import gather_object, is_peft_model, set_seed
from datasets import Dataset
from torch import nn
from transformers import GenerationConfig, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ProgressCallback
from trl.models import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from ..checkpoints import PPO_STATE_NAME, CheckpointError, read_ppo_state, redacted
from ..data import MODEL_INPUT_NAMES, check_dataset_columns, model_inputs
from ..feature_cache import cache_features_for_training
from ..modeling_tippo import TIPPoModel
from ..processing_tippo import TIPPoProcessor
from ..rewards import load_reward, reward_name, score_rewards
from .callbacks import IterationProgressCallback
from .daa_schedule import daa_lambda1_at
from .generation_eval import GenerationEvalMixin
from .model_wrappers import unwrap_tippo
from .ppo_config import PPOConfig
from .ppo_math import (
    ReturnStatistics,
    clipped_surrogate_loss,
    clipped_value_loss,
    completion_mask,
    generalized_advantage_estimation,
    greedy_baseline_advantages,
    group_advantages,
    kl_penalty,
    leave_one_out_advantages,
    masked_global_mean_std,
    masked_mean,
)
from .rollout_batches import EpochSeededRepeatSampler, PPODataCollator
from .saving import TIPPoSavingMixin
from .step_metrics import StepMetrics
from .value_head import PolicyAndValueModel


logger = logging.getLogger(__name__)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of `model` to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


# ----------------------------------------------------------------------------------------------------- the trainer


class PPOTrainer(GenerationEvalMixin, TIPPoSavingMixin, Trainer):
    """Proximal Policy Optimization of a [`TIPPoModel`] (title + images → text) with reward plug-ins.

    Standard PPO by default (value head, GAE, clipped value loss); `use_value_head=False` uses the sequence return
    minus `advantage_baseline` (none, running Eq. 6, group, leave-one-out, greedy; over `num_generations` completions
    per prompt) as every token's advantage. Subclasses change one step by overriding one method: `generate_rollouts`,
    `score_rollouts`, `compute_returns`, `compute_advantages`, `baseline_advantages`, `build_loss_batch`,
    `whiten_advantages` or `compute_loss` ([`PolishPPOTrainer`] overrides `compute_returns`).

    Args:
        model: the starting policy, a `TIPPoModel` (e.g. the SFT output) or a PEFT-wrapped one. With PEFT the reference
            policy is the same model with its adapters disabled; otherwise a frozen copy.
        args: [`PPOConfig`].
        processor: the model's [`TIPPoProcessor`] (decodes completions; saved with every checkpoint).
        train_dataset: a TIPPo dataset (`tippo_rl.data.load_artmuse`, `load_coco_captions`): its `reference`,
            `title`, `images` and other columns reach the reward plug-ins.
        reward_funcs: reward plug-ins (callables, or specs for `tippo_rl.rewards.load_reward`). Default:
            `args.reward_funcs`.
        eval_dataset: a TIPPo dataset decoded at each `eval_strategy` step (`eval_rouge_l`, `eval_cider`,
            `eval_literal`; see `generation_eval`).
        callbacks, optimizers: as for `transformers.Trainer`.
    """

    _tag_names = ["trl", "ppo", "tippo", "multimodal"]
    _stage = "PPO"  # for the model card
    # compute_loss returns a per-minibatch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: TIPPoModel,
        args: PPOConfig,
        processor: TIPPoProcessor,
        train_dataset: Dataset,
        reward_funcs: Sequence[Callable | str] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        eval_dataset: Dataset | None = None,
    ):
        self.processor = processor
        args.remove_unused_columns = False  # reward plug-ins receive every dataset column: none is "unused"
        tippo = unwrap_tippo(model)
        if args.disable_dropout:
            disable_dropout(model)

        # Rewards
        reward_funcs = list(reward_funcs) if reward_funcs is not None else list(args.reward_funcs or [])
        if not reward_funcs:
            raise ValueError("PPOTrainer needs at least one reward: set reward_funcs (e.g. ['literal'])")
        init_kwargs = args.reward_init_kwargs or {}
        self.reward_funcs = [
            load_reward(spec, **init_kwargs.get(spec, {})) if isinstance(spec, str) else load_reward(spec)
            for spec in reward_funcs
        ]
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        weights = args.reward_weights if args.reward_weights is not None else [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(weights)} values for {len(self.reward_funcs)} reward functions")
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)

        policy = model
        if args.use_value_head:
            model = PolicyAndValueModel(policy, tippo.config.hidden_size)

        check_dataset_columns(train_dataset, "train_dataset", require_reference=False)  # a reward may not need one
        if eval_dataset is not None:
            check_dataset_columns(eval_dataset, "eval_dataset")  # decoded and compared with its references
        train_dataset, eval_dataset = cache_features_for_training(args, tippo, processor, train_dataset, eval_dataset)

        super().__init__(
            model=model,
            args=args,
            data_collator=PPODataCollator(processor),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processor,
            callbacks=callbacks,
            optimizers=optimizers,
        )

        if any(isinstance(callback, ProgressCallback) for callback in self.callback_handler.callbacks):
            self.remove_callback(ProgressCallback)
            self.add_callback(
                IterationProgressCallback(args.minibatches_per_iteration / args.gradient_accumulation_steps)
            )

        # Reference policy: the starting policy, frozen. PEFT: the same model with its adapters disabled.
        self.ref_model = None
        if args.kl_coef > 0 and not is_peft_model(policy):
            # φ is frozen and the same in both: share it rather than copy it (not under DeepSpeed, which shards it).
            share = tippo.config.freeze_encoder and not self.is_deepspeed_enabled
            self.ref_model = copy.deepcopy(policy, memo={id(tippo.encoder): tippo.encoder} if share else None)
            self.ref_model.eval().requires_grad_(False)
            if self.is_deepspeed_enabled:
                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        self.reward_weights = self.reward_weights.to(self.accelerator.device)

        self.eos_token_id = tippo.config.eos_token_id
        self.pad_token_id = tippo.config.pad_token_id
        self.decoder_start_token_id = tippo.config.decoder_start_token_id
        self.generation_config = GenerationConfig(
            do_sample=True,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            use_cache=True,
            **(args.generation_kwargs or {}),
        )
        # SCST's baseline and the evaluation decode: greedy, as long as the rollouts.
        self.greedy_generation_config = copy.deepcopy(self.generation_config)
        self.greedy_generation_config.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        self.default_eval_generation_kwargs = {"max_new_tokens": args.max_new_tokens}
        self.return_statistics = ReturnStatistics(args.advantage_window)  # μ_m, δ_m of the `running` baseline
        self.starting_daa_lambda1 = float(tippo.daa_lambda1.item())  # what `daa_lambda_schedule: hold` keeps

        # Processes sample different completions (the Trainer seeded them all alike); RNG states are checkpointed per process.
        set_seed(args.seed, device_specific=True)

        self._step = 0  # minibatches (forward + backward passes) so far; restored on resume
        self.iteration = 0  # m: PPO iterations (rollout batches) started so far; restored on resume
        self._rollout_batch: dict[str, torch.Tensor] | None = None
        self._minibatches: list[dict[str, torch.Tensor]] | None = None
        self._metrics: dict[str, list[float]] = defaultdict(list)  # per iteration, already reduced: logged means
        self._step_metrics = StepMetrics()  # per step, on the device until log()
        self._reward_warnings: set[tuple[str, str]] = set()  # (reward, problem) already reported
        self._pending_reward_metrics: dict[str, list[float]] = defaultdict(list)  # from rewards' log_metric
        self.reward_extras: dict[str, list] = {}  # from rewards' log_extra: the latest rollout batch's columns

    # -- data ---------------------------------------------------------------------------------------------------------

    def get_train_dataloader(self):
        # One dataloader batch is a rollout batch, repeated once per minibatch it feeds (see rollout_sampler).
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=self.rollout_sampler,
            is_training=True,
        )

    def rollout_sampler(self, dataset: Dataset | None = None) -> EpochSeededRepeatSampler:
        """The order of the training rows: rollout batches of `generation_batch_size / k` prompts, each k times in a row.

        Each rollout batch (global: generation_batch_size completions) comes minibatches_per_iteration times in a row,
        so the Trainer's step and epoch counting, and skipping on resume, stay right. Every process's share is a
        multiple of k consecutive rows: whole groups. Its order depends on the epoch, not on how many passes this
        process has drawn, so a resumed run sees the same order."""
        return EpochSeededRepeatSampler(
            data_source=dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=self.args.num_generations,
            batch_size=self.args.generation_batch_size // self.args.num_generations,
            repeat_count=self.args.minibatches_per_iteration,
            shuffle=True,
            seed=self.args.seed,
        )

    @property
    def total_iterations(self) -> int:
        """M: the PPO iterations of this run (from the Trainer's `max_steps`)."""
        minibatches = self.state.max_steps * self.args.gradient_accumulation_steps
        return max(math.ceil(minibatches / self.args.minibatches_per_iteration), 1)

    def _policy(self, model: nn.Module) -> nn.Module:
        """The policy inside an (unwrapped) training model: itself, or the policy of a `PolicyAndValueModel`."""
        return model.policy if isinstance(model, PolicyAndValueModel) else model

    # -- one PPO iteration ----------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step += 1
        return loss

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Sample and score a rollout batch at the start of each iteration; return this step's minibatch."""
        steps = self.args.steps_per_generation
        if self._step % self.args.minibatches_per_iteration == 0 or self._rollout_batch is None:
            if self._step % self.args.minibatches_per_iteration != 0:
                logger.warning(
                    "resumed in the middle of PPO iteration %d: its rollouts were not checkpointed, so they are "
                    "sampled again (checkpoint on iteration boundaries to avoid this)",
                    self.iteration,
                )
            self._rollout_batch = self.make_rollout_batch(super()._prepare_inputs(generation_batch))
        if self._step % steps == 0 or self._minibatches is None:
            # A new pass over the rollout batch: reshuffle it into minibatches.
            size = len(self._rollout_batch["completion_ids"])
            order = torch.randperm(size, device=self._rollout_batch["completion_ids"].device)
            self._minibatches = [
                {key: value[chunk] for key, value in self._rollout_batch.items()} for chunk in order.chunk(steps)
            ]
        return self._minibatches[self._step % steps]

    @torch.no_grad()
    def make_rollout_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One iteration's experience: generate, score, returns, log-probs, advantages, the loss batch (advantages
        whitened if `whiten_advantages`). Returns the tensors the loss needs, each `(local rollout batch, ...)`."""
        self._update_daa_lambda1()
        rollouts = self.generate_rollouts(batch)
        rewards = self.score_rollouts(rollouts)  # (n_funcs, batch)
        returns = self.compute_returns(rewards, rollouts)  # (batch,)
        if self.args.use_value_head and self.args.value_head_init == "mean_return" and self.iteration == 0:
            # V ≡ E[R] before the first values are computed (all processes' returns: every process sets the same c).
            self.accelerator.unwrap_model(self.model).value_head.offset.fill_(
                self.accelerator.gather(returns).mean().item()
            )
        if self.args.advantage_baseline == "greedy":
            rollouts["greedy_returns"] = self.greedy_baseline_returns(rollouts)  # (batch / k,)
        with self.compute_loss_context_manager():  # the same autocast as the loss: ratio 1 before the first update
            rollouts.update(self.compute_rollout_log_probs(rollouts))
        advantages = self.compute_advantages(returns, rollouts)  # (batch, T)
        loss_batch = self.build_loss_batch(rollouts, advantages)
        if self.args.whiten_advantages:
            loss_batch["advantages"] = self.whiten_advantages(loss_batch["advantages"], rollouts["completion_mask"])
        self._log_rollout_metrics(rewards, returns, loss_batch["advantages"], rollouts)
        self.iteration += 1
        return loss_batch

    def generate_rollouts(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Sample one completion per row with the current policy (batched `generate()` with its KV cache); a prompt's k
        rows (`num_generations`) are consecutive, so its k completions are too.

        Args:
            batch: the collated rollout batch: model inputs and `columns` (lists of raw dataset values).
        Returns:
            A dict with `model_inputs` (φ's features, computed here once when the batch holds pixels and φ is frozen),
            `completion_ids` `(batch, T)` (the decoder start token stripped, pad after EOS), `completion_mask`
            `(batch, T)`, `completions` (decoded texts), `prompts` (the titles) and `columns`.
        """
        return self._decode(model_inputs(batch), batch["columns"], self.generation_config)

    def greedy_baseline_returns(self, rollouts: dict[str, Any]) -> torch.Tensor:
        """SCST's baseline, in the rollout phase without gradients: the return of the current policy's greedy decode
        of each prompt (the first of its k rows), scored like the rollouts. Returns `(batch / k,)`."""
        k = self.args.num_generations
        inputs = {key: value[::k] for key, value in rollouts["model_inputs"].items()}
        columns = {name: values[::k] for name, values in rollouts["columns"].items()}
        greedy = self._decode(inputs, columns, self.greedy_generation_config)
        greedy_rewards = self.score_rollouts(greedy)
        self._metrics["baseline/greedy_reward_mean"].append(
            self.accelerator.gather(greedy_rewards.T.contiguous()).nanmean().item()
        )
        return self.compute_returns(greedy_rewards, greedy)

    def _decode(
        self, inputs: dict[str, torch.Tensor], columns: dict[str, list], generation_config: GenerationConfig
    ) -> dict[str, Any]:
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
        ) as unwrapped:
            policy = self._policy(unwrapped)
            tippo = unwrap_tippo(policy)
            if "pixel_values" in inputs and tippo.config.freeze_encoder:
                # φ is frozen: encode the images and titles once for every pass over this rollout batch.
                image_features, title_features = tippo.encode_frozen_features(
                    inputs["pixel_values"],
                    inputs["image_mask"],
                    inputs["title_input_ids"],
                    inputs["title_attention_mask"],
                )
                prompt = {
                    name: inputs[name] for name in ("prompt_input_ids", "prompt_attention_mask") if name in inputs
                }
                inputs = {
                    "image_features": image_features,
                    "image_mask": inputs["image_mask"],
                    "title_features": title_features,
                    **prompt,
                }
            sequences = policy.generate(**inputs, generation_config=generation_config)
        # T5's sequences start with the decoder start token; a causal decoder's are the completion alone.
        completion_ids = sequences[:, 1:] if tippo.config.is_encoder_decoder else sequences
        mask = completion_mask(completion_ids, self.eos_token_id)
        completion_ids = completion_ids.masked_fill(mask == 0, self.pad_token_id)
        return {
            "model_inputs": inputs,
            "completion_ids": completion_ids,
            "completion_mask": mask,
            "completions": self.processor.batch_decode(completion_ids),
            "prompts": columns.get("title", [""] * len(completion_ids)),
            "columns": columns,
        }

    def score_rollouts(self, rollouts: dict[str, Any]) -> torch.Tensor:
        """Call every reward plug-in as TRL does (`prompts`=titles, `completions`=texts, `completion_ids`, every dataset
        column, `trainer_state`). Returns the raw (unweighted) rewards `(n_funcs, batch)`, NaN where a plug-in
        returned None."""
        ids = [
            row[row_mask.bool()].tolist()
            for row, row_mask in zip(rollouts["completion_ids"], rollouts["completion_mask"])
        ]
        rewards, _ = score_rewards(
            self.reward_funcs,
            prompts=rollouts["prompts"],
            completions=self.reward_completions(rollouts["completions"]),
            columns=rollouts["columns"],
            trainer_state=self.state,
            completion_ids=ids,
            log_metric=self.log_reward_metric,
            log_extra=self.log_reward_extra,
        )
        return rewards.to(self.accelerator.device)

    def reward_completions(self, completions: list[str]) -> list[Any]:
        """The completions as reward functions receive them (`reward_completions_format`): strings, or TRL's chat form."""
        if self.args.reward_completions_format == "conversational":
            return [[{"role": "assistant", "content": text}] for text in completions]
        return completions

    def log_reward_metric(self, name: str, value: float) -> None:
        """`log_metric` of the reward functions (TRL's GRPO convention): logged under `name`, averaged over the
        iteration's calls and all processes."""
        self._pending_reward_metrics[name].append(float(value))

    def log_reward_extra(self, column: str, values: list) -> None:
        """`log_extra` of the reward functions: a column of per-sample values, kept in `reward_extras` for the latest
        rollout batch and shown in the evaluation's completions table."""
        self.reward_extras[column] = list(values)

    def compute_returns(self, rewards: torch.Tensor, rollouts: dict[str, Any]) -> torch.Tensor:
        """The sequence return R = Σ_i w_i·r_i (NaN rewards skipped): `(n_funcs, batch)` → `(batch,)`."""
        return torch.nansum(self.reward_weights[:, None] * rewards, dim=0)

    def compute_rollout_log_probs(self, rollouts: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Once per iteration, without gradients: the sampled tokens' log-probs under the rollout policy (`old_logps`)
        and the reference policy (`ref_logps`, when β > 0), and the value estimates (`old_values`, with a value head).
        Each `(batch, T)`."""
        chunk = self.args.per_device_train_batch_size
        inputs, ids = rollouts["model_inputs"], rollouts["completion_ids"]
        outputs = defaultdict(list)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        for start in range(0, len(ids), chunk):
            part = {key: value[start : start + chunk] for key, value in inputs.items()}
            part_ids = ids[start : start + chunk]
            logps, _, values = self._forward(model, part, part_ids)
            outputs["old_logps"].append(logps)
            if values is not None:
                outputs["old_values"].append(values)
            if self.args.kl_coef > 0:
                outputs["ref_logps"].append(self._reference_log_probs(model, part, part_ids))
        return {key: torch.cat(value) for key, value in outputs.items()}

    def _reference_log_probs(self, model: nn.Module, inputs: dict, completion_ids: torch.Tensor) -> torch.Tensor:
        if self.ref_model is not None:
            return self._forward(self.ref_model, inputs, completion_ids)[0]
        with self._policy(model).disable_adapter():  # PEFT: the base model is the starting policy
            return self._forward(self._policy(model), inputs, completion_ids)[0]

    def compute_advantages(self, returns: torch.Tensor, rollouts: dict[str, Any]) -> torch.Tensor:
        """Per-token advantages `(batch, T)`: GAE on the value head's estimates with the sequence return as the reward
        of the last token; without a value head, the return minus `advantage_baseline` (`baseline_advantages`) on
        every token."""
        mask = rollouts["completion_mask"]
        if not self.args.use_value_head:
            return self.baseline_advantages(returns, rollouts)[:, None] * mask  # the sequence's Â on every token
        last = mask.sum(1) - 1
        token_rewards = torch.zeros_like(rollouts["old_values"])
        token_rewards[torch.arange(len(last), device=last.device), last] = returns  # r_T = R, r_t = 0 before
        return generalized_advantage_estimation(
            token_rewards, rollouts["old_values"], mask, self.args.gamma, self.args.lam
        )

    def baseline_advantages(self, returns: torch.Tensor, rollouts: dict[str, Any]) -> torch.Tensor:
        """The sequence advantage Â `(batch,)` of each completion: its return G `(batch,)` against
        `advantage_baseline`. Groups are the k consecutive completions of one prompt, all on this process."""
        baseline, k, epsilon = self.args.advantage_baseline, self.args.num_generations, self.args.advantage_epsilon
        if baseline == "group":
            return group_advantages(returns, k, epsilon)
        if baseline == "leave_one_out":
            return leave_one_out_advantages(returns, k)
        if baseline == "greedy":
            return greedy_baseline_advantages(returns, rollouts["greedy_returns"], k)
        if baseline == "running":
            self.return_statistics.update(self.accelerator.gather(returns))  # the last W iterations, current included
            mu, delta = self.return_statistics.mean, self.return_statistics.std  # μ_m, δ_m
            if self.args.advantage_scale == "variance":
                delta = delta**2  # δ_m as the paper's text words it
            self._metrics["baseline/mu"].append(mu)
            self._metrics["baseline/delta"].append(delta)
            return (returns - mu) / (delta + epsilon)  # Eq. 6
        return returns  # `none`: with whiten_advantages, the batch mean is the baseline

    def _update_daa_lambda1(self) -> None:
        """λ1 of Eq. 2 for this iteration (`daa_lambda_schedule`), through the progress hook SFT uses too; logged."""
        tippo = unwrap_tippo(self.accelerator.unwrap_model(self.model))
        value = daa_lambda1_at(
            self.args.daa_lambda_schedule, self.iteration / self.total_iterations, self.starting_daa_lambda1
        )
        if self.args.daa_lambda_schedule != "hold":
            tippo.set_daa_lambda1(value)
        self._metrics["daa/lambda1"].append(float(tippo.daa_lambda1.item()))

    def build_loss_batch(self, rollouts: dict[str, Any], advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors `compute_loss` reads, each `(local rollout batch, ...)`: the model inputs, `completion_ids`,
        `completion_mask`, `old_logps` (and `ref_logps` when β > 0), with a value head `old_values` and the value
        targets R_t = Â_t + V(s_t) (from the advantages before whitening), and `advantages` `(batch, T)`."""
        mask = rollouts["completion_mask"]
        loss_batch = {
            **rollouts["model_inputs"],
            "completion_ids": rollouts["completion_ids"],
            "completion_mask": mask,
            "old_logps": rollouts["old_logps"],
        }
        if "ref_logps" in rollouts:
            loss_batch["ref_logps"] = rollouts["ref_logps"]
        if self.args.use_value_head:
            loss_batch["old_values"] = rollouts["old_values"]
            loss_batch["value_targets"] = (advantages + rollouts["old_values"]) * mask  # R_t = Â_t + V(s_t)
        loss_batch["advantages"] = advantages
        return loss_batch

    def whiten_advantages(self, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(Â − mean) / std over the completion tokens of the whole rollout batch, all processes (`whiten_advantages`).
        `advantages`, `mask`: `(batch, T)`."""
        mean, std = masked_global_mean_std(advantages, mask, self.accelerator)
        return (advantages - mean) / (std + 1e-8) * mask

    # -- the loss ---------------------------------------------------------------------------------------------------

    def _forward(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Teacher-forced pass over the completions: (log-probs `(batch, T)` at the sampling temperature, fp32 logits
        `(batch, T, V)` before the temperature, values `(batch, T)` or None). `model` may be a `PolicyAndValueModel` (or one wrapped by DDP)."""
        start = completion_ids.new_full((len(completion_ids), 1), self.decoder_start_token_id)
        # T5's shift-right of the labels; a causal TIPPo model reads columns 1… after its prompt (see `_causal_forward`).
        decoder_input_ids = torch.cat([start, completion_ids[:, :-1]], dim=1)
        outputs = model(**inputs, decoder_input_ids=decoder_input_ids)
        values = None
        if isinstance(outputs, tuple):  # PolicyAndValueModel
            outputs, values = outputs
        logits = outputs.logits.float()  # fp32 log-probs: ratios π_θ/π_old of bf16 log-probs are noisy
        # TRL's: log π(token) row by row (fused on GPUs with Triton), never a full (batch, T, V) log-softmax.
        logps = selective_log_softmax(logits, completion_ids, temperature=self.args.temperature)
        return logps, logits, values

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """PPO loss of one minibatch: clipped surrogate + β·KL(π_θ ‖ π_ref) + vf_coef·clipped value loss (only the last
        during the critic warm-up, `value_warmup_iterations`)."""
        if return_outputs:
            raise ValueError("PPOTrainer.compute_loss does not return model outputs")
        mask = inputs["completion_mask"]
        forward_inputs = {key: inputs[key] for key in inputs if key in MODEL_INPUT_NAMES}
        # Critic warm-up: iteration m < value_warmup_iterations updates only the value head (self.iteration = m + 1).
        warmup = self.args.use_value_head and self.iteration <= self.args.value_warmup_iterations
        if self.args.use_value_head:
            self.accelerator.unwrap_model(model).value_only = warmup
        logps, logits, values = self._forward(model, forward_inputs, inputs["completion_ids"])

        policy_loss, clip_fraction, ratio = clipped_surrogate_loss(
            logps, inputs["old_logps"], inputs["advantages"], mask, self.args.cliprange
        )
        loss = policy_loss
        if self.args.kl_coef > 0:
            kl = masked_mean(kl_penalty(logps, inputs["ref_logps"], self.args.kl_estimator), mask)
            loss = loss + self.args.kl_coef * kl  # + β·KL
            self._log_metric("kl", kl)
        if self.args.use_value_head:
            value_loss, value_clip_fraction = clipped_value_loss(
                values, inputs["old_values"], inputs["value_targets"], mask, self.args.cliprange_value
            )
            if warmup:
                # The policy's terms × 0 rather than dropped: every policy weight stays in the graph (DDP) with a zero
                # gradient, so Adam does not move it (its moments stay 0).
                loss = 0.0 * loss
            loss = loss + self.args.vf_coef * value_loss  # + c_1·L^VF, PPO Eq. 9
            self._log_metric("value/warmup", float(warmup))
            self._log_metric("loss/value", value_loss)
            self._log_metric("value/clip_fraction", value_clip_fraction)
        with torch.no_grad():
            self._log_metric("loss/policy", policy_loss)
            self._log_metric("policy/clip_fraction", clip_fraction)
            self._log_metric("policy/ratio_mean", masked_mean(ratio, mask))
            sampling_logits = logits if self.args.temperature == 1.0 else logits / self.args.temperature
            self._log_metric("entropy", masked_mean(entropy_from_logits(sampling_logits), mask))  # TRL's: in chunks
        return loss

    # -- logging ----------------------------------------------------------------------------------------------------

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

    # -- evaluation -------------------------------------------------------------------------------------------------

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

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def ppo_state(self) -> dict[str, Any]:
        """What a checkpoint must hold beyond the Trainer's own state to resume exactly (JSON-serialisable), and the
        iteration layout it was written with."""
        return {
            "step": self._step,
            "iteration": self.iteration,
            "steps_per_generation": self.args.steps_per_generation,
            "num_ppo_epochs": self.args.num_ppo_epochs,
            "num_generations": self.args.num_generations,
            "total_iterations": self.total_iterations,
            "return_statistics": self.return_statistics.state_dict(),
        }

    def load_ppo_state(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        self.iteration = state["iteration"]
        if (
            "return_statistics" in state
        ):  # absent in checkpoints of runs without the running baseline, before it existed
            self.return_statistics.load_state_dict(state["return_statistics"])

    def _save_checkpoint(self, model, trial):
        self.create_model_card()
        super()._save_checkpoint(model, trial)  # atomic; ppo_state.json goes in through _save_checkpoint_extras

    def _save_checkpoint_extras(self, folder):
        with open(os.path.join(folder, PPO_STATE_NAME), "w") as f:
            json.dump(self.ppo_state(), f, indent=2)

    def _check_resume(self, checkpoint: str, state: dict) -> None:
        ppo_state = read_ppo_state(checkpoint)
        for name in ("steps_per_generation", "num_ppo_epochs"):
            if ppo_state.get(name) not in (None, getattr(self.args, name)):
                raise CheckpointError(
                    f"'{checkpoint}' was written with {name} {ppo_state[name]}, this run has {getattr(self.args, name)}: "
                    f"its steps no longer fall on PPO iterations; resume with --{name} {ppo_state[name]}"
                )
        super()._check_resume(checkpoint, state)

    def _restore_state(self, checkpoint: str) -> None:
        self.load_ppo_state(read_ppo_state(checkpoint))
        self._rollout_batch = self._minibatches = None

    def _save(self, output_dir: str | None = None, state_dict=None):
        """With a value head, what the Trainer saves of a model, through the wrapper's own `save_pretrained` (the policy
        as a loadable TIPPo model or PEFT adapter, and `value_head.safetensors`), then the processor and the training
        arguments (without the Hub token)."""
        if not isinstance(self.model, PolicyAndValueModel):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.model.save_pretrained(output_dir, state_dict=state_dict)  # DeepSpeed: its consolidated state dict
        self.processor.save_pretrained(output_dir)
        torch.save(redacted(self.args), os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        if not isinstance(self.model, PolicyAndValueModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.model.load_value_head(resume_from_checkpoint)
        # The Trainer loads the policy as the plain model (or adapter) it saved.
        super()._load_from_checkpoint(resume_from_checkpoint, self.model.policy)


def _nanstd(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return finite.std(correction=0).item() if len(finite) else float("nan")
