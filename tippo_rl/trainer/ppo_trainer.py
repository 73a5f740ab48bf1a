"""PPO for TIPPo on `transformers.Trainer`, laid out like TRL's `GRPOTrainer`.

The Trainer's dataloader yields a *rollout batch* (`per_device_train_batch_size · steps_per_generation` samples per
process, each repeated for every minibatch it will feed); `_prepare_inputs` turns it into rollouts once per PPO
iteration and hands out one minibatch per forward/backward pass; `compute_loss` is PPO's loss. Optimizer,
schedule, gradient accumulation and clipping, logging, checkpoints, DDP/DeepSpeed and PEFT are the Trainer's.

The algorithm's steps are methods, so a variant overrides one step (PolishPPO overrides two):

    generate_rollouts → score_rollouts → compute_returns → (old, reference log-probs, values) → compute_advantages
    → num_ppo_epochs × minibatches of compute_loss

Equation numbers marked "PPO" refer to Schulman et al. 2017 (arXiv:1707.06347); k3 is the KL estimator of
http://joschu.net/blog/kl-approx.html; the value clipping is OpenAI baselines' (as in TRL's former PPOTrainer).
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

import safetensors.torch
import torch
from accelerate.utils import is_peft_model, set_seed
from datasets import Dataset
from torch import nn
from transformers import GenerationConfig, Trainer, TrainerCallback
from trl.models import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from ..checkpoints import CheckpointError
from ..data import MODEL_INPUT_NAMES, TIPPoDataCollator, model_inputs
from ..modeling_tippo import TIPPoModel
from ..processing_tippo import TIPPoProcessor
from ..rewards import load_reward, reward_name, score_rewards
from .ppo_config import PPOConfig
from .utils import EpochSeededRepeatSampler, StepMetrics, TIPPoSavingMixin, cache_features_for_training, unwrap_tippo

logger = logging.getLogger(__name__)

PPO_STATE_NAME = "ppo_state.json"
VALUE_HEAD_NAME = "value_head.safetensors"
FEATURE_COLUMNS = ("image_features", "title_features")


# ----------------------------------------------------------------------------------------------------- the math


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1 (0 when the mask is empty)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def clipped_surrogate_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss per token, averaged over the completion tokens.

    Args:
        logps, old_logps, advantages, mask: `(batch, T)`; `mask` is 1 on completion tokens.
        cliprange: ε.
    Returns:
        (loss, clip fraction, ratio), the first two scalars, ratio `(batch, T)`.
    """
    ratio = torch.exp(logps - old_logps)  # r_t(θ) = π_θ(y_t) / π_θ_old(y_t)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    losses = torch.max(unclipped, clipped)  # −L^CLIP, PPO Eq. 7
    return masked_mean(losses, mask), masked_mean((clipped > unclipped).float(), mask), ratio


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled tokens' log-probs, `(batch, T)`."""
    log_ratio = ref_logps - logps  # log π_ref − log π_θ
    if estimator == "k1":
        return -log_ratio  # k1
    return torch.exp(log_ratio) - log_ratio - 1  # k3


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss ½·max((V − R)², (V_clip − R)²), averaged over completion tokens; and its clip fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error, clipped_error = (values - targets) ** 2, (clipped_values - targets) ** 2
    losses = 0.5 * torch.max(unclipped_error, clipped_error)
    return masked_mean(losses, mask), masked_mean((clipped_error > unclipped_error).float(), mask)


def generalized_advantage_estimation(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE over the tokens of each completion. `rewards`, `values`, `mask`: `(batch, T)`; the mask is a prefix (the
    completion, EOS included). The value after the last token is 0 (the episode ends). Returns `(batch, T)`."""
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t = r_t + γ·V(s_{t+1}) − V(s_t), PPO Eq. 12
        running = delta + gamma * lam * running  # Â_t = δ_t + γλ·Â_{t+1}, PPO Eq. 11 (recursive form)
        advantages[:, t] = running
    return advantages * mask


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on each completion's tokens up to and including its first EOS (all tokens if it has none): `(batch, T)`."""
    is_eos = completion_ids == eos_token_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.shape[1])
    return (torch.arange(completion_ids.shape[1], device=completion_ids.device)[None] <= first_eos[:, None]).long()


# ----------------------------------------------------------------------------------------------------- the pieces


class PolicyAndValueModel(nn.Module):
    """The policy and a value head V(s_t) = w·h_t + b on its decoder's last hidden states, as one module: DDP and
    DeepSpeed then synchronise both and one optimizer steps both.

    `forward` takes the policy's inputs and returns `(outputs, values)`, values `(batch, T)`. Checkpoints hold the
    policy as a loadable TIPPo model plus `value_head.safetensors` (see `PPOTrainer._save`).
    """

    def __init__(self, policy: nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # V ≡ 0 at the start: no value noise in the first advantages
        nn.init.zeros_(self.value_head.bias)

    def forward(self, **inputs):
        outputs = self.policy(**inputs, output_hidden_states=True)
        hidden = outputs.decoder_hidden_states[-1]
        return outputs, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    # What the Trainer and TRL's generation helpers ask of a model.
    @property
    def config(self):
        return self.policy.config

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.policy.is_gradient_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.policy.gradient_checkpointing_disable()


class PPODataCollator:
    """Rows → the model inputs of `TIPPoDataCollator` plus `columns`: every other dataset column as a list, for the
    reward plug-ins (`reference`, `references`, `title`, `images`, `id`, and any extra column). Images whose pixels
    were replaced by cached features are passed as their file paths."""

    def __init__(self, processor: TIPPoProcessor):
        self.collator = TIPPoDataCollator(processor, with_labels=False)

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        batch = model_inputs(self.collator(rows))
        columns = {name: [row[name] for row in rows] for name in rows[0] if name not in FEATURE_COLUMNS}
        if "images" in columns:
            columns["images"] = [[_image_or_path(image) for image in images] for images in columns["images"]]
        return {**batch, "columns": columns}


def _image_or_path(image: Any) -> Any:
    if isinstance(image, dict) and image.get("path"):  # an undecoded datasets.Image
        return image["path"]
    return image


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of `model` to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


# ----------------------------------------------------------------------------------------------------- the trainer


class PPOTrainer(TIPPoSavingMixin, Trainer):
    """Proximal Policy Optimization of a [`TIPPoModel`] (title + images → text) with reward plug-ins.

    Standard PPO by default (value head, GAE, clipped value loss); `use_value_head=False` uses the whitened sequence
    return as every token's advantage. Subclasses change one step by overriding one method: `generate_rollouts`,
    `score_rollouts`, `compute_returns`, `compute_advantages` or `compute_loss` ([`PolishPPOTrainer`] overrides
    `compute_returns` and `compute_advantages`).

    Args:
        model: the starting policy, a `TIPPoModel` (e.g. the SFT output) or a PEFT-wrapped one. With PEFT the reference
            policy is the same model with its adapters disabled; otherwise a frozen copy.
        args: [`PPOConfig`].
        processor: the model's [`TIPPoProcessor`] (decodes completions; saved with every checkpoint).
        train_dataset: a TIPPo dataset (`tippo_rl.data.load_artmuse`, `load_coco_captions`): its `reference`,
            `title`, `images` and other columns reach the reward plug-ins.
        reward_funcs: reward plug-ins (callables, or specs for `tippo_rl.rewards.load_reward`). Default:
            `args.reward_funcs`.
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
    ):
        self.processor = processor
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

        (train_dataset,) = cache_features_for_training(args, tippo, processor, train_dataset)

        super().__init__(
            model=model,
            args=args,
            data_collator=PPODataCollator(processor),
            train_dataset=train_dataset,
            processing_class=processor,
            callbacks=callbacks,
            optimizers=optimizers,
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

        # Processes sample different completions (the Trainer seeded them all alike); RNG states are checkpointed per process.
        set_seed(args.seed, device_specific=True)

        self._step = 0  # minibatches (forward + backward passes) so far; restored on resume
        self.iteration = 0  # m: PPO iterations (rollout batches) started so far; restored on resume
        self._rollout_batch: dict[str, torch.Tensor] | None = None
        self._minibatches: list[dict[str, torch.Tensor]] | None = None
        self._metrics: dict[str, list[float]] = defaultdict(list)  # per iteration, already reduced: logged means
        self._step_metrics = StepMetrics()  # per step, on the device until log()
        self._reward_warnings: set[tuple[str, str]] = set()  # (reward, problem) already reported

    # -- data ---------------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        # Reward plug-ins receive every column, so none is "unused".
        if self._signature_columns is None:
            self._signature_columns = list(self.train_dataset.column_names)

    def get_train_dataloader(self):
        # One dataloader batch is a rollout batch, repeated once per minibatch it feeds (see _get_train_sampler).
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, dataset: Dataset | None = None):
        # Each rollout batch (global: generation_batch_size samples) comes minibatches_per_iteration times in a row, so
        # the Trainer's step and epoch counting, and skipping on resume, stay right. Its order depends on the epoch, not on
        # how many passes this process has drawn, so a resumed run sees the same order.
        return EpochSeededRepeatSampler(
            data_source=dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=1,
            batch_size=self.args.generation_batch_size,
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
        """One iteration's experience: generate, score, returns, log-probs, advantages. Returns the tensors the loss
        needs, each `(local rollout batch, ...)`."""
        rollouts = self.generate_rollouts(batch)
        rewards = self.score_rollouts(rollouts)  # (n_funcs, batch)
        returns = self.compute_returns(rewards, rollouts)  # (batch,)
        with self.compute_loss_context_manager():  # the same autocast as the loss: ratio 1 before the first update
            rollouts.update(self.compute_rollout_log_probs(rollouts))
        advantages = self.compute_advantages(returns, rollouts)  # (batch, T)
        mask = rollouts["completion_mask"]

        experience = {
            **rollouts["model_inputs"],
            "completion_ids": rollouts["completion_ids"],
            "completion_mask": mask,
            "old_logps": rollouts["old_logps"],
        }
        if "ref_logps" in rollouts:
            experience["ref_logps"] = rollouts["ref_logps"]
        if self.args.use_value_head:
            experience["old_values"] = rollouts["old_values"]
            experience["value_targets"] = (advantages + rollouts["old_values"]) * mask  # R_t = Â_t + V(s_t)
        if self.args.whiten_advantages:
            advantages = self._whiten(advantages, mask)
        experience["advantages"] = advantages

        self._log_rollout_metrics(rewards, returns, advantages, rollouts)
        self.iteration += 1
        return experience

    def generate_rollouts(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Sample one completion per sample with the current policy (batched `generate()` with its KV cache).

        Args:
            batch: the collated rollout batch: model inputs and `columns` (lists of raw dataset values).
        Returns:
            A dict with `model_inputs` (φ's features, computed here once when the batch holds pixels and φ is frozen),
            `completion_ids` `(batch, T)` (the decoder start token stripped, pad after EOS), `completion_mask`
            `(batch, T)`, `completions` (decoded texts), `prompts` (the titles) and `columns`.
        """
        inputs = model_inputs(batch)
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
        ) as unwrapped:
            policy = self._policy(unwrapped)
            tippo = unwrap_tippo(policy)
            if "pixel_values" in inputs and tippo.config.freeze_encoder:
                # φ is frozen: encode the images and titles once for every pass over this rollout batch.
                image_features, title_features = tippo.encode_frozen_features(
                    inputs["pixel_values"], inputs["image_mask"], inputs["title_input_ids"], inputs["title_attention_mask"]
                )
                inputs = {"image_features": image_features, "image_mask": inputs["image_mask"], "title_features": title_features}
            sequences = policy.generate(**inputs, generation_config=self.generation_config)
        completion_ids = sequences[:, 1:]  # drop the decoder start token
        mask = completion_mask(completion_ids, self.eos_token_id)
        completion_ids = completion_ids.masked_fill(mask == 0, self.pad_token_id)
        columns = batch["columns"]
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
        ids = [row[row_mask.bool()].tolist() for row, row_mask in zip(rollouts["completion_ids"], rollouts["completion_mask"])]
        rewards, _ = score_rewards(
            self.reward_funcs,
            prompts=rollouts["prompts"],
            completions=rollouts["completions"],
            columns=rollouts["columns"],
            trainer_state=self.state,
            completion_ids=ids,
        )
        return rewards.to(self.accelerator.device)

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
        of the last token; without a value head, the return itself on every token."""
        mask = rollouts["completion_mask"]
        if not self.args.use_value_head:
            return returns[:, None] * mask
        last = mask.sum(1) - 1
        token_rewards = torch.zeros_like(rollouts["old_values"])
        token_rewards[torch.arange(len(last), device=last.device), last] = returns  # r_T = R, r_t = 0 before
        return generalized_advantage_estimation(token_rewards, rollouts["old_values"], mask, self.args.gamma, self.args.lam)

    def _whiten(self, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(A − mean) / std over the completion tokens of the whole rollout batch, all processes."""
        stats = torch.stack([(advantages * mask).sum(), (advantages**2 * mask).sum(), mask.sum().to(advantages.dtype)])
        total, squares, count = self.accelerator.reduce(stats, reduction="sum").double().tolist()
        mean = total / max(count, 1)
        std = math.sqrt(max(squares / max(count, 1) - mean**2, 0.0))
        return (advantages - mean) / (std + 1e-8) * mask

    # -- the loss ---------------------------------------------------------------------------------------------------

    def _forward(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Teacher-forced pass over the completions: (log-probs `(batch, T)` at the sampling temperature, fp32 logits
        `(batch, T, V)` before the temperature, values `(batch, T)` or None). `model` may be a `PolicyAndValueModel` (or one wrapped by DDP)."""
        start = completion_ids.new_full((len(completion_ids), 1), self.decoder_start_token_id)
        decoder_input_ids = torch.cat([start, completion_ids[:, :-1]], dim=1)  # T5's shift-right of the labels
        outputs = model(**inputs, decoder_input_ids=decoder_input_ids)
        values = None
        if isinstance(outputs, tuple):  # PolicyAndValueModel
            outputs, values = outputs
        logits = outputs.logits.float()  # fp32 log-probs: ratios π_θ/π_old of bf16 log-probs are noisy
        # TRL's: log π(token) row by row (fused on GPUs with Triton), never a full (batch, T, V) log-softmax.
        logps = selective_log_softmax(logits, completion_ids, temperature=self.args.temperature)
        return logps, logits, values

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """PPO loss of one minibatch: clipped surrogate + β·KL(π_θ ‖ π_ref) + vf_coef·clipped value loss."""
        if return_outputs:
            raise ValueError("PPOTrainer.compute_loss does not return model outputs")
        mask = inputs["completion_mask"]
        forward_inputs = {key: inputs[key] for key in inputs if key in MODEL_INPUT_NAMES}
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
            loss = loss + self.args.vf_coef * value_loss  # + c_1·L^VF, PPO Eq. 9
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
        stats = torch.stack([(advantages * mask).sum(), (advantages**2 * mask).sum(), mask.sum().float()])
        total, squares, count = self.accelerator.reduce(stats, reduction="sum").double().tolist()
        mean = total / max(count, 1)
        self._metrics["advantages/mean"].append(mean)
        self._metrics["advantages/std"].append(math.sqrt(max(squares / max(count, 1) - mean**2, 0.0)))
        lengths = gather(mask.sum(1).float())
        self._metrics["completions/mean_length"].append(lengths.mean().item())
        terminated = gather((rollouts["completion_ids"] == self.eos_token_id).any(1).float())
        self._metrics["completions/clipped_ratio"].append(1.0 - terminated.mean().item())
        self._metrics["iteration"].append(float(self.iteration))

    def _warn_if_uninformative(self, name: str, values: torch.Tensor) -> None:
        """Say (once per reward and problem) when a reward cannot move the policy: None for every sample of a rollout
        batch, or the same value for all of them (its part of every advantage is then 0)."""
        finite = values[~torch.isnan(values)]
        if len(finite) == 0:
            problem, message = "none", f"returned None for all {len(values)} samples of iteration {self.iteration}: it has no effect"
        elif len(finite) > 1 and bool((finite == finite[0]).all()):
            problem, message = "constant", (
                f"gave all {len(finite)} samples of iteration {self.iteration} the same value ({finite[0].item():.4g}): it "
                "adds nothing to the advantages"
            )
        else:
            return
        if (name, problem) not in self._reward_warnings and self.accelerator.is_main_process:
            self._reward_warnings.add((name, problem))
            warnings.warn(f"reward {name!r} {message} (said once; the rewards/{name}/* metrics show every iteration)", UserWarning, stacklevel=2)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            self._step_metrics.reduce_into(self._metrics, self.accelerator)
            for key, values in self._metrics.items():
                finite = [v for v in values if not math.isnan(v)]
                logs[key] = sum(finite) / len(finite) if finite else None
            self._metrics.clear()
        super().log(logs, start_time)

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def ppo_state(self) -> dict[str, Any]:
        """What a checkpoint must hold beyond the Trainer's own state to resume exactly (JSON-serialisable), and the
        iteration layout it was written with."""
        return {
            "step": self._step,
            "iteration": self.iteration,
            "steps_per_generation": self.args.steps_per_generation,
            "num_ppo_epochs": self.args.num_ppo_epochs,
            "total_iterations": self.total_iterations,
        }

    def load_ppo_state(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        self.iteration = state["iteration"]

    def _save_checkpoint(self, model, trial):
        self.create_model_card()
        super()._save_checkpoint(model, trial)  # atomic; ppo_state.json goes in through _save_checkpoint_extras

    def _save_checkpoint_extras(self, folder):
        with open(os.path.join(folder, PPO_STATE_NAME), "w") as f:
            json.dump(self.ppo_state(), f, indent=2)

    def _read_ppo_state(self, checkpoint: str) -> dict[str, Any]:
        path = os.path.join(checkpoint, PPO_STATE_NAME)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"'{checkpoint}' holds no {PPO_STATE_NAME}, so the PPO iteration and its statistics cannot be restored: "
                "it is not a PPO checkpoint (an SFT output is a model: pass it as --model_name_or_path), or its save was "
                "interrupted by a version that did not save atomically; resume from an earlier checkpoint"
            )
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
            int(state["step"]), int(state["iteration"])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"'{checkpoint}': file {PPO_STATE_NAME} is damaged ({type(error).__name__}: {error}); resume from an earlier checkpoint") from error
        return state

    def _check_resume(self, checkpoint: str, state: dict) -> None:
        ppo_state = self._read_ppo_state(checkpoint)
        for name in ("steps_per_generation", "num_ppo_epochs"):
            if ppo_state.get(name) not in (None, getattr(self.args, name)):
                raise CheckpointError(
                    f"'{checkpoint}' was written with {name} {ppo_state[name]}, this run has {getattr(self.args, name)}: "
                    f"its steps no longer fall on PPO iterations; resume with --{name} {ppo_state[name]}"
                )
        super()._check_resume(checkpoint, state)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Called on resume in every setup (plain, DDP, DeepSpeed), after the weights are loaded.
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        self.load_ppo_state(self._read_ppo_state(checkpoint))
        self._rollout_batch = self._minibatches = None

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Save the policy as a loadable TIPPo model (or PEFT adapter); with a value head, also `value_head.safetensors`."""
        if not isinstance(self.model, PolicyAndValueModel):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        wrapper = self.model
        if state_dict is not None:  # DeepSpeed hands over the consolidated state dict of the wrapper
            policy_state = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
            head_state = {k.removeprefix("value_head."): v for k, v in state_dict.items() if k.startswith("value_head.")}
        else:
            policy_state, head_state = None, wrapper.value_head.state_dict()
        self.model = wrapper.policy
        try:
            super()._save(output_dir, policy_state)
        finally:
            self.model = wrapper
        safetensors.torch.save_file(
            {k: v.detach().cpu().contiguous() for k, v in head_state.items()}, os.path.join(output_dir, VALUE_HEAD_NAME)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        if not isinstance(self.model, PolicyAndValueModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        wrapper = self.model
        head = os.path.join(resume_from_checkpoint, VALUE_HEAD_NAME)
        if not os.path.isfile(head):
            raise FileNotFoundError(f"{resume_from_checkpoint} holds no {VALUE_HEAD_NAME} for the value head")
        self.model = wrapper.policy  # the Trainer loads (and re-ties) the policy as the plain model it saved
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, wrapper.policy)
        finally:
            self.model = wrapper
        wrapper.value_head.load_state_dict(safetensors.torch.load_file(head))


def _nanstd(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return finite.std(correction=0).item() if len(finite) else float("nan")
