"""Configuration of the TIPPo SFT stage: TRL's `SFTConfig` plus the prototype contrastive loss and the DAA schedule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trl import SFTConfig

from ..configuration_tippo import check_contrastive_loss_settings
from ..options import check_choice, option
from .tippo_trainer import GenerationEvalArguments, TIPPoTrainingArguments


LAMBDA_SCHEDULES = ("linear", "constant")
# SFTConfig's text-pipeline options, which TIPPo's own collator never reads: what a user who sets one wants instead.
NOT_FOR_TIPPO = {
    "max_length": "the reference's token limit is --max_target_length",
    "dataset_text_field": "the target column is named with --reference_column (--dataset_name)",
    "completion_only_loss": "TIPPo's loss is always on the reference tokens only",
    "assistant_only_loss": "TIPPo's loss is always on the reference tokens only",
    "packing": "TIPPo batches samples of images, never packed sequences",
    "padding_free": "TIPPo batches samples of images, never packed sequences",
    "truncation_mode": "references keep their start (--max_target_length)",
    "chat_template_path": "TIPPo applies no chat template",
    "eos_token": "the decoder's tokenizer sets EOS",
    "pad_token": "the decoder's tokenizer sets padding",
}


@dataclass
class TIPPoSFTConfig(TIPPoTrainingArguments, SFTConfig, GenerationEvalArguments):
    r"""
    [`TIPPoSFTTrainer`] arguments: everything of [`trl.SFTConfig`] / [`transformers.TrainingArguments`], plus:

    Parameters:
        contrastive_weight (`float`, defaults to `1.0`):
            α in L_SFT = L_NTP + α·L_C (paper: 1). 0 switches the contrastive loss off.
        contrastive_temperature (`float`, defaults to `1.0`):
            τ of Eq. 5 (paper: 1, no temperature).
        contrastive_negatives (`str`, defaults to `"batch"`):
            The sum over j in Eq. 5's denominator: `batch` runs over every real image of the batch (the paper's text:
            "other samples within the same batch as the negative anchors"), `own_images` over the sample's own
            images only (Eq. 5 as written).
        contrastive_gather (`bool`, defaults to `False`):
            Under DDP, add the other processes' image signals (gathered, without gradient) to the `batch`
            negatives, so L_C sees the global batch. False: each process's micro-batch only.
        daa_lambda_schedule (`str`, defaults to `"linear"`):
            How λ1 of Eq. 2 moves: `linear` is the paper's m/M over the stage; `constant` holds `daa_lambda1_constant`.
        daa_lambda1_constant (`float`, defaults to `0.5`):
            λ1 for the `constant` schedule. (The model's own `daa_lambda1` is the value this stage last set.)
        use_feature_cache (`bool`, defaults to `True`):
            Compute the frozen encoder's outputs once per dataset and train from them (the same results to float round-off, faster).
        feature_cache_dir (`str`, *optional*):
            Where cached features go (default `$TIPPO_RL_CACHE/features`, `~/.cache/tippo_rl/features`).
        eval_generation_metrics (`bool`, defaults to `True`):
            At each evaluation, also decode the eval split and log `eval_rouge_l`, `eval_cider`, `eval_literal`
            (`eval_max_samples`, `eval_generation_kwargs`, `eval_tokenize`, `eval_log_completions`: see
            [`GenerationEvalArguments`]), so `metric_for_best_model: eval_rouge_l` keeps the best greedy checkpoint.
    """

    contrastive_weight: float = option(
        1.0, "α: weight of the prototype contrastive loss L_C (Eq. 5) in L_SFT = L_NTP + α·L_C. Paper: 1."
    )
    contrastive_temperature: float = option(1.0, "τ: temperature of L_C (Eq. 5). Paper: 1 (none).")
    contrastive_negatives: str = option(
        "batch",
        "Eq. 5's negatives: `batch` (every real image of the batch, paper's text) or `own_images` (the sample's own, Eq. 5 as written).",
    )
    contrastive_gather: bool = option(
        False, "DDP: other processes' image signals (no gradient) join L_C's `batch` negatives."
    )
    daa_lambda_schedule: str = option(
        "linear", "λ1 of Eq. 2: `linear` (paper, m/M over the stage) or `constant` (`daa_lambda1_constant`)."
    )
    daa_lambda1_constant: float = option(0.5, "λ1 for `daa_lambda_schedule: constant`, in [0, 1].")

    # TIPPo batches are built by its own collator from images, not by SFTTrainer's text pipeline.
    remove_unused_columns: bool = option(False, "Keep every dataset column for TIPPo's collator.")
    dataset_kwargs: dict | None = option(
        default_factory=lambda: {"skip_prepare_dataset": True},
        help="TIPPo datasets are used as they are (no SFT text preparation).",
    )
    eval_generation_metrics: bool = option(
        True, "At each evaluation also decode the eval split: eval_rouge_l, eval_cider, eval_literal."
    )
    prediction_loss_only: bool = option(
        True, "The evaluation loop reports losses (generation metrics: eval_generation_metrics)."
    )
    # transformers 5's name; `gradient_checkpointing` (TRL's SFTConfig defaults it to True) is its deprecated alias and
    # warns whenever it is set, so it is left unset here. activation_checkpointing defaults to None (off), as in
    # TrainingArguments, which reads the alias only while the new name is None: a default of False dropped a
    # `gradient_checkpointing: true` without a word.
    gradient_checkpointing: bool | None = option(
        None, "Deprecated alias of activation_checkpointing (transformers warns when it is set)."
    )
    activation_checkpointing: bool | None = option(
        None,
        "Recompute activations in the backward pass to save memory (+22–26% step time measured; by the estimate of benchmarks/RESULTS.md §4, not measured on a GPU, real-size SFT at batch 8 fits 24 GB without it). Unset: off.",
    )

    def __post_init__(self):
        defaults = {
            field.name: field.default for field in dataclasses.fields(SFTConfig) if field.name in NOT_FOR_TIPPO
        }
        for name, instead in NOT_FOR_TIPPO.items():
            if getattr(self, name) != defaults[name]:
                raise ValueError(f"--{name} is an option of TRL's text SFT that TIPPo does not use: {instead}")
        self._resolve_tippo_fields()
        if self.max_steps == 0:
            raise ValueError(
                "max_steps 0 trains nothing: set --max_steps to the number of optimizer steps, or -1 to train --num_train_epochs epochs"
            )
        # The trainer writes these into the model's config, whose forward computes L_SFT: one check for both.
        check_contrastive_loss_settings(
            self.contrastive_weight, self.contrastive_temperature, self.contrastive_negatives
        )
        if self.contrastive_gather and self.contrastive_negatives != "batch":
            raise ValueError(
                "contrastive_gather adds other processes' images to the `batch` negatives; `own_images` has none"
            )
        check_choice("daa_lambda_schedule", self.daa_lambda_schedule, LAMBDA_SCHEDULES)
        if not 0.0 <= self.daa_lambda1_constant <= 1.0:
            raise ValueError(f"daa_lambda1_constant (λ1) must lie in [0, 1], got {self.daa_lambda1_constant}")
        self._check_generation_eval_fields()
        super().__post_init__()
