"""Configuration of [`PPOTrainer`]: `TrainingArguments` plus rollout, reward and PPO settings."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from transformers import TrainingArguments

from ..options import check_choice, option, parse_json_option
from ..rewards.reward_loading import check_reward_spec
from .tippo_trainer import GenerationEvalArguments, TIPPoTrainingArguments


KL_ESTIMATORS = ("k1", "k3")
ADVANTAGE_BASELINES = ("none", "running", "group", "leave_one_out", "greedy")
GROUP_BASELINES = ("group", "leave_one_out")  # need k ≥ 2 completions per prompt
SCALE_REWARDS = ("group", "batch", "none")  # TRL's GRPOConfig.scale_rewards
LOSS_TYPES = ("bnpo", "grpo", "dr_grpo", "dapo")  # TRL's GRPOConfig.loss_type values that apply to PPO's clipped loss
# `algorithm`: the options each published algorithm sets (unless given another value).
ALGORITHMS = {
    "ppo": dict(use_value_head=True, advantage_baseline="none"),  # critic + GAE, whitened advantages
    "grpo": dict(use_value_head=False, advantage_baseline="group", scale_rewards="group", num_generations=8),
    "dr_grpo": dict(
        use_value_head=False, advantage_baseline="group", scale_rewards="none", loss_type="dr_grpo", num_generations=8
    ),
    "rloo": dict(use_value_head=False, advantage_baseline="leave_one_out", num_generations=4),
    "scst": dict(use_value_head=False, advantage_baseline="greedy", num_generations=1),
}
# TRL's GRPOConfig names: {TRL's name: ours}. Given, they set ours (the same meaning).
TRL_ALIASES = {
    "beta": "kl_coef",
    "epsilon": "cliprange",
    "epsilon_high": "cliprange_high",
    "max_completion_length": "max_new_tokens",
    "num_iterations": "num_ppo_epochs",
}
DAA_LAMBDA_SCHEDULES = ("hold", "linear")
VALUE_HEAD_INITS = ("mean_return", "zero")
REWARD_COMPLETIONS_FORMATS = ("text", "conversational")


@dataclass
class PPOConfig(TIPPoTrainingArguments, TrainingArguments, GenerationEvalArguments):
    r"""
    [`PPOTrainer`] arguments: everything of [`transformers.TrainingArguments`] (optimizer, schedule, logging,
    checkpoints, `report_to`, accelerate/DeepSpeed) plus the fields below.

    One PPO *iteration* samples a rollout batch of `generation_batch_size` completions (over all processes), scores
    them, computes returns and advantages once, then takes `num_ppo_epochs` passes over it in `steps_per_generation`
    minibatches of `per_device_train_batch_size` per process. Optimizer steps happen every
    `gradient_accumulation_steps` minibatches, so an iteration is
    `num_ppo_epochs · steps_per_generation / gradient_accumulation_steps` optimizer steps.

    Parameters:
        > Rollouts

        steps_per_generation (`int`, *optional*):
            Minibatches per rollout batch (per process). Defaults to `gradient_accumulation_steps`. Exclusive with
            `generation_batch_size`.
        generation_batch_size (`int`, *optional*):
            Completions per rollout batch over all processes; a multiple of
            `per_device_train_batch_size · num_processes`. Exclusive with `steps_per_generation`.
        num_generations (`int`, defaults to `1`):
            k: completions sampled per prompt. A rollout batch holds `generation_batch_size / k` prompts, each repeated
            k times in a row with its columns (reference, title, images, id); every process's share holds whole groups,
            so `per_device_train_batch_size · steps_per_generation` must be a multiple of k.
        num_ppo_epochs (`int`, defaults to `2`):
            Passes over each rollout batch.
        total_iterations (`int`, *optional*):
            M, the number of PPO iterations of the run; sets `max_steps`. Leave unset to use `max_steps`.
        max_new_tokens (`int`, defaults to `64`):
            Most tokens a completion may have (EOS included).
        temperature (`float`, defaults to `1.0`), top_k (`int`, defaults to `0` = off), top_p (`float`, defaults to
        `1.0` = off):
            Sampling settings of the rollouts. The PPO ratio's log-probabilities are those of the distribution the
            tokens were sampled from: at the same temperature, and with top-k / top-p the same truncation,
            renormalised (TRL applies the temperature only, which makes truncated rollouts slightly off-policy).
        generation_kwargs (`dict`, *optional*):
            More `GenerationConfig` options for the rollouts (e.g. `{"repetition_penalty": 1.1}`).

        > Rewards

        reward_funcs (`list[str]`, *optional*):
            Reward plug-ins (`tippo_rl.rewards.load_reward` specs: `literal`, `semantic`, `module:function`, a dotted
            path `module.function` as in TRL's scripts, `path/file.py:function`). Callables may be passed to the
            trainer instead.
        reward_weights (`list[float]`, *optional*):
            One weight per reward; the sequence reward is Σ weight·reward. Defaults to 1 each.
        reward_init_kwargs (`dict`, *optional*):
            Arguments of class and factory plug-ins, keyed by spec:
            `{"rewards/image_grounded.py:ImageGroundedReward": {"model_name_or_path": "outputs/demo_sft"},
            "trl.rewards.get_repetition_penalty_reward": {"ngram_size": 2}}`.
        reward_completions_format (`str`, defaults to `"text"`):
            How rewards receive the completions: `text` (strings) or `conversational` (TRL's chat form, one assistant
            message per completion, `[{"role": "assistant", "content": text}]`), which TRL's `think_format_reward` and
            `accuracy_reward` read. The built-in rewards take either.

        > PPO

        cliprange (`float`, defaults to `0.2`):
            ε of the clipped surrogate: the ratio is clipped to [1 − ε, 1 + ε].
        kl_coef (`float`, defaults to `0.05`):
            β: weight of the KL penalty to the frozen starting policy, added to the loss. 0 drops the reference model.
        kl_estimator (`str`, defaults to `"k3"`):
            Per-token KL estimator: `k1` (log π − log π_ref) or `k3` (exp(log π_ref − log π) − (log π_ref − log π) − 1,
            unbiased and never negative).
        advantage_baseline (`str`, defaults to `"none"`):
            What is subtracted from the sequence return G without a value head. `none`: nothing (with
            `whiten_advantages`, the batch mean). `running`: Eq. 6, (G − μ) / (δ + ε) over the returns of the last
            `advantage_window` iterations. `group`: the prompt's k returns' mean and std, as GRPO. `leave_one_out`: the
            mean of the prompt's other k − 1 returns (RLOO). `greedy`: the return of the current policy's greedy decode
            of the same prompt, decoded in the rollout phase without gradients (SCST).
        advantage_window (`int`, *optional*):
            W of the `running` baseline: μ and δ over the returns of the last W iterations, the current one included.
            None (paper-literal): all iterations so far.
        advantage_scale (`str`, defaults to `"std"`):
            δ_m of Eq. 6 for the `running` baseline: `std`, the standard deviation of those returns (unit-scale Â,
            shared/method/TIPPo.md), or `variance`, the paper's word taken literally (Â then scales as 1/δ²).
        advantage_epsilon (`float`, defaults to `1e-8`):
            ε of Eq. 6 and of the `group` baseline's std.
        use_value_head (`bool`, defaults to `True`):
            Standard PPO: a value head V(s_t) on the decoder's last hidden states, trained with a clipped value loss,
            and GAE advantages. False: the advantage of every token is the sequence return (whitened, if
            `whiten_advantages`).
        vf_coef (`float`, defaults to `0.1`):
            Weight of the value loss.
        value_head_init (`str`, defaults to `"mean_return"`):
            `mean_return`: the value head starts at V ≡ the first rollout batch's mean return (a constant offset next to
            its zero-initialised weights), so GAE's first advantages have the sign of R − E[R] at every position.
            `zero`: V ≡ 0 at the start (the first advantages then encode position and length: Â_t = (γλ)^(T−1−t)·R,
            whitened, is negative at the first token of long completions).
        value_warmup_iterations (`int`, defaults to `0`):
            The first iterations update only the value head (the policy gets zero gradients). A value head that starts
            at V ≡ 0 makes GAE's first advantages encode position and length (the first token of long completions
            gets a negative whitened advantage); a warmed-up critic removes that bias before the policy moves.
        cliprange_value (`float`, defaults to `0.2`):
            Values may move at most this far from the rollout's values before their loss is clipped.
        gamma (`float`, defaults to `1.0`), lam (`float`, defaults to `0.95`):
            GAE's discount γ and λ (over tokens). Not PolishPPO's γ, which is `polish_gamma`.
        whiten_advantages (`bool`, *optional*):
            Normalise the advantages of each rollout batch to mean 0, standard deviation 1 (over all processes). Unset:
            on for GAE on a value head and for `advantage_baseline: none` (PPO's usual practice, where the batch mean
            is the only baseline), off for every other baseline, each of which is used as published: SCST's
            r(sample) − r(greedy) and RLOO's leave-one-out difference are not re-scaled, GRPO scales by the group std
            only as `scale_rewards` says, and Eq. 6 is already normalised. Re-centring a per-prompt baseline's
            advantages turns the many zero advantages (a sample equal to the greedy decode) into positive ones.
        scale_rewards (`str`, defaults to `"group"`):
            TRL's GRPO option, for `advantage_baseline: group`: divide by the std of the prompt's k returns (`group`,
            GRPO as published), of the whole rollout batch (`batch`), or not at all (`none`, Dr. GRPO).
        disable_dropout (`bool`, defaults to `True`):
            Switch dropout off in the policy, so that the rollout's log-probabilities, the policy's and the reference
            model's agree before any update (ratio 1, KL 0).
        ds3_gather_for_generation (`bool`, defaults to `True`):
            DeepSpeed ZeRO-3: gather the weights for generation (fast); False generates with sharded weights.

        > DAA

        daa_lambda_schedule (`str`, defaults to `"hold"`):
            λ1 of Eq. 2 during RL. `hold`: the starting model's value (SFT ends at λ1 = (M − 1)/M under the paper's m/M;
            restarting at 0 would move the starting policy away from the SFT model the KL penalty anchors to).
            `linear`: the paper's m/M over the RL stage. Logged as `daa/lambda1`.

        > Evaluation

        eval_max_samples, eval_generation_kwargs, eval_tokenize, eval_log_completions: see
            [`GenerationEvalArguments`]; with `eval_strategy: steps` and an eval dataset the trainer decodes the eval
            split and logs `eval_rouge_l`, `eval_cider`, `eval_literal` (usable as `metric_for_best_model`).

        > Data

        use_feature_cache (`bool`, defaults to `True`):
            Compute the frozen encoder φ's outputs once per dataset (the same results to float round-off, faster). Without it, φ still
            runs only once per rollout batch.
        feature_cache_dir (`str`, *optional*):
            Where cached features go (default `$TIPPO_RL_CACHE/features`, `~/.cache/tippo_rl/features`).
    """

    # -- rollouts ----------------------------------------------------------------------------------------------------
    steps_per_generation: int | None = option(
        None,
        "Minibatches per rollout batch, per process. Default: gradient_accumulation_steps. Exclusive with generation_batch_size.",
    )
    generation_batch_size: int | None = option(
        None,
        "Completions per rollout batch over all processes (a multiple of per_device_train_batch_size × processes). Exclusive with steps_per_generation.",
    )
    num_generations: int = option(
        1,
        "k: completions per prompt; each prompt appears k times in a row in a rollout batch (per-prompt baselines need k ≥ 2).",
    )
    encode_prompt_once: bool = option(
        True,
        "k > 1: each prompt runs once up to the decoder (φ, adapters, DAA, DO, fusion, T5's encoder) for its k completions, in generation and in every log-prob and loss forward (minibatches then hold whole groups: per_device_train_batch_size a multiple of k). False: once per completion (the same numbers, slower).",
    )
    num_ppo_epochs: int = option(2, "Passes over each rollout batch.")
    total_iterations: int | None = option(None, "M: PPO iterations of the run; sets max_steps. Unset: use max_steps.")
    max_new_tokens: int = option(64, "Most tokens per completion (EOS included).")
    temperature: float = option(1.0, "Sampling temperature of the rollouts (log-probs use it too).")
    top_k: int = option(0, "Top-k sampling of the rollouts; 0 = off.")
    top_p: float = option(1.0, "Nucleus sampling of the rollouts; 1.0 = off.")
    generation_kwargs: dict | str | None = option(
        None, 'More GenerationConfig options for the rollouts, e.g. {"repetition_penalty": 1.1}.'
    )

    # -- rewards -----------------------------------------------------------------------------------------------------
    reward_funcs: list[str] | None = option(
        None,
        "Reward plug-ins: `literal`, `semantic`, `repetition_penalty`, `module:function`, a dotted path (`trl.rewards.think_format_reward`) or `path/file.py:function`.",
    )
    reward_weights: list[float] | None = option(None, "One weight per reward function (default 1 each).")
    reward_init_kwargs: dict | str | None = option(
        None,
        'Arguments of class and factory plug-ins keyed by spec, e.g. {"trl.rewards.get_repetition_penalty_reward": {"ngram_size": 2}}.',
    )
    reward_completions_format: str = option(
        "text",
        'Completions as rewards receive them: `text` (strings) or `conversational` (TRL\'s [{"role": "assistant", "content": ...}], for trl.rewards.think_format_reward).',
    )

    # -- PPO ---------------------------------------------------------------------------------------------------------
    algorithm: str | None = option(
        None,
        "A published algorithm's settings in one flag (options given another value win): `ppo` (value head, GAE, whitened advantages), `grpo` (no critic, group baseline scaled by the group std, k = 8), `dr_grpo` (group baseline not scaled, loss_type dr_grpo), `rloo` (leave-one-out baseline, k = 4) or `scst` (the greedy decode's return as baseline).",
    )
    cliprange: float = option(0.2, "ε of the clipped surrogate: ratio clipped to [1 − ε, 1 + ε].")
    cliprange_high: float | None = option(
        None, "Upper clip ε_high (DAPO's clip-higher): ratio clipped to [1 − ε, 1 + ε_high]. Unset: ε."
    )
    loss_type: str = option(
        "bnpo",
        "How per-token losses are averaged (TRL's GRPO values): `bnpo` (over the minibatch's completion tokens), `grpo` (over each completion's tokens, then over completions: favours short completions with positive advantages), `dr_grpo` (sum over the minibatch's tokens / (completions × max_new_tokens)) or `dapo` (sum / the tokens of one optimizer step over all processes, TRL's default).",
    )
    mask_truncated_completions: bool = option(
        False, "Leave completions cut at max_new_tokens (no EOS) out of the loss (DAPO; TRL's option)."
    )
    skip_solved_prompts: bool = option(
        False,
        "Before training, decode every training prompt greedily with the starting policy and train only on those whose decode is not their `reference`. On a prompt the model already gets right, every sample tends to equal the greedy decode and carries no advantage, so most of a rollout batch teaches nothing (DAPO's dynamic sampling drops such groups during training; this drops them once, up front).",
    )
    log_completions: bool = option(
        False,
        "At every logging step: the latest rollout batch's prompts, completions and rewards as a console table, a wandb table (report_to wandb), TensorBoard text (report_to tensorboard) and rows of output_dir/completions.jsonl.",
    )
    num_completions_to_print: int | None = option(
        None, "log_completions: rows shown in the console and tables (None: all); the file gets all."
    )
    # TRL's GRPOConfig names (aliases: given, they set the option named in their help).
    beta: float | None = option(None, "TRL's name for kl_coef.")
    epsilon: float | None = option(None, "TRL's name for cliprange.")
    epsilon_high: float | None = option(None, "TRL's name for cliprange_high.")
    max_completion_length: int | None = option(None, "TRL's name for max_new_tokens.")
    num_iterations: int | None = option(None, "TRL's name for num_ppo_epochs.")
    use_vllm: bool = option(
        False,
        "TRL's option; refused: vLLM runs decoder-only LMs from their own weights, and a TIPPo decoder reads an image prefix built by the model (generation uses transformers' generate with its KV cache).",
    )
    kl_coef: float = option(0.05, "β: weight of the KL penalty to the frozen starting policy. 0 = no reference model.")
    kl_estimator: str = option("k3", "Per-token KL estimator: `k1` or `k3`.")
    advantage_baseline: str = option(
        "none",
        "Without a value head: `none`, `running` (Eq. 6 over the last advantage_window iterations), `group` (GRPO: per-prompt mean/std), `leave_one_out` (RLOO) or `greedy` (SCST: the greedy decode's return).",
    )
    advantage_window: int | None = option(
        None,
        "W of the `running` baseline: returns of the last W iterations (current included). None: all so far (paper).",
    )
    advantage_scale: str = option(
        "std", "δ_m of Eq. 6 (`running` baseline): `std` (unit-scale Â) or `variance` (the paper's word, literally)."
    )
    advantage_epsilon: float = option(1e-8, "ε of Eq. 6 (and of the `group` baseline's std).")
    use_value_head: bool = option(True, "Standard PPO: value head + clipped value loss + GAE advantages.")
    vf_coef: float = option(0.1, "Weight of the value loss.")
    value_head_init: str = option(
        "mean_return",
        "`mean_return` (V starts at the first batch's mean return: no position bias in the first advantages) or `zero` (V ≡ 0).",
    )
    value_warmup_iterations: int = option(
        0,
        "First iterations that update only the value head: a zero-initialised critic otherwise makes the first GAE advantages encode position and length.",
    )
    cliprange_value: float = option(0.2, "Clip range of the value loss around the rollout's values.")
    gamma: float = option(1.0, "GAE discount γ over tokens (not PolishPPO's polish_gamma).")
    lam: float = option(0.95, "GAE λ.")
    whiten_advantages: bool | None = option(
        None,
        "Normalise each rollout batch's advantages to mean 0, std 1. Unset: on for GAE (value head) and baseline `none`, off for the per-prompt baselines (used as published) and Eq. 6.",
    )
    scale_rewards: str = option(
        "group",
        "`group` baseline (TRL's GRPO option): divide by the std of the prompt's k returns (`group`), of the rollout batch (`batch`) or not at all (`none`).",
    )
    disable_dropout: bool = option(
        True, "Switch dropout off in the policy (ratio 1 and KL 0 before the first update)."
    )
    ds3_gather_for_generation: bool = option(True, "DeepSpeed ZeRO-3: gather the weights for generation.")

    # -- DAA ---------------------------------------------------------------------------------------------------------
    daa_lambda_schedule: str = option(
        "hold",
        "λ1 of Eq. 2 during RL: `hold` (the starting model's value: restarting m/M at 0 would move the start away from the SFT policy the KL anchors to) or `linear` (paper: m/M over the RL stage).",
    )

    # -- TrainingArguments defaults that differ for PPO ----------------------------------------------------------------
    learning_rate: float = option(1e-5, "AdamW learning rate (paper, PolishPPO: 1e-5).")
    logging_steps: float = option(10, "Log every X optimizer steps (a float in [0, 1) is a ratio of the run).")
    remove_unused_columns: bool = option(False, "Keep every dataset column: reward plug-ins receive them.")

    def __post_init__(self):
        self._resolve_tippo_fields()
        self._apply_trl_names_and_algorithm()
        for name in ("generation_kwargs", "reward_init_kwargs", "eval_generation_kwargs"):
            setattr(self, name, parse_json_option(name, getattr(self, name)))
        self._check_ppo_fields()
        if self.whiten_advantages is None:
            self.whiten_advantages = self.use_value_head or self.advantage_baseline == "none"
        if self.max_steps == 0 and self.total_iterations is None:
            raise ValueError(
                "max_steps 0 trains nothing: set --total_iterations (PPO iterations) or a positive --max_steps"
            )
        if self.total_iterations is not None:
            if self.max_steps > 0:
                raise ValueError(
                    f"set total_iterations ({self.total_iterations}) or max_steps ({self.max_steps}), not both"
                )
        super().__post_init__()

        world = self.world_size
        local = self.per_device_train_batch_size
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("generation_batch_size and steps_per_generation are exclusive; set one of them")
        if self.generation_batch_size is not None:
            if self.generation_batch_size % (local * world) != 0:
                raise ValueError(
                    f"generation_batch_size ({self.generation_batch_size}) must be a multiple of "
                    f"per_device_train_batch_size × processes ({local} × {world})"
                )
            self.steps_per_generation = self.generation_batch_size // (local * world)
        else:
            self.steps_per_generation = self.steps_per_generation or self.gradient_accumulation_steps
            self.generation_batch_size = local * world * self.steps_per_generation
        if self.steps_per_generation < 1:
            raise ValueError(f"steps_per_generation must be ≥ 1, got {self.steps_per_generation}")
        local_rollouts = local * self.steps_per_generation
        if local_rollouts % self.num_generations:
            raise ValueError(
                f"num_generations (k = {self.num_generations}) must divide each process's rollout batch, "
                f"per_device_train_batch_size × steps_per_generation = {local} × {self.steps_per_generation} = "
                f"{local_rollouts}: every process must hold whole groups of k completions of one prompt"
            )

        if self.total_iterations is not None:
            # An iteration is steps_per_generation × num_ppo_epochs minibatches.
            self.max_steps = math.ceil(
                self.total_iterations * self.minibatches_per_iteration / self.gradient_accumulation_steps
            )
        if self.save_strategy == "steps" and self.save_steps and self.save_steps >= 1:
            if (int(self.save_steps) * self.gradient_accumulation_steps) % self.minibatches_per_iteration:
                warnings.warn(
                    f"save_steps ({self.save_steps}) does not end on a PPO iteration (one iteration is "
                    f"{self.minibatches_per_iteration / self.gradient_accumulation_steps:g} optimizer steps): a run "
                    "resumed from such a checkpoint samples that iteration's rollouts again",
                    stacklevel=2,
                )

    def _apply_trl_names_and_algorithm(self) -> None:
        """TRL's GRPO names onto ours, then `algorithm`'s settings onto the options still at their defaults."""
        if self.use_vllm:
            raise ValueError(
                "use_vllm: vLLM cannot generate with TIPPo: it runs decoder-only LMs from their own weights, and a TIPPo "
                "decoder reads an image prefix the model builds (and is a T5 by default); rollouts use transformers' "
                "generate with its KV cache. Leave use_vllm false"
            )
        for trl_name, ours in TRL_ALIASES.items():
            value = getattr(self, trl_name)
            if value is not None:
                setattr(self, ours, value)
        if isinstance(self.scale_rewards, bool) or self.scale_rewards in ("true", "false", "True", "False"):
            self.scale_rewards = "group" if str(self.scale_rewards).lower() == "true" else "none"  # TRL's old bool
        if self.algorithm is None:
            return
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {self.algorithm!r}")
        defaults = {name: field.default for name, field in self.__dataclass_fields__.items()}
        for name, value in ALGORITHMS[self.algorithm].items():
            if getattr(self, name) == defaults[name]:
                setattr(self, name, value)

    def _check_ppo_fields(self):
        if self.num_ppo_epochs < 1:
            raise ValueError(f"num_ppo_epochs must be ≥ 1, got {self.num_ppo_epochs}")
        if self.total_iterations is not None and self.total_iterations < 1:
            raise ValueError(f"total_iterations must be ≥ 1, got {self.total_iterations}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.reward_weights is not None and self.reward_funcs is not None:
            if len(self.reward_weights) != len(self.reward_funcs):
                raise ValueError(
                    f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} reward_funcs "
                    f"({', '.join(self.reward_funcs)}); give one weight per reward"
                )
        if self.reward_init_kwargs is not None:
            if not isinstance(self.reward_init_kwargs, dict) or not all(
                isinstance(kwargs, dict) for kwargs in self.reward_init_kwargs.values()
            ):
                raise ValueError(
                    "reward_init_kwargs must map a reward spec to a dict of constructor arguments, got "
                    f"{self.reward_init_kwargs!r}"
                )
            unknown = set(self.reward_init_kwargs) - set(self.reward_funcs or [])
            if unknown and self.reward_funcs is not None:  # rewards may also be handed to the trainer directly
                raise ValueError(
                    f"reward_init_kwargs names {', '.join(sorted(unknown))}, which is not in reward_funcs "
                    f"({', '.join(self.reward_funcs or []) or 'empty'})"
                )
        for spec in self.reward_funcs or []:
            if isinstance(spec, str):  # its module, name and signature, before any model is loaded
                check_reward_spec(spec, **(self.reward_init_kwargs or {}).get(spec, {}))
        check_choice("reward_completions_format", self.reward_completions_format, REWARD_COMPLETIONS_FORMATS)
        if not 0 < self.cliprange < 1:
            raise ValueError(f"cliprange (ε, TRL's epsilon) must lie in (0, 1), got {self.cliprange}")
        if self.cliprange_high is not None and self.cliprange_high <= 0:
            raise ValueError(f"cliprange_high (ε_high, TRL's epsilon_high) must be > 0, got {self.cliprange_high}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"loss_type must be one of {', '.join(LOSS_TYPES)} (TRL's cispo, sapo, luspo and vespo change the "
                f"surrogate itself and are not implemented here); got {self.loss_type!r}"
            )
        if self.num_completions_to_print is not None and self.num_completions_to_print < 0:
            raise ValueError(f"num_completions_to_print must be ≥ 0, got {self.num_completions_to_print}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef (β) must be ≥ 0, got {self.kl_coef}")
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        if self.vf_coef < 0:
            raise ValueError(f"vf_coef must be ≥ 0, got {self.vf_coef}")
        if self.cliprange_value <= 0:
            raise ValueError(f"cliprange_value must be > 0, got {self.cliprange_value}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma (GAE's γ) must lie in [0, 1], got {self.gamma}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam (GAE's λ) must lie in [0, 1], got {self.lam}")
        if self.num_generations < 1:
            raise ValueError(f"num_generations (k) must be ≥ 1, got {self.num_generations}")
        check_choice("advantage_baseline", self.advantage_baseline, ADVANTAGE_BASELINES)
        if self.advantage_baseline in GROUP_BASELINES and self.num_generations < 2:
            raise ValueError(
                f"advantage_baseline {self.advantage_baseline!r} compares the k completions of one prompt: set "
                f"num_generations ≥ 2 (got {self.num_generations})"
            )
        if self.use_value_head and self.advantage_baseline != "none":
            raise ValueError(
                f"advantage_baseline {self.advantage_baseline!r} replaces the critic: set use_value_head false, or "
                "advantage_baseline none for GAE on the value head"
            )
        check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        if self.advantage_window is not None and self.advantage_window < 1:
            raise ValueError(f"advantage_window (W) must be ≥ 1 or None (all iterations), got {self.advantage_window}")
        if self.advantage_scale not in ("std", "variance"):
            raise ValueError(
                f"advantage_scale must be `std` or `variance` (δ_m of Eq. 6), got {self.advantage_scale!r}"
            )
        if self.advantage_epsilon <= 0:
            raise ValueError(f"advantage_epsilon (ε) must be > 0, got {self.advantage_epsilon}")
        check_choice("value_head_init", self.value_head_init, VALUE_HEAD_INITS)
        if self.value_warmup_iterations < 0:
            raise ValueError(f"value_warmup_iterations must be ≥ 0, got {self.value_warmup_iterations}")
        if self.value_warmup_iterations and not self.use_value_head:
            raise ValueError("value_warmup_iterations warms up the value head: set use_value_head true, or 0")
        check_choice("daa_lambda_schedule", self.daa_lambda_schedule, DAA_LAMBDA_SCHEDULES)
        self._check_generation_eval_fields()

    @property
    def minibatches_per_iteration(self) -> int:
        """Minibatches (forward + backward passes per process) of one PPO iteration."""
        return self.steps_per_generation * self.num_ppo_epochs
