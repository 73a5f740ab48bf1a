"""PPO for TIPPo on `transformers.Trainer`, laid out like TRL's `GRPOTrainer`.

The Trainer's dataloader yields a *rollout batch* (`per_device_train_batch_size · steps_per_generation` rows per
process, repeated for every minibatch it will feed); `training_step` collates it and turns it into rollouts once per
PPO iteration (`minibatch_for_step`) and trains on one minibatch per forward/backward pass; `compute_loss` is PPO's
loss. Optimizer, schedule, gradient accumulation and clipping, logging, checkpoints, DDP/DeepSpeed and PEFT are the
Trainer's.

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

import contextlib
import copy
import functools
import json
import logging
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object, is_peft_model, set_seed
from datasets import Dataset
from torch import nn
from transformers import GenerationConfig, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ProgressCallback
from trl.models import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler, entropy_from_logits

from ..checkpoints import PPO_STATE_NAME, CheckpointError, read_ppo_state, redacted
from ..data_collator import MODEL_INPUT_NAMES, TIPPoDataCollator, model_inputs
from ..feature_cache import cache_features_for_training, with_frozen_features
from ..generation import generation_config
from ..modeling_tippo import TIPPoForConditionalGeneration
from ..processing_tippo import TIPPoProcessor
from ..rewards import conversational_completions, load_reward, reward_name, score_rewards
from ..sampler import next_token_warpers, sample_completions, samples_fast
from .ppo_config import PPOConfig
from .ppo_math import (
    ReturnStatistics,
    aggregate_token_losses,
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
    token_log_probs,
)
from .tippo_trainer import (
    IterationProgressCallback,
    StepMetrics,
    TIPPoTrainerMixin,
    daa_lambda1_at,
    unwrap_tippo,
)
from .value_head import PolicyAndValueModel


FEATURE_COLUMNS = ("image_features", "title_features")
# PPOConfig's sampling options, named as generate() names them: the rollouts sample with them (and the PPO ratio's
# log-probabilities apply them); SCST's greedy decode unsets them.
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose order depends on (seed, epoch) only. TRL's seeds its generator once, so a run resumed
    past the first pass over the data drew a different order than an uninterrupted one; the Trainer calls `set_epoch`
    before every pass (resumed or not), which re-seeds it here."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + epoch)


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


class RolloutRows:
    """A rollout batch as the train dataloader yields it: the dataset and the row indices the sampler drew, the rows read
    on first use (`rows`, uncollated). `training_step` reads and collates them once per iteration; the iteration's
    other minibatches, which do not need them, cost no dataset read. Not a list, so accelerate's `send_to_device`
    passes it through. It holds no model input, so the Trainer's `name in batch` checks (`labels`, to scale the loss;
    the main input, to count FLOPs) find none: a PPO step's loss reads the rollouts, not the dataloader's batch."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self._rows: list[dict] | None = None

    @property
    def rows(self) -> list[dict]:
        if self._rows is None:
            read_many = getattr(self.dataset, "__getitems__", None)  # datasets.Dataset: one read for all the rows
            self._rows = list(read_many(self.indices)) if read_many else [self.dataset[i] for i in self.indices]
        return self._rows

    def __contains__(self, name: str) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.indices)


class RowIndices(torch.utils.data.Dataset):
    """What the PPO train dataloader reads: each row's index (the rows themselves are read by `RolloutRows`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> int:
        return index

    def __getitems__(self, indices: Sequence[int]) -> list[int]:
        return list(indices)


class PPOMinibatch:
    """The tensors of one PPO minibatch that `compute_loss` reads by name (model inputs, `completion_ids`,
    `old_logps`, `advantages`, …), already on the device. Not a Mapping, so the Trainer's `training_step` hands it to
    `compute_loss` as it is: under DeepSpeed it would cast every float tensor of a mapping, old log-probabilities and
    advantages among them, to the engine's dtype."""

    def __init__(self, tensors: dict[str, torch.Tensor], rows: torch.Tensor | None = None):
        self.tensors = tensors
        # Set on a minibatch whose old log-probs its own loss forward supplies (`compute_rollout_log_probs`): its rows
        # in the rollout batch, where `compute_loss` writes them for the later passes.
        self.rows_awaiting_old_logps = rows

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    # What a `compute_loss` written for a dict of tensors may call.
    def keys(self):
        return self.tensors.keys()

    def items(self):
        return self.tensors.items()

    def get(self, name: str, default=None):
        return self.tensors.get(name, default)


def _image_or_path(image: Any) -> Any:
    if isinstance(image, dict) and image.get("path"):  # an undecoded datasets.Image
        return image["path"]
    return image


def _nanstd(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return finite.std(correction=0).item() if len(finite) else float("nan")


def frozen_reference_policy(policy: nn.Module, accelerator, deepspeed: bool) -> nn.Module:
    """A frozen copy of `policy`, prepared for evaluation (a DeepSpeed engine under DeepSpeed). A PEFT policy needs
    none: its reference is the same model with its adapters disabled."""
    tippo = unwrap_tippo(policy)
    # φ is frozen and the same in both: share it rather than copy it (not under DeepSpeed, which shards it).
    share = tippo.config.freeze_encoder and not deepspeed
    reference = copy.deepcopy(policy, memo={id(tippo.encoder): tippo.encoder} if share else None)
    reference.eval().requires_grad_(False)
    if deepspeed:
        return prepare_deepspeed(reference, accelerator)
    return accelerator.prepare_model(reference, evaluation_mode=True)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of `model` to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


logger = logging.getLogger(__name__)
# generate() options that reshape the sampling distribution beyond temperature, top-k and top-p (which the ratio applies).
OFF_POLICY_GENERATION_OPTIONS = {
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "encoder_repetition_penalty",
    "min_new_tokens",
    "suppress_tokens",
}


class PPOTrainer(TIPPoTrainerMixin, Trainer):
    """Proximal Policy Optimization of a [`TIPPoForConditionalGeneration`] (title + images → text) with reward plug-ins.

    Standard PPO by default (value head, GAE, clipped value loss); `use_value_head=False` uses the sequence return
    minus `advantage_baseline` (none, running Eq. 6, group, leave-one-out, greedy; over `num_generations` completions
    per prompt) as every token's advantage. Subclasses change one step by overriding one method: `generate_rollouts`,
    `score_rollouts`, `compute_returns`, `compute_advantages`, `baseline_advantages`, `build_loss_batch`,
    `whiten_advantages` or `compute_loss` ([`PolishPPOTrainer`] overrides `compute_returns`), and the rewards it is
    built with by overriding `default_reward_funcs` and `check_rewards`.

    Args:
        model: the starting policy, a `TIPPoForConditionalGeneration` (e.g. the SFT output) or a PEFT-wrapped one. With PEFT the reference
            policy is the same model with its adapters disabled; otherwise a frozen copy.
        args: [`PPOConfig`].
        processor: the model's [`TIPPoProcessor`] (decodes completions; saved with every checkpoint).
        train_dataset: a TIPPo dataset (`tippo_rl.data.load_artmuse`, `load_coco_captions`): its `reference`,
            `title`, `images` and other columns reach the reward plug-ins.
        reward_funcs: reward plug-ins (callables, or specs for `tippo_rl.rewards.load_reward`). Default:
            `default_reward_funcs` (`args.reward_funcs`).
        eval_dataset: a TIPPo dataset decoded at each `eval_strategy` step (`eval_rouge_l`, `eval_cider`,
            `eval_literal`; see `GenerationEvalMixin`).
        callbacks, optimizers: as for `transformers.Trainer`.
    """

    _tag_names = ["trl", "ppo", "tippo", "multimodal"]
    _stage = "PPO"  # for the model card
    data_collator_class = PPODataCollator
    requires_train_reference = False  # a reward may not need a reference column
    updates_card_with_checkpoints = True  # as TRL's trainers do
    # compute_loss returns a per-minibatch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: TIPPoForConditionalGeneration,
        args: PPOConfig,
        processor: TIPPoProcessor,
        train_dataset: Dataset,
        reward_funcs: Sequence[Callable | str] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        eval_dataset: Dataset | None = None,
    ):
        args.remove_unused_columns = False  # reward plug-ins receive every dataset column: none is "unused"
        tippo = unwrap_tippo(model)
        if args.disable_dropout:
            disable_dropout(model)

        # Rewards
        reward_funcs = (
            list(reward_funcs) if reward_funcs is not None else self.default_reward_funcs(args, train_dataset)
        )
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
        self.check_rewards()
        self.give_rewards_their_corpus(train_dataset)
        self.give_rewards_the_policy(model, processor, args.device)

        policy = model
        if args.use_value_head:
            model = PolicyAndValueModel(policy, tippo.config.hidden_size)

        super().__init__(
            model, args, processor, train_dataset, eval_dataset, callbacks=callbacks, optimizers=optimizers
        )

        if any(isinstance(callback, ProgressCallback) for callback in self.callback_handler.callbacks):
            self.remove_callback(ProgressCallback)
            self.add_callback(
                IterationProgressCallback(args.minibatches_per_iteration / args.gradient_accumulation_steps)
            )

        # Reference policy: the starting policy, frozen. PEFT: the same model with its adapters disabled.
        self.ref_model = None
        if args.kl_coef > 0 and not is_peft_model(policy):
            self.ref_model = frozen_reference_policy(policy, self.accelerator, self.is_deepspeed_enabled)
        self.reward_weights = self.reward_weights.to(self.accelerator.device)

        self.eos_token_id = tippo.config.eos_token_id
        self.pad_token_id = tippo.config.pad_token_id
        self.decoder_start_token_id = tippo.config.decoder_start_token_id
        self.generation_config = generation_config(
            do_sample=True,
            max_new_tokens=args.max_new_tokens,
            **{name: getattr(args, name) for name in SAMPLING_OPTIONS},
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            use_cache=True,
            **(args.generation_kwargs or {}),
        )
        # k completions of a prompt in one minibatch share one pass up to the decoder (`encode_prompt_once`): the
        # minibatches then hold whole groups of k rows, which needs per_device_train_batch_size to be a multiple of k.
        k = args.num_generations
        self.prompt_group = k if args.encode_prompt_once and k > 1 and args.per_device_train_batch_size % k == 0 else 1
        # What the rollouts' scores pass through before a token is drawn (the sampler's own list: temperature, top-k,
        # top-p), applied again to the ratio's logits when top-k or top-p truncates them (`truncate`).
        self.sampling_warpers = next_token_warpers(
            GenerationConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        )
        distorting = sorted(set(args.generation_kwargs or {}) & OFF_POLICY_GENERATION_OPTIONS)
        if distorting:
            logger.warning(
                "generation_kwargs %s change the distribution the rollouts are sampled from, but the PPO ratio's "
                "log-probabilities do not apply them: the updates are then slightly off-policy",
                ", ".join(distorting),
            )
        # SCST's baseline and the evaluation decode: greedy, as long as the rollouts.
        self.greedy_generation_config = copy.deepcopy(self.generation_config)
        self.greedy_generation_config.update(do_sample=False, **dict.fromkeys(SAMPLING_OPTIONS))
        self.default_eval_generation_kwargs = {"max_new_tokens": args.max_new_tokens}
        self.return_statistics = ReturnStatistics(args.advantage_window)  # μ_m, δ_m of the `running` baseline
        self.starting_daa_lambda1 = float(tippo.daa_lambda1.item())  # what `daa_lambda_schedule: hold` keeps

        # Processes sample different completions (the Trainer seeded them all alike); RNG states are checkpointed per process.
        set_seed(args.seed, device_specific=True)

        if args.skip_solved_prompts:
            self.train_dataset = self.unsolved_prompts(self.train_dataset)

        self._step = 0  # minibatches (forward + backward passes) so far; restored on resume
        self.iteration = 0  # m: PPO iterations (rollout batches) started so far; restored on resume
        self.tokens_per_minibatch: float | None = None  # `loss_type: dapo`: set with each rollout batch
        self._rollout_batch: dict[str, torch.Tensor] | None = None
        self._unwrapped: tuple[nn.Module, nn.Module] | None = None  # (model_wrapped, its unwrapped model)
        self._minibatches: list[PPOMinibatch] | None = None
        self._init_logging()

    def default_reward_funcs(self, args: PPOConfig, train_dataset: Dataset) -> list[Callable | str]:
        """The rewards of a trainer given none: `args.reward_funcs`, specs that `load_reward` builds with their
        `reward_init_kwargs`."""
        return list(args.reward_funcs or [])

    def check_rewards(self) -> None:
        """Called once the rewards are loaded (`reward_funcs`, `reward_names`, `reward_weights`), before the Trainer is
        set up: a subclass that needs particular rewards checks for them here."""

    def give_rewards_their_corpus(self, train_dataset: Dataset) -> None:
        """Rewards with a `set_corpus(reference_sets)` method (the built-in `cider`: its idf) and no corpus yet get the
        training set's reference sets (column `references`, else `reference`), all of them, before any prompt is
        skipped: what they score by stays fixed over the run, and a resumed run scores as the uninterrupted one."""
        needing = [
            f
            for f in self.reward_funcs
            if callable(getattr(f, "set_corpus", None)) and not getattr(f, "has_corpus", False)
        ]
        columns = getattr(train_dataset, "column_names", None) or ()
        column = next((name for name in ("references", "reference") if name in columns), None)
        if not needing or column is None:
            return
        reference_sets = train_dataset[column]
        for reward_func in needing:
            reward_func.set_corpus(reference_sets)
        names = ", ".join(reward_name(f) for f in needing)
        logger.info("reward %s: corpus of the training data's %d reference sets", names, len(reference_sets))

    def give_rewards_the_policy(self, model, processor: TIPPoProcessor, device: torch.device) -> None:
        """Rewards with a `set_policy(model, processor, device)` method and no model of their own (`has_model` false:
        the image-grounded rewards built without `model_name_or_path`) get the model being trained, to read with its
        frozen φ."""
        for reward_func in self.reward_funcs:
            if callable(getattr(reward_func, "set_policy", None)) and not getattr(reward_func, "has_model", True):
                reward_func.set_policy(model, processor, device)
                logger.info("reward %s: reads with the φ of the model being trained", reward_name(reward_func))

    @torch.no_grad()
    def unsolved_prompts(self, dataset: Dataset, batch_size: int = 64) -> Dataset:
        """`skip_solved_prompts`: the rows of `dataset` whose greedy decode by the starting policy is not their
        `reference` (surrounding spaces aside). Every process decodes every row (greedy decoding is deterministic, so
        all keep the same rows); a resumed run filters with the same starting policy and keeps the same rows."""
        if "reference" not in dataset.column_names:
            raise ValueError(
                "skip_solved_prompts compares each prompt's greedy decode with its `reference` column, and the "
                "training dataset has none: add references or set skip_solved_prompts false"
            )
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ValueError(
                "skip_solved_prompts decodes the training prompts before DeepSpeed ZeRO-3 has gathered the model: "
                "filter the dataset beforehand (PPOTrainer.unsolved_prompts on a single process) and set it false"
            )
        unsolved = []
        for start in range(0, len(dataset), batch_size):
            rows = range(start, min(start + batch_size, len(dataset)))
            batch = self.data_collator([dataset[i] for i in rows])
            inputs = {key: value.to(self.accelerator.device) for key, value in model_inputs(batch).items()}
            decoded = self._decode(inputs, batch["columns"], self.greedy_generation_config)["completions"]
            references = batch["columns"]["reference"]
            unsolved += [
                i for i, text, reference in zip(rows, decoded, references) if text.strip() != reference.strip()
            ]
        if not unsolved:
            raise ValueError(
                f"skip_solved_prompts: the starting policy decodes all {len(dataset)} training prompts as their "
                "references, so no prompt is left to train on; set skip_solved_prompts false"
            )
        logger.warning(  # a warning so that it shows: the training set the user gave shrinks
            "skip_solved_prompts: %d of %d training prompts are decoded as their references; training on the other %d",
            len(dataset) - len(unsolved), len(dataset), len(unsolved),
        )  # fmt: skip
        return dataset.select(unsolved)

    @property
    def total_iterations(self) -> int:
        """M: the PPO iterations of this run (from the Trainer's `max_steps`)."""
        minibatches = self.state.max_steps * self.args.gradient_accumulation_steps
        return max(math.ceil(minibatches / self.args.minibatches_per_iteration), 1)

    @property
    def minibatches_before_first_step(self) -> int:
        """How many of an iteration's minibatches the policy sees before its first optimizer step: π_θ = π_θ_old."""
        return min(self.args.gradient_accumulation_steps, self.args.steps_per_generation)

    def unwrapped_model(self) -> nn.Module:
        """The training model without its DDP / DeepSpeed wrapper (accelerate's `unwrap_model`, which costs ~3 ms a
        call on a CPU: looked up once per wrapper, not several times an iteration)."""
        if self._unwrapped is None or self._unwrapped[0] is not self.model_wrapped:
            self._unwrapped = (self.model_wrapped, self.accelerator.unwrap_model(self.model_wrapped))
        return self._unwrapped[1]

    def _policy(self, model: nn.Module) -> nn.Module:
        """The policy inside an (unwrapped) training model: itself, or the policy of a `PolicyAndValueModel`."""
        return model.policy if isinstance(model, PolicyAndValueModel) else model

    # -- one PPO iteration ----------------------------------------------------------------------------------------------

    def training_step(self, model, inputs: RolloutRows, num_items_in_batch=None):
        """One forward/backward pass of PPO's loss on this step's minibatch (`minibatch_for_step`)."""
        loss = super().training_step(model, self.minibatch_for_step(inputs, model), num_items_in_batch)
        self._step += 1
        return loss

    def minibatch_for_step(self, rollout_rows: RolloutRows, model: nn.Module) -> PPOMinibatch:
        """Sample and score a rollout batch at the start of each iteration; return this step's minibatch."""
        steps = self.args.steps_per_generation
        pending = 0  # minibatches whose own loss forward gives their old log-probs
        if self._step % self.args.minibatches_per_iteration == 0 or self._rollout_batch is None:
            model.train()  # as the Trainer's training_step puts it, which the rollouts were sampled after
            if callable(getattr(self.optimizer, "train", None)):
                self.optimizer.train()
            if self._step % self.args.minibatches_per_iteration != 0:
                logger.warning(
                    "resumed in the middle of PPO iteration %d: its rollouts were not checkpointed, so they are "
                    "sampled again (checkpoint on iteration boundaries to avoid this)",
                    self.iteration,
                )
            else:  # Those before the first optimizer step, without a value head (whose estimates GAE needs now).
                pending = 0 if self.args.use_value_head else self.minibatches_before_first_step
            batch = self.data_collator(rollout_rows.rows)  # the loader's rows, collated once per iteration
            # The Trainer's own preparation of model inputs (to the device; DeepSpeed's dtype for float features).
            self._rollout_batch = self.make_rollout_batch(self._prepare_inputs(batch), pending)
        if self._step % steps == 0 or self._minibatches is None:
            # A new pass over the rollout batch: reshuffle it into minibatches. The first pass takes the order the
            # old log-probabilities were computed in, so its first minibatch sees bit-identical inputs: ratio 1.
            order = self._rollout_batch.pop("first_pass_order", None)
            if order is None:
                size = len(self._rollout_batch["completion_ids"])
                order = self.shuffled_rows(size, self._rollout_batch["completion_ids"].device)
            self._minibatches = [
                PPOMinibatch(
                    {key: value[chunk] for key, value in self._rollout_batch.items()},
                    rows=chunk if index < pending else None,
                )
                for index, chunk in enumerate(order.chunk(steps))
            ]
        return self._minibatches[self._step % steps]

    def shuffled_rows(self, size: int, device: torch.device) -> torch.Tensor:
        """A random order of `size` rollout rows: whole groups of a prompt's k rows, each in a row, when the minibatches
        share the prompt's encoding (`prompt_group` = k), else rows one by one."""
        k = self.prompt_group
        if k == 1:
            return torch.randperm(size, device=device)
        groups = torch.randperm(size // k, device=device)
        return (groups[:, None] * k + torch.arange(k, device=device)).flatten()

    @torch.no_grad()
    def make_rollout_batch(self, batch: dict[str, Any], old_from_the_loss: int = 0) -> dict[str, torch.Tensor]:
        """One iteration's experience: generate, score, returns, log-probs, advantages, the loss batch (advantages
        whitened if `whiten_advantages`). Returns the tensors the loss needs, each `(local rollout batch, ...)`; the
        old log-probs of the first pass's first `old_from_the_loss` minibatches NaN (`compute_rollout_log_probs`)."""
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
        # The first pass's minibatches, drawn now: the old log-probabilities are computed on exactly those rows.
        rollouts["first_pass_order"] = self.shuffled_rows(len(returns), returns.device)
        with self.compute_loss_context_manager():  # the same autocast as the loss: ratio 1 before the first update
            rollouts.update(self.compute_rollout_log_probs(rollouts, old_from_the_loss))
        if self.args.mask_truncated_completions:  # scored and in the baselines, but no part of the loss
            truncated = ~(rollouts["completion_ids"] == self.eos_token_id).any(1)
            rollouts["sampled_mask"] = rollouts["completion_mask"]  # what was sampled (logged lengths)
            rollouts["completion_mask"] = rollouts["completion_mask"] * (~truncated)[:, None]
        if self.args.loss_type == "dapo":  # its denominator: the mean completion tokens per minibatch, all processes
            tokens = self.accelerator.gather(rollouts["completion_mask"].sum()[None].float()).sum().item()
            self.tokens_per_minibatch = tokens / (self.accelerator.num_processes * self.args.steps_per_generation)
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
        k = self.args.num_generations if self.args.encode_prompt_once else 1
        return self._decode(model_inputs(batch), batch["columns"], self.generation_config, samples_per_input=k)

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
        self,
        inputs: dict[str, torch.Tensor],
        columns: dict[str, list],
        generation_config: GenerationConfig,
        samples_per_input: int = 1,
    ) -> dict[str, Any]:
        """Generate for `inputs`; with `samples_per_input` = k > 1 the rows are groups of k copies of a prompt, which is
        encoded once (`generate`'s `num_return_sequences`: T5's encoder runs once per prompt too)."""
        k = samples_per_input
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
        ) as unwrapped:
            policy = self._policy(unwrapped)
            tippo = unwrap_tippo(policy)
            prompts = {key: value[::k] for key, value in inputs.items()}
            prompts = with_frozen_features(tippo, prompts)  # φ frozen: encoded once for every pass over the batch
            # The rollout sampler (generate()'s distribution, a leaner loop), or generate() for options it lacks.
            if samples_fast(tippo.language_model, generation_config):
                completion_ids = sample_completions(tippo, generation_config, k, **prompts)
            else:
                sequences = policy.generate(**prompts, generation_config=generation_config, num_return_sequences=k)
                # T5's sequences start with the decoder start token; a causal decoder's are the completion alone.
                completion_ids = sequences[:, 1:] if tippo.config.is_encoder_decoder else sequences
            inputs = {key: value.repeat_interleave(k, 0) for key, value in prompts.items()} if k > 1 else prompts
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
            return conversational_completions(completions)
        return completions

    def compute_returns(self, rewards: torch.Tensor, rollouts: dict[str, Any]) -> torch.Tensor:
        """The sequence return R = Σ_i w_i·r_i (NaN rewards skipped): `(n_funcs, batch)` → `(batch,)`."""
        return torch.nansum(self.reward_weights[:, None] * rewards, dim=0)

    def compute_rollout_log_probs(
        self, rollouts: dict[str, Any], old_from_the_loss: int = 0
    ) -> dict[str, torch.Tensor]:
        """Once per iteration, no gradient kept: the sampled tokens' log-probs under the rollout policy (`old_logps`)
        and the reference policy (`ref_logps`, when β > 0), and the value estimates (`old_values`, with a value head).
        Each `(batch, T)`. The first `old_from_the_loss` minibatches of the first pass get NaN old log-probs: their
        loss forwards come before the iteration's first optimizer step, at the rollout policy, and supply them
        (`compute_loss`), one forward fewer each."""
        inputs, ids = rollouts["model_inputs"], rollouts["completion_ids"]
        # In the first pass's minibatches (`first_pass_order`, else in order): the same rows, in the same order, as the
        # loss forwards, so that batched kernels give bit-identical log-probabilities there.
        order = rollouts.get("first_pass_order", torch.arange(len(ids), device=ids.device))
        outputs = defaultdict(list)
        model = self.unwrapped_model()
        for index, rows in enumerate(order.chunk(self.args.steps_per_generation)):
            part = {key: value[rows] for key, value in inputs.items()}
            if index < old_from_the_loss:
                outputs["old_logps"].append(torch.full(ids[rows].shape, math.nan, device=ids.device))
            else:
                # Before the first optimizer step with autograd on, as in the loss: CPU kernels under no_grad round
                # differently (2e-5 in a log-prob), which would make those ratios 1 ± 1e-6 instead of 1. The graph is
                # dropped at once. Not under DeepSpeed, whose ZeRO-3 hooks expect a backward after such a forward.
                autograd = index < self.minibatches_before_first_step and not self.is_deepspeed_enabled
                with torch.enable_grad() if autograd else contextlib.nullcontext():
                    logps, _, values = self._forward(model, part, ids[rows])
                outputs["old_logps"].append(logps.detach())
                if values is not None:
                    outputs["old_values"].append(values.detach())
            if self.args.kl_coef > 0:
                outputs["ref_logps"].append(self._reference_log_probs(model, part, ids[rows]))
        inverse = torch.argsort(order)  # back to the rollout order
        return {key: torch.cat(value)[inverse] for key, value in outputs.items()}

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
            scale = self.args.scale_rewards
            if scale == "batch":  # TRL's scale_rewards: the group mean, then the std of the whole rollout batch
                return group_advantages(returns, k, epsilon, scale=False) / (
                    self.accelerator.gather(returns).std() + epsilon
                )
            return group_advantages(returns, k, epsilon, scale=scale == "group")
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
        tippo = unwrap_tippo(self.unwrapped_model())
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
        if "first_pass_order" in rollouts:
            loss_batch["first_pass_order"] = rollouts["first_pass_order"]
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
        # T5's shift-right of the labels; a causal TIPPo model reads columns 1… after its prompt
        # (see `causal_decoder.causal_forward`).
        decoder_input_ids = torch.cat([start, completion_ids[:, :-1]], dim=1)
        k = self.prompt_group
        if k > 1:  # whole groups of k rows of one prompt: the prompt once, its k completions (`shuffled_rows`)
            inputs = {key: value[::k] for key, value in inputs.items()}
            outputs = model(**inputs, decoder_input_ids=decoder_input_ids, completions_per_input=k)
        else:
            outputs = model(**inputs, decoder_input_ids=decoder_input_ids)
        values = None
        if isinstance(outputs, tuple):  # PolicyAndValueModel
            outputs, values = outputs
        logits = outputs.logits.float()  # fp32 log-probs: ratios π_θ/π_old of bf16 log-probs are noisy
        if self.args.top_k or self.args.top_p < 1:
            # The distribution the rollouts were sampled from: top-k / nucleus truncated, renormalised.
            return token_log_probs(self.truncate(logits), completion_ids), logits, values
        logps = token_log_probs(logits, completion_ids, temperature=self.args.temperature)
        return logps, logits, values

    def truncate(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` `(batch, T, V)` as `generate()` sampled from them: divided by the temperature, then top-k and top-p
        (transformers' own warpers, in generate()'s order); dropped tokens at −inf."""
        shape = logits.shape
        scores = logits.reshape(-1, shape[-1])
        for warper in self.sampling_warpers:
            scores = warper(None, scores)
        return scores.reshape(shape)

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
            self.unwrapped_model().value_only = warmup
        logps, logits, values = self._forward(model, forward_inputs, inputs["completion_ids"])
        old_logps = inputs["old_logps"]
        rows = getattr(inputs, "rows_awaiting_old_logps", None)
        if rows is not None:  # before the iteration's first optimizer step: π_θ is π_θ_old, so r_t(θ) = 1 exactly
            old_logps = logps.detach()
            self._rollout_batch["old_logps"][rows] = old_logps
            inputs.tensors["old_logps"], inputs.rows_awaiting_old_logps = old_logps, None

        aggregation = dict(
            loss_type=self.args.loss_type,
            max_completion_length=self.args.max_new_tokens,
            tokens_per_minibatch=self.tokens_per_minibatch,
        )
        policy_loss, clip_fraction, ratio = clipped_surrogate_loss(
            logps, old_logps, inputs["advantages"], mask, self.args.cliprange, self.args.cliprange_high,
            **aggregation,
        )  # fmt: skip
        loss = policy_loss
        if self.args.kl_coef > 0:
            per_token_kl = kl_penalty(logps, inputs["ref_logps"], self.args.kl_estimator)
            loss = loss + self.args.kl_coef * aggregate_token_losses(per_token_kl, mask, **aggregation)  # + β·KL
            self._log_metric("kl", masked_mean(per_token_kl, mask))
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

    # -- rollout batches: the data loader of whole prompt groups ---------------------------------------------------------

    def get_train_dataloader(self):
        # One dataloader batch is a rollout batch, repeated once per minibatch it feeds (see rollout_sampler). It
        # yields the rows as they are: `training_step` collates them at the start of an iteration only, not again
        # for each of the iteration's other minibatches, which do not read them.
        dataset = self.train_dataset
        collator, self.data_collator = self.data_collator, functools.partial(RolloutRows, dataset)
        try:
            return self._get_dataloader(
                dataset=RowIndices(dataset),
                description="Training",
                batch_size=self._train_batch_size * self.args.steps_per_generation,
                sampler_fn=self.rollout_sampler,
                is_training=True,
            )
        finally:
            self.data_collator = collator

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

    # -- logging and evaluation ------------------------------------------------------------------------------------------

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

    # -- checkpoints: PPO's own state saved and resumed with the Trainer's -----------------------------------------------

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
        """Restore what `ppo_state` saved."""
        self._step = state["step"]
        self.iteration = state["iteration"]
        # Absent in checkpoints of runs without the running baseline written before it existed.
        if "return_statistics" in state:
            self.return_statistics.load_state_dict(state["return_statistics"])

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

    def write_model_files(self, output_dir: str, _internal_call: bool = True) -> None:
        """With a value head, the wrapper through its own `save_pretrained` (the policy as a loadable TIPPo model or PEFT
        adapter, and `value_head.safetensors`), then the processor and the training arguments; the Trainer would write
        the wrapper as one file of `policy.` / `value_head.` weights."""
        if not isinstance(self.model, PolicyAndValueModel):
            return super().write_model_files(output_dir, _internal_call)
        try:  # DeepSpeed: its consolidated state dict, gathered on every process (ZeRO-3 shards the weights)
            state_dict = self.accelerator.get_state_dict(self.deepspeed) if self.is_deepspeed_enabled else None
        except ValueError:  # ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the Trainer's fallback
            return super().write_model_files(output_dir, _internal_call)
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.model.save_pretrained(output_dir, state_dict=state_dict)
        self.processor.save_pretrained(output_dir)
        torch.save(redacted(self.args), os.path.join(output_dir, TRAINING_ARGS_NAME))

    # Private: no public hook loads the best model, and the Trainer's reads no value head (nor an adapter here).
    def _load_best_model(self):
        if not isinstance(self.model, PolicyAndValueModel) or self.is_deepspeed_enabled:  # DeepSpeed: the engine's own
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # Private: no public hook loads resumed weights, and the Trainer's reads no value head (nor an adapter here).
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        if not isinstance(self.model, PolicyAndValueModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.model.load_value_head(resume_from_checkpoint)
        # The Trainer loads the policy as the plain model (or adapter) it saved.
        super()._load_from_checkpoint(resume_from_checkpoint, self.model.policy)
