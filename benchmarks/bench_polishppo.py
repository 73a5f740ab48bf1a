"""One PolishPPO iteration, phase by phase, against TRL's `GRPOTrainer` on a causal LM of about the same size.

An iteration is: generate a rollout batch → score it (literal reward, Eq. 7; semantic reward, Eq. 8) → old and
reference log-probs → `num_ppo_epochs` passes of minibatch updates. The trainers are not edited: their step methods
are wrapped on the instance with timers (`timing.PhaseTimer`):

| phase          | PolishPPOTrainer                           | GRPOTrainer                                          |
|----------------|--------------------------------------------|------------------------------------------------------|
| generation     | `generate_rollouts` (generate + decode)    | `_generate` (tokenize, generate, decode)             |
| logprobs/old   | `compute_rollout_log_probs` minus the ref  | `_get_per_token_logps_and_entropies(model)` in a rollout |
| logprobs/ref   | `_reference_log_probs`                     | `_get_per_token_logps_and_entropies(ref_model)`      |
| reward         | `score_rollouts` (all plug-ins + checks)   | `_calculate_rewards`                                 |
| reward/<name>  | each reward function                       | each reward function                                 |
| rollout        | `make_rollout_batch` (all of the above)    | `_generate_and_score_completions`                    |
| update         | Σ `training_step` − rollout (fwd + bwd)    | the same                                             |
| other          | iteration − Σ `training_step` (clip, Adam, data, logging) | the same                              |

Variants, alternating in rounds in one process:

* `polishppo/natural`: the demo recipe's PolishPPO (`demo_polishppo.yaml`: batch 32 × 2 minibatches, 2 PPO epochs,
  ≤ 48 new tokens, β 0.2, literal + semantic with the bundled all-MiniLM-L6-v2, by default at tiny size through its
  static distillation as in the demo, `--semantic_backend flagembedding` for the encoder itself) from a policy warmed up by a short SFT, so completions end where the
  policy puts EOS, as in the demo; the semantic reward's reference cache is warm (every reference seen before, as
  after the first epoch).
* `polishppo/natural-cold`: the same with the reference cache emptied before every iteration (the first epoch).
* `polishppo/fixed` and `grpo/fixed`: every completion exactly `max_new_tokens` long (`min_new_tokens`), so both
  trainers do the same work: the yardstick comparison. GRPO: a `LlamaForCausalLM` from a config with about the policy's
  parameter count, the decoder tokenizer, prompts of about the TIPPo prefix's length, `num_generations` 2 (half as many
  prompts × 2 = the same number of completions per rollout batch), `num_iterations` = `num_ppo_epochs`, β = `kl_coef`,
  the same reward functions.

    python benchmarks/bench_polishppo.py --output benchmarks/results/polishppo_tiny.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: benchmarks never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from machine import run_in_workdir  # noqa: E402
from memory import PeakMemory, optimizer_state_bytes, parameter_counts, tensor_bytes  # noqa: E402
from tables import fmt, median, paired_ratios, print_table, write_json  # noqa: E402
from timing import IterationTimes, PhaseTimer  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from workload import lengthen  # noqa: E402

from tippo_rl import load_artmuse, make_demo_dataset  # noqa: E402
from tippo_rl.presets import build_tiny_tippo, build_tippo_by_size  # noqa: E402
from tippo_rl.rewards import SemanticReward, literal  # noqa: E402
from tippo_rl.trainer.polishppo_config import PolishPPOConfig, default_semantic_model  # noqa: E402
from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer  # noqa: E402
from tippo_rl.trainer.sft_config import TIPPoSFTConfig  # noqa: E402
from tippo_rl.trainer.sft_trainer import TIPPoSFTTrainer  # noqa: E402


PHASES = (
    "generation",
    "logprobs/old",
    "logprobs/ref",
    "reward/literal",
    "reward/semantic",
    "reward",
    "update",
    "other",
)
DEFAULTS = {
    "tiny": dict(
        batch_size=32,
        steps_per_generation=2,
        num_ppo_epochs=2,
        max_new_tokens=48,
        sft_steps=200,
        semantic_backend="static",
        iterations=2,
        rounds=6,
        threads=1,
        variants=["polishppo/natural", "polishppo/natural-cold", "polishppo/fixed", "grpo/fixed"],
    ),
    "base": dict(
        batch_size=8,
        steps_per_generation=2,
        num_ppo_epochs=2,
        max_new_tokens=48,
        sft_steps=0,
        semantic_backend="flagembedding",
        iterations=1,
        rounds=2,
        threads=0,
        variants=["polishppo/fixed", "grpo/fixed"],
    ),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(DEFAULTS), default="tiny")
    parser.add_argument(
        "--batch_size", type=int, help="per_device_train_batch_size (minibatch); default tiny 32 (the demo's)"
    )
    parser.add_argument("--kl_coef", type=float, default=0.2, help="β of PolishPPO and GRPO (the demo's: 0.2)")
    parser.add_argument("--steps_per_generation", type=int, help="minibatches per rollout batch")
    parser.add_argument("--num_ppo_epochs", type=int)
    parser.add_argument("--max_new_tokens", type=int)
    parser.add_argument("--sft_steps", type=int, help="SFT steps that warm up the tiny policy (0: random policy)")
    parser.add_argument("--iterations", type=int, help="measured iterations per train() call")
    parser.add_argument(
        "--warmup_iterations", type=int, default=1, help="iterations dropped at the start of each call"
    )
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--semantic_backend",
        choices=["flagembedding", "static"],
        help="R_semantic from the encoder or its static distillation; default tiny static (the demo's), base flagembedding",
    )
    parser.add_argument(
        "--semantic_model",
        help="R_semantic's embedder (hub id or folder); default: the bundled all-MiniLM-L6-v2 when installed, else BGE",
    )
    parser.add_argument("--prompt_words", type=int, default=20, help="GRPO prompt length in words (≈ tokens)")
    parser.add_argument(
        "--decoder",
        choices=["t5", "llama"],
        default="t5",
        help="t5: TIPPo's T5 against a Llama grown to the policy's parameter count (not the same decoder); llama (tiny "
        "only): TIPPo with the tiny preset's Llama decoder against TRL's GRPO on that very Llama (the same decoder, "
        "the same weights: the fair comparison)",
    )
    parser.add_argument(
        "--num_generations",
        type=int,
        default=1,
        help="k completions per prompt for PolishPPO (GRPO: max(k, 2), with as many completions per rollout batch)",
    )
    parser.add_argument("--num_train", type=int, default=64)
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--output", type=Path, help="JSON results (default: benchmarks/results/polishppo_<size>.json)")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.output = args.output or Path(f"benchmarks/results/polishppo_{args.size}.json")
    args.semantic_model = args.semantic_model or default_semantic_model()
    return args


def common_args(args, output_dir: str) -> dict:
    gpu = torch.cuda.is_available()
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        steps_per_generation=args.steps_per_generation,
        gradient_accumulation_steps=1,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        temperature=1.0,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=not gpu,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        activation_checkpointing=False,
    )


def warm_up_policy(model, processor, dataset, args, workdir: Path):
    """A short SFT (the demo recipe's settings) so that the tiny policy writes demo-like completions that end with EOS."""
    config = TIPPoSFTConfig(
        output_dir=str(workdir / "sft"),
        max_steps=args.sft_steps,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=15,
        weight_decay=0.0,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        activation_checkpointing=False,
        feature_cache_dir=str(workdir / "features"),
    )
    trainer = TIPPoSFTTrainer(model=model, args=config, processor=processor, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return model.cpu().eval()


def causal_yardstick(policy_params: int, processor, size: str, workdir: Path) -> tuple[str, int]:
    """A LlamaForCausalLM from a config with about `policy_params` parameters, saved (GRPO rebuilds its reference
    model from the policy's path). Returns (path, parameter count)."""
    tokenizer = processor.tokenizer
    if size == "tiny":
        width, vocab, layers = 64, len(tokenizer), 1
        config = lambda n: LlamaConfig(  # noqa: E731
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=n,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
    else:
        width, vocab, layers = 768, 32128, 1
        config = lambda n: LlamaConfig(  # noqa: E731
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=2048,
            num_hidden_layers=n,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
    # Add layers until the parameter count reaches the policy's.
    while True:
        with torch.device("meta"):
            count = sum(p.numel() for p in LlamaForCausalLM(config(layers)).parameters())
        if count >= policy_params or layers >= 64:
            break
        layers += 1
    torch.manual_seed(0)
    model = LlamaForCausalLM(config(layers))
    path = workdir / "llama"
    model.save_pretrained(path)
    return str(path), sum(p.numel() for p in model.parameters())


def record_completions(trainer: PolishPPOTrainer) -> list[dict]:
    """Wrap `generate_rollouts` to keep each rollout batch's mean completion length and a few completions."""
    generate, records = trainer.generate_rollouts, []

    def recording(batch):
        rollouts = generate(batch)
        records.append(
            dict(
                mean_length=rollouts["completion_mask"].sum(1).float().mean().item(),
                distinct=len(set(rollouts["completions"])),
                examples=rollouts["completions"][:3],
            )
        )
        return rollouts

    trainer.generate_rollouts = recording
    return records


def time_polishppo(trainer: PolishPPOTrainer, timer: PhaseTimer) -> None:
    timer.wrap(trainer, "generate_rollouts", "generation")
    timer.wrap(trainer, "score_rollouts", "reward")
    timer.wrap(trainer, "compute_rollout_log_probs", "logprobs")
    timer.wrap(trainer, "_reference_log_probs", "logprobs/ref")
    timer.wrap(trainer, "make_rollout_batch", "rollout")
    timer.wrap(trainer, "training_step", "train_step")
    trainer.reward_funcs = [
        timer.wrap_callable(f, f"reward/{name}") for f, name in zip(trainer.reward_funcs, trainer.reward_names)
    ]


def time_grpo(trainer: GRPOTrainer, timer: PhaseTimer) -> None:
    timer.wrap(trainer, "_generate", "generation")
    timer.wrap(trainer, "_calculate_rewards", "reward")
    timer.wrap(
        trainer,
        "_get_per_token_logps_and_entropies",
        lambda model, *a, **k: "logprobs/ref" if model is trainer.ref_model else "logprobs/old",
        nested_in="rollout",
    )
    timer.wrap(trainer, "_generate_and_score_completions", "rollout")
    timer.wrap(trainer, "training_step", "train_step")
    # (the reward functions are wrapped before the trainer is built: GRPO keeps them in several places)


def breakdown(iteration: dict, cpu: bool = False) -> dict[str, float]:
    """Phase times of one iteration, with update = Σ training_step − rollout and other = iteration − Σ training_step."""
    phases = iteration["phases_cpu_s" if cpu else "phases_s"]
    total = iteration["cpu_s" if cpu else "wall_s"]
    out = {
        name: phases.get(name, 0.0)
        for name in ("generation", "logprobs/ref", "reward", "reward/literal", "reward/semantic")
    }
    out["logprobs/old"] = phases.get("logprobs/old", phases.get("logprobs", 0.0) - phases.get("logprobs/ref", 0.0))
    out["update"] = phases.get("train_step", 0.0) - phases.get("rollout", 0.0)
    out["other"] = total - phases.get("train_step", 0.0)
    out["iteration"] = total
    return out


def main(argv=None) -> dict:
    return run_in_workdir(parse_args(argv), run, prefix="bench_polishppo_")


def run(args, info: dict, workdir: Path) -> dict:
    print(
        f"bench_polishppo: size {args.size}, rollout batch {args.batch_size}×{args.steps_per_generation}, "
        f"{args.num_ppo_epochs} PPO epochs, ≤{args.max_new_tokens} new tokens; {args.rounds} rounds × "
        f"({args.warmup_iterations} + {args.iterations}) iterations; {info['cpu']} ×{info['cpu_count']}, GPU {info['gpu']}"
    )

    if args.decoder == "llama":
        if args.size != "tiny":
            raise SystemExit("--decoder llama: the tiny size only (the paper's sizes are T5)")
        model, processor = build_tiny_tippo(decoder="llama", seed=0)
    else:
        model, processor = build_tippo_by_size(args.size)
    dataset = load_artmuse(make_demo_dataset(workdir / "demo", num_train=args.num_train, num_test=1) / "train.jsonl")
    if args.sft_steps:
        model = warm_up_policy(model, processor, dataset, args, workdir)
    if args.size == "base":
        # The tiny tokenizer has 512 tokens, T5-base 32128: sample only tokens that decode to text.
        suppress = list(range(len(processor.tokenizer), model.config.vocab_size))
    else:
        suppress = None
    generation_kwargs = {"suppress_tokens": suppress} if suppress else None

    steps_per_iteration = args.steps_per_generation * args.num_ppo_epochs
    timers, recorders, trainers = {}, {}, {}
    semantic_reward = None
    wanted = {variant.split("/")[0] for variant in args.variants}

    if "polishppo" in wanted:
        timers["polishppo"] = PhaseTimer()
        config = PolishPPOConfig(
            **common_args(args, str(workdir / "polishppo")),
            num_ppo_epochs=args.num_ppo_epochs,
            max_steps=(args.warmup_iterations + args.iterations) * steps_per_iteration,
            max_new_tokens=args.max_new_tokens,
            reward_funcs=["literal", "semantic"],
            kl_coef=args.kl_coef,
            feature_cache_dir=str(workdir / "features"),
            generation_kwargs=generation_kwargs,
            semantic_backend=args.semantic_backend,
            semantic_model=args.semantic_model,
            num_generations=args.num_generations,
        )
        trainer = PolishPPOTrainer(copy.deepcopy(model), config, processor, dataset)
        semantic_reward = trainer.reward_funcs[trainer.semantic_index]  # a SemanticReward, before it is wrapped
        time_polishppo(trainer, timers["polishppo"])
        completions = record_completions(trainer)
        trainers["polishppo"] = trainer

    if "grpo" in wanted:
        timers["grpo"] = PhaseTimer()
        if args.decoder == "llama":  # GRPO trains TIPPo's own Llama decoder, from the same weights
            llama_path = str(workdir / "llama")
            copy.deepcopy(model.language_model).save_pretrained(llama_path)
        else:
            policy_params = parameter_counts(model)["trainable"]
            llama_path, _ = causal_yardstick(policy_params, processor, args.size, workdir)
        tokenizer = copy.deepcopy(processor.tokenizer)
        tokenizer.padding_side = "left"
        prompts = Dataset.from_dict(
            {
                "prompt": [lengthen(title, args.prompt_words) for title in dataset["title"]],
                "reference": dataset["reference"],
            }
        )
        semantic = SemanticReward(args.semantic_model, backend=args.semantic_backend)
        rewards = [
            timers["grpo"].wrap_callable(literal, "reward/literal"),
            timers["grpo"].wrap_callable(semantic, "reward/semantic"),
        ]
        config = GRPOConfig(
            **common_args(args, str(workdir / "grpo")),
            num_generations=max(args.num_generations, 2),
            num_iterations=args.num_ppo_epochs,
            max_steps=(args.warmup_iterations + args.iterations) * steps_per_iteration,
            max_completion_length=args.max_new_tokens,
            beta=args.kl_coef,
            top_k=0,
            top_p=1.0,
            generation_kwargs={"min_new_tokens": args.max_new_tokens, **(generation_kwargs or {})},
        )
        trainer = GRPOTrainer(
            model=llama_path, reward_funcs=rewards, args=config, train_dataset=prompts, processing_class=tokenizer
        )
        time_grpo(trainer, timers["grpo"])
        trainers["grpo"] = trainer

    for kind, trainer in trainers.items():
        recorders[kind] = IterationTimes(steps_per_iteration, timers[kind])
        trainer.add_callback(recorders[kind])
        trainer.remove_callback(PrinterCallback)

    iterations = {variant: [] for variant in args.variants}
    samples = {variant: [] for variant in args.variants}
    memory = {variant: [] for variant in args.variants}
    for round_index in range(args.rounds):
        order = args.variants if round_index % 2 == 0 else list(reversed(args.variants))
        for variant in order:
            kind, mode = variant.split("/")
            trainer = trainers[kind]
            if kind == "polishppo":
                trainer.generation_config.min_new_tokens = args.max_new_tokens if mode == "fixed" else None
                _set_cold_cache(trainer, semantic_reward, mode == "natural-cold")
                completions.clear()
            with PeakMemory() as peak:
                trainer.train()
            memory[variant].append(peak.delta)
            measured = recorders[kind].iterations[args.warmup_iterations :]
            iterations[variant] += measured
            if kind == "polishppo":
                samples[variant] += completions[args.warmup_iterations :]
            print(
                f"  round {round_index + 1}/{args.rounds} {variant:<24} median iteration "
                f"{fmt(median(i['wall_s'] for i in measured), '.3f')} s (CPU {fmt(median(i['cpu_s'] for i in measured), '.3f')} s)"
            )

    results = {}
    for variant, records in iterations.items():
        wall = [breakdown(r) for r in records]
        cpu = [breakdown(r, cpu=True) for r in records]
        phase_wall = {name: median(b[name] for b in wall) for name in (*PHASES, "iteration")}
        phase_cpu = {name: median(b[name] for b in cpu) for name in (*PHASES, "iteration")}
        reward_share = [b["reward"] / b["iteration"] for b in wall]
        reward_share_cpu = [b["reward"] / b["iteration"] for b in cpu]
        results[variant] = dict(
            iteration_s_median=phase_wall["iteration"],
            iterations_per_s=1 / phase_wall["iteration"],
            iteration_cpu_s_median=phase_cpu["iteration"],
            phases_s_median=phase_wall,
            phases_cpu_s_median=phase_cpu,
            reward_share_median=median(reward_share),
            reward_share_cpu_median=median(reward_share_cpu),
            completion_mean_length=median(c["mean_length"] for c in samples[variant])
            if samples[variant]
            else args.max_new_tokens,
            distinct_completions_per_batch=median(c["distinct"] for c in samples[variant])
            if samples[variant]
            else None,
            example_completions=samples[variant][-1]["examples"] if samples[variant] else None,
            memory_transient_peak_bytes=max(memory[variant][1:] or memory[variant]),
            memory_transient_all_rounds=memory[variant],
            iterations=records,
        )

    def per_iteration_ratio(numerator: str, denominator: str, cpu: bool = False, without_reward: bool = False):
        if numerator not in iterations or denominator not in iterations:
            return None

        def value(record):
            b = breakdown(record, cpu)
            return b["iteration"] - (b["reward"] if without_reward else 0.0)

        # Pair the iterations measured in the same round (one train() call each, alternating).
        per_round_a = _per_round(iterations[numerator], args.iterations, value)
        per_round_b = _per_round(iterations[denominator], args.iterations, value)
        return median(paired_ratios(per_round_a, per_round_b))

    ratios = dict(
        polishppo_over_grpo=per_iteration_ratio("polishppo/fixed", "grpo/fixed"),
        polishppo_over_grpo_cpu=per_iteration_ratio("polishppo/fixed", "grpo/fixed", cpu=True),
        polishppo_over_grpo_without_reward=per_iteration_ratio("polishppo/fixed", "grpo/fixed", without_reward=True),
        polishppo_over_grpo_without_reward_cpu=per_iteration_ratio(
            "polishppo/fixed", "grpo/fixed", cpu=True, without_reward=True
        ),
    )

    print()
    table = print_table(
        ["variant", "iter s", "iter/s", "compl. len", *PHASES, "reward %", "reward % (CPU time)"],
        [
            [
                v,
                fmt(r["iteration_s_median"], ".3f"),
                fmt(r["iterations_per_s"], ".2f"),
                fmt(r["completion_mean_length"], ".1f"),
                *(fmt(r["phases_s_median"][p], ".3f") for p in PHASES),
                fmt(100 * r["reward_share_median"], ".1f"),
                fmt(100 * r["reward_share_cpu_median"], ".1f"),
            ]
            for v, r in results.items()
        ],
    )
    print(
        f"\nPolishPPO / GRPO iteration time (fixed lengths, per-round median): wall {fmt(ratios['polishppo_over_grpo'], '.3f')}, "
        f"CPU {fmt(ratios['polishppo_over_grpo_cpu'], '.3f')}; without reward scoring: wall "
        f"{fmt(ratios['polishppo_over_grpo_without_reward'], '.3f')}, CPU {fmt(ratios['polishppo_over_grpo_without_reward_cpu'], '.3f')}"
    )
    print("target: reward scoring < 10% of a PolishPPO iteration at the demo sizes")

    parameters = {kind: parameter_counts(t.accelerator.unwrap_model(t.model)) for kind, t in trainers.items()}
    static_memory = {kind: static_bytes(t) for kind, t in trainers.items()}
    for variant, result in results.items():
        result["memory_static_bytes"] = static_memory[variant.split("/")[0]]
        result["memory_total_estimate_bytes"] = result["memory_static_bytes"] + result["memory_transient_peak_bytes"]
    print_table(
        ["variant", "peak mem above loaded models (MiB)", "policy + ref + reward models + Adam (MiB)"],
        [
            [v, fmt(r["memory_transient_peak_bytes"] / 2**20, ".0f"), fmt(r["memory_static_bytes"] / 2**20, ".0f")]
            for v, r in results.items()
        ],
    )
    payload = dict(
        benchmark="polishppo",
        environment=info,
        settings=dict(
            vars(args),
            output=str(args.output),
            steps_per_iteration=steps_per_iteration,
            rollout_batch=args.batch_size * args.steps_per_generation,
        ),
        parameters=parameters,
        results=results,
        ratios=ratios,
        tables=dict(phases=table),
    )
    write_json(args.output, payload)
    return payload


def _set_cold_cache(trainer, semantic_reward, cold: bool) -> None:
    """Empty the semantic reward's reference cache before every scoring call (cold) or stop doing so (warm)."""
    score = trainer.__dict__.get("_bench_original_score_rollouts")
    if score is None:
        score = trainer._bench_original_score_rollouts = trainer.score_rollouts

    def cold_score(rollouts):
        semantic_reward._reference_cache.clear()
        return score(rollouts)

    trainer.score_rollouts = cold_score if cold else score


def static_bytes(trainer) -> int:
    """Bytes held between iterations: policy, reference model, reward models' weights and the optimizer state (each
    storage once: the reference model shares the frozen φ with the policy)."""
    tensors = list(trainer.accelerator.unwrap_model(trainer.model).parameters())
    if getattr(trainer, "ref_model", None) is not None:
        tensors += list(trainer.ref_model.parameters())
    table_bytes = 0
    for func in getattr(trainer, "reward_funcs", []):
        while hasattr(func, "__wrapped__"):
            func = func.__wrapped__
        owner = getattr(func, "__self__", func)
        if isinstance(owner, SemanticReward) and owner.backend == "static":
            table_bytes += owner.static_embedder.embedding.nbytes
        elif isinstance(owner, SemanticReward):
            tensors += list(owner.embedder.model.parameters())
    return tensor_bytes(tensors) + table_bytes + optimizer_state_bytes(trainer.optimizer)


def _per_round(records: list[dict], per_round: int, value) -> list[float]:
    return [median(value(r) for r in records[i : i + per_round]) for i in range(0, len(records), per_round)]


if __name__ == "__main__":
    main()
