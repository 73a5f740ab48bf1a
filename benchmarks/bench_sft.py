"""SFT training throughput of TIPPo against a plain-TRL yardstick, with and without the frozen-feature cache.

The two trainers, in one process, on the same data, batches and T5:

* **TIPPo**: `TIPPoSFTTrainer` on a `TIPPoForConditionalGeneration` — frozen Chinese-CLIP φ → adapters π_T, π_V → prototype → DAA → DO →
  fusion → T5, loss L_NTP + α·L_C.
* **plain TRL**: TRL's own `SFTTrainer` on `LinearPrefixT5` — the same frozen φ (shared), one linear map from each φ
  vector to k prefix tokens, the same T5 (same starting weights), loss L_NTP. No DAA, no DO, no contrastive loss.

Each runs from the cached φ features (`use_feature_cache`: the dataset `cache_frozen_features` returns, exactly what the
trainers build when the flag is on) and from pixels (φ runs every step). The four variants run in rounds, alternating
(the order reversed every other round), `--warmup_steps + --steps` optimizer steps per `train()` call; the warm-up steps
are dropped. Reported: median step time, samples/s, target tokens/s, model FLOPs (6·N·tokens for trained matmuls,
2·N·tokens for φ's forward, per component and token stream), achieved FLOP/s, MFU on a GPU (bf16 dense peak), peak
memory above the loaded model, and the per-round ratios TIPPo / plain and pixels / cache (median).

    python benchmarks/bench_sft.py --size tiny --output benchmarks/results/sft_tiny.json
    python benchmarks/bench_sft.py --size base --batch_size 2 --steps 3 --rounds 3 --threads 1 --output benchmarks/results/sft_base_cpu.json
    python benchmarks/bench_sft.py --size base --batch_size 8 --output benchmarks/results/sft_base_gpu.json   # GPU, bf16

`trl/cache` and `trl/pixels`: TRL's own `SFTTrainer` on a copy of the same TIPPo model (φ shared), its loss the model's
own L_NTP + α·L_C: what TIPPo's trainer costs over TRL's on the same model and batches (its λ1 schedule, metrics and
checks), with the model's work equal on both sides. `tippo/cache trl/cache tippo/pixels trl/pixels` gives the ratios
`tippo_over_trl_*` that `make bench` reports as `sft_over_trl_*`; the plain ratios compare with a cheaper model.

`tippo_bf16/cache` (or `/pixels`) is a third trainer on a copy of the TIPPo model whose only difference is `bf16: true`
(bf16 autocast, also on a CPU); `--variants tippo/cache tippo_bf16/cache` alternates it with fp32 for the ratio bf16 / fp32.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: benchmarks never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from machine import peak_bf16_flops, run_in_workdir  # noqa: E402
from memory import PeakMemory, linear_params, optimizer_state_bytes, parameter_counts, tensor_bytes  # noqa: E402
from tables import fmt, median, paired_ratios, print_table, write_json  # noqa: E402
from timing import StepTimes  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PrinterCallback, T5ForConditionalGeneration  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402
from workload import lengthen  # noqa: E402

from tippo_rl import load_artmuse, make_demo_dataset  # noqa: E402
from tippo_rl.data_collator import TIPPoDataCollator  # noqa: E402
from tippo_rl.feature_cache import cache_frozen_features  # noqa: E402
from tippo_rl.frozen_encoder import TIPPoFrozenEncoder  # noqa: E402
from tippo_rl.modeling_tippo import TIPPoPreTrainedModel  # noqa: E402
from tippo_rl.presets import build_tippo_by_size  # noqa: E402
from tippo_rl.trainer.sft_config import TIPPoSFTConfig  # noqa: E402
from tippo_rl.trainer.sft_trainer import TIPPoSFTTrainer  # noqa: E402


RAW_COLUMNS = ("references", "titles", "ids")
DEFAULTS = {  # size → batch size, measured steps per call, rounds, reference words, max target tokens, torch threads
    "tiny": dict(batch_size=16, steps=4, rounds=15, target_words=0, max_target_length=None, threads=1),
    "base": dict(batch_size=8, steps=3, rounds=3, target_words=110, max_target_length=128, threads=0),
}


# ----------------------------------------------------------------------------------------------------- the yardstick


class LinearPrefixT5(TIPPoPreTrainedModel):
    """The plain yardstick: φ features → one linear map to k prefix tokens each → T5. Inputs as `TIPPoForConditionalGeneration`'s.

    The decoder input is [W·φ(T); W·φ(I_1); …; W·φ(I_N)] reshaped to `(batch, (1 + N)·k, d)`, padding images masked.
    """

    def __init__(self, config):
        super().__init__(config)
        self.encoder = TIPPoFrozenEncoder(config.encoder_config)
        self.prefix = nn.Linear(config.feature_size, config.prefix_length * config.hidden_size)
        self.language_model = T5ForConditionalGeneration._from_config(config.decoder_config)
        self.post_init()
        self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def forward(
        self,
        image_mask,
        pixel_values=None,
        title_input_ids=None,
        title_attention_mask=None,
        image_features=None,
        title_features=None,
        labels=None,
        **kwargs,
    ):
        image_mask = image_mask.bool()
        if image_features is None:
            with torch.no_grad():
                real = self.encoder.encode_images(pixel_values[image_mask])
                image_features = real.new_zeros(*image_mask.shape, real.shape[-1])
                image_features[image_mask] = real
                title_features = self.encoder.encode_text(title_input_ids, title_attention_mask)
        features = torch.cat([title_features[:, None], image_features], dim=1).to(self.prefix.weight.dtype)
        batch, slots, _ = features.shape
        k = self.config.prefix_length
        inputs_embeds = self.prefix(features).reshape(batch, slots * k, self.config.hidden_size)
        mask = torch.cat([image_mask.new_ones(batch, 1), image_mask], dim=1).repeat_interleave(k, dim=1).long()
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=mask, labels=labels, return_dict=True)


class ModelLossSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer`; only `compute_loss` is replaced, since TRL's builds a fused causal-LM head that a seq2seq
    model lacks: the loss is the model's own (`LinearPrefixT5`: L_NTP; TIPPo: L_NTP + α·L_C)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**{key: value for key, value in inputs.items() if key not in RAW_COLUMNS})
        return (outputs.loss, outputs) if return_outputs else outputs.loss


# ----------------------------------------------------------------------------------------------------- FLOPs


class BatchShapes:
    """Records the shapes of every batch `compute_loss` sees (wraps it on the trainer instance)."""

    def __init__(self, trainer):
        self.batches: list[dict[str, int]] = []
        original = trainer.compute_loss

        def recording(model, inputs, *args, **kwargs):
            mask = inputs["image_mask"]
            labels = inputs["labels"]
            self.batches.append(
                dict(
                    batch=mask.shape[0],
                    slots=mask.shape[1],
                    images=int(mask.sum()),
                    target_padded=labels.shape[1],
                    target_tokens=int((labels != -100).sum()),
                    title_padded=inputs["title_input_ids"].shape[1] if "title_input_ids" in inputs else 0,
                    live=int("pixel_values" in inputs),
                )
            )
            return original(model, inputs, *args, **kwargs)

        trainer.compute_loss = recording

    def take(self) -> list[dict[str, int]]:
        taken, self.batches = self.batches, []
        return taken


def step_flops(kind: str, model: nn.Module, shape: dict[str, int]) -> float:
    """Model FLOPs of one training step: 6·N·tokens for each trained matmul (2 forward + 4 backward), 2·N·tokens for
    φ's frozen forward (pixels only), over the padded shapes the model computes. Attention scores are left out
    (the usual 6·N·D convention)."""
    config = model.config
    k, d = config.prefix_length, config.hidden_size
    B, N, T = shape["batch"], shape["slots"], shape["target_padded"]
    t5 = model.language_model
    trained = 0.0
    if kind == "tippo":
        encoder_tokens = B * (k + 2 * N * k) if config.use_daa_do else B * (k + N * k)
        trained += linear_params(model.text_adapter) * B + linear_params(model.image_adapter) * B * N
        if config.use_daa_do:
            trained += 2 * d * d * B * k + 3 * d * d * B * N * k  # DAA: Q^T, Q^P on S^T, S^P; K^T, K^P, V on S_i^I
            trained += d * d * B * N * k  # DO: π_D
    else:
        encoder_tokens = B * (1 + N) * k
        trained += linear_params(model.prefix) * B * (1 + N)
    trained += linear_params(t5.encoder) * encoder_tokens
    trained += (linear_params(t5.decoder) + t5.lm_head.weight.numel()) * B * T
    flops = 6 * trained
    if shape["live"]:
        vision = model.encoder.vision_model
        patches = (vision.config.image_size // vision.config.patch_size) ** 2
        patch_conv = sum(m.weight.numel() for m in vision.modules() if isinstance(m, nn.Conv2d))
        per_image = (
            linear_params(vision) * (patches + 1)
            + patch_conv * patches
            + model.encoder.visual_projection.weight.numel()
        )
        per_title = (
            linear_params(model.encoder.text_model) * shape["title_padded"]
            + model.encoder.text_projection.weight.numel()
        )
        flops += 2 * (per_image * shape["images"] + per_title * B)  # φ encodes the real images only
    return flops


# ----------------------------------------------------------------------------------------------------- the run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(DEFAULTS), default="tiny")
    parser.add_argument("--batch_size", type=int, help="samples per step (default: tiny 16, base 8)")
    parser.add_argument("--steps", type=int, help="measured optimizer steps per train() call")
    parser.add_argument("--warmup_steps", type=int, default=1, help="steps dropped at the start of each train() call")
    parser.add_argument("--rounds", type=int, help="rounds of the four alternating variants")
    parser.add_argument("--target_words", type=int, help="lengthen references to at least this many words (0: as is)")
    parser.add_argument("--max_target_length", type=int, help="reference tokens kept (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default; tiny default 1)")
    parser.add_argument(
        "--num_train",
        type=int,
        help="demo samples (the feature cache encodes all of them); default: tiny 64, base one call's batches",
    )
    parser.add_argument(
        "--variants", nargs="+", default=["tippo/cache", "plain/cache", "tippo/pixels", "plain/pixels"]
    )
    parser.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="turn it on (TRL's SFTConfig default; the recipes turn it off, and so does this benchmark)",
    )
    parser.add_argument(
        "--bf16", choices=["auto", "true", "false"], default="auto", help="auto: on a bf16-capable GPU"
    )
    parser.add_argument("--output", type=Path, help="JSON results (default: benchmarks/results/sft_<size>.json)")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.output = args.output or Path(f"benchmarks/results/sft_{args.size}.json")
    if args.num_train is None:  # every train() call starts the same seeded shuffle, so one call's batches suffice
        args.num_train = 64 if args.size == "tiny" else args.batch_size * (args.warmup_steps + args.steps)
    return args


def training_args(config_class, output_dir: str, args, bf16: bool | None = None, **extra):
    """The trainers' settings; `bf16` None: as `--bf16` says."""
    gpu = torch.cuda.is_available()
    if bf16 is None:
        bf16 = (gpu and torch.cuda.is_bf16_supported()) if args.bf16 == "auto" else args.bf16 == "true"
    return config_class(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup_steps + args.steps,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=not gpu,
        bf16=bf16,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        activation_checkpointing=args.gradient_checkpointing,
        **extra,
    )


def main(argv=None) -> dict:
    return run_in_workdir(parse_args(argv), run, prefix="bench_sft_")


def run(args, info: dict, workdir: Path) -> dict:
    print(
        f"bench_sft: size {args.size}, batch {args.batch_size}, {args.rounds} rounds × ({args.warmup_steps} + {args.steps}) steps, "
        f"{info['cpu']} ×{info['cpu_count']}, GPU {info['gpu']}"
    )

    model, processor = build_tippo_by_size(args.size, args.max_target_length)
    dataset = load_artmuse(make_demo_dataset(workdir / "demo", num_train=args.num_train, num_test=1) / "train.jsonl")
    if args.target_words:
        dataset = dataset.map(lambda row: {"reference": lengthen(row["reference"], args.target_words)})

    plain = LinearPrefixT5(model.config)
    plain.encoder = model.encoder  # one frozen φ for both: the same cached features, no second copy in memory
    plain.language_model.load_state_dict(model.language_model.state_dict())

    tippo_trainer = TIPPoSFTTrainer(
        model=model,
        args=training_args(TIPPoSFTConfig, str(workdir / "tippo"), args, use_feature_cache=False),
        processor=processor,
        train_dataset=dataset,
    )
    plain_trainer = ModelLossSFTTrainer(
        model=plain,
        args=training_args(SFTConfig, str(workdir / "plain"), args),
        train_dataset=dataset,
        data_collator=TIPPoDataCollator(processor),
        processing_class=processor,
    )

    # The cache, as `use_feature_cache: true` builds it: first run (φ over the dataset) and a later run (load).
    start = time.perf_counter()
    cached = cache_frozen_features(dataset, model, processor, workdir / "features")
    cache_build_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = cache_frozen_features(dataset, model, processor, workdir / "features")
    cache_load_s = time.perf_counter() - start

    trainers = {"tippo": tippo_trainer, "plain": plain_trainer}
    if any(variant.startswith("trl/") for variant in args.variants):
        trainers["trl"] = ModelLossSFTTrainer(
            model=copy.deepcopy(model, memo={id(model.encoder): model.encoder}),  # own copy, φ shared (see bf16 below)
            args=training_args(SFTConfig, str(workdir / "trl"), args),
            train_dataset=dataset,
            data_collator=TIPPoDataCollator(processor),
            processing_class=processor,
        )
    if any(variant.startswith("tippo_bf16/") for variant in args.variants):
        # Its own copy of the model (φ shared): accelerate wraps a prepared model's forward in bf16 autocast, and on a
        # model shared with the fp32 trainer that wrapper would make both variants bf16.
        trainers["tippo_bf16"] = TIPPoSFTTrainer(
            model=copy.deepcopy(model, memo={id(model.encoder): model.encoder}),
            args=training_args(TIPPoSFTConfig, str(workdir / "tippo_bf16"), args, bf16=True, use_feature_cache=False),
            processor=processor,
            train_dataset=dataset,
        )
    datasets = {"cache": cached, "pixels": dataset}
    timers, shapes = {}, {}
    for name, trainer in trainers.items():
        timers[name] = StepTimes()
        trainer.add_callback(timers[name])
        trainer.remove_callback(PrinterCallback)  # no metrics dict printed after every train() call
        shapes[name] = BatchShapes(trainer)

    steps = {v: [] for v in args.variants}  # every measured step time (wall)
    cpu_steps = {v: [] for v in args.variants}  # the same steps' CPU time
    round_medians = {v: [] for v in args.variants}
    cpu_round_medians = {v: [] for v in args.variants}
    memory = {v: [] for v in args.variants}
    batch_shapes = {v: [] for v in args.variants}
    for round_index in range(args.rounds):
        order = args.variants if round_index % 2 == 0 else list(reversed(args.variants))
        for variant in order:
            kind, source = variant.split("/")
            trainer = trainers[kind]
            trainer.train_dataset = datasets[source]
            with PeakMemory() as peak:
                trainer.train()
            measured = timers[kind].times[args.warmup_steps :]
            measured_cpu = timers[kind].cpu_times[args.warmup_steps :]
            steps[variant] += measured
            cpu_steps[variant] += measured_cpu
            round_medians[variant].append(median(measured))
            cpu_round_medians[variant].append(median(measured_cpu))
            memory[variant].append(peak.delta)
            batch_shapes[variant] += shapes[kind].take()[args.warmup_steps :]
            print(
                f"  round {round_index + 1}/{args.rounds} {variant:<13} median step {fmt(median(measured), '.4f')} s "
                f"(CPU {fmt(median(measured_cpu), '.4f')} s)"
            )

    results = {}
    peak_flops = peak_bf16_flops()
    for variant in args.variants:
        kind, _ = variant.split("/")
        trainer = trainers[kind]
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        step_s = median(steps[variant])
        shape_list = batch_shapes[variant]
        model_kind = "plain" if kind == "plain" else "tippo"
        flops = median(step_flops(model_kind, unwrapped, shape) for shape in shape_list)
        tokens = median(shape["target_tokens"] for shape in shape_list)
        # Steady-state memory: the rounds after the first (the first call of each trainer also allocates Adam's state).
        transient = max(memory[variant][1:] or memory[variant])
        static = tensor_bytes(unwrapped.parameters()) + optimizer_state_bytes(trainer.optimizer)
        results[variant] = dict(
            step_s_median=step_s,
            step_s_all=steps[variant],
            round_medians_s=round_medians[variant],
            step_cpu_s_median=median(cpu_steps[variant]),
            step_cpu_s_all=cpu_steps[variant],
            samples_per_s=args.batch_size / step_s,
            target_tokens_per_step=tokens,
            target_tokens_per_s=tokens / step_s,
            images_per_step=median(shape["images"] for shape in shape_list),
            model_flops_per_step=flops,
            achieved_flops_per_s=flops / step_s,
            mfu=flops / step_s / peak_flops if peak_flops else None,
            memory_transient_peak_bytes=transient,
            memory_transient_all_rounds=memory[variant],
            memory_params_and_optimizer_bytes=static,
            memory_total_estimate_bytes=static + transient,
            parameters=parameter_counts(unwrapped),
        )

    def ratio(numerator: str, denominator: str) -> dict | None:
        if numerator not in round_medians or denominator not in round_medians:
            return None
        per_round = paired_ratios(round_medians[numerator], round_medians[denominator])
        per_round_cpu = paired_ratios(cpu_round_medians[numerator], cpu_round_medians[denominator])
        return dict(
            median=median(per_round),
            per_round=per_round,
            cpu_median=median(per_round_cpu),
            cpu_per_round=per_round_cpu,
        )

    ratios = {
        "tippo_over_trl_cache": ratio("tippo/cache", "trl/cache"),
        "tippo_over_trl_pixels": ratio("tippo/pixels", "trl/pixels"),
        "tippo_over_plain_cache": ratio("tippo/cache", "plain/cache"),
        "tippo_over_plain_pixels": ratio("tippo/pixels", "plain/pixels"),
        "cache_speedup_tippo": ratio("tippo/pixels", "tippo/cache"),
        "cache_speedup_plain": ratio("plain/pixels", "plain/cache"),
        "bf16_over_fp32_cache": ratio("tippo_bf16/cache", "tippo/cache"),
        "bf16_over_fp32_pixels": ratio("tippo_bf16/pixels", "tippo/pixels"),
    }

    print()
    table = print_table(
        [
            "variant",
            "step s",
            "step CPU s",
            "samples/s",
            "target tok/s",
            "img/step",
            "model TFLOP/step",
            "TFLOP/s",
            "MFU",
            "peak mem above model (MiB)",
            "params+Adam (MiB)",
        ],
        [
            [
                v,
                fmt(r["step_s_median"], ".4f"),
                fmt(r["step_cpu_s_median"], ".4f"),
                fmt(r["samples_per_s"], ".1f"),
                fmt(r["target_tokens_per_s"], ".0f"),
                fmt(r["images_per_step"], ".0f"),
                fmt(r["model_flops_per_step"] / 1e12, ".4f"),
                fmt(r["achieved_flops_per_s"] / 1e12, ".3f"),
                fmt(r["mfu"] and 100 * r["mfu"], ".1f") + ("%" if r["mfu"] else ""),
                fmt(r["memory_transient_peak_bytes"] / 2**20, ".0f"),
                fmt(r["memory_params_and_optimizer_bytes"] / 2**20, ".0f"),
            ]
            for v, r in results.items()
        ],
    )
    print()

    def cells(key: str, spec: str) -> list[str]:
        value = ratios[key] or {}
        return [fmt(value.get("median"), spec), fmt(value.get("cpu_median"), spec)]

    ratio_table = print_table(
        ["ratio (median of per-round ratios)", "wall time", "CPU time", "target"],
        [
            ["TIPPo / TRL's SFTTrainer, same model, cached features", *cells("tippo_over_trl_cache", ".3f"), "≤ 1.05"],
            ["TIPPo / TRL's SFTTrainer, same model, pixels", *cells("tippo_over_trl_pixels", ".3f"), "≤ 1.05"],
            ["TIPPo / plain TRL step time, cached features", *cells("tippo_over_plain_cache", ".3f"), "≤ 1.15"],
            ["TIPPo / plain TRL step time, pixels", *cells("tippo_over_plain_pixels", ".3f"), "≤ 1.15"],
            [
                "cache speed-up, TIPPo (pixels / cache)",
                *cells("cache_speedup_tippo", ".2f"),
                "clear (> 1) at real size",
            ],
            ["cache speed-up, plain (pixels / cache)", *cells("cache_speedup_plain", ".2f"), "—"],
            ["TIPPo bf16 autocast / fp32 step time, cached features", *cells("bf16_over_fp32_cache", ".3f"), "< 1"],
            ["TIPPo bf16 autocast / fp32 step time, pixels", *cells("bf16_over_fp32_pixels", ".3f"), "< 1"],
        ],
    )
    print(
        f"\nfeature cache: built in {cache_build_s:.2f} s for {len(dataset)} samples "
        f"({1000 * cache_build_s / len(dataset):.1f} ms/sample), loaded again in {cache_load_s:.2f} s"
    )

    payload = dict(
        benchmark="sft",
        environment=info,
        settings=dict(
            vars(args),
            output=str(args.output),
            bf16=tippo_trainer.args.bf16,
            prefix_length=model.config.prefix_length,
            max_target_length=processor.max_target_length,
            image_size=processor.image_processor.size,
            num_train=len(dataset),
        ),
        parameters=dict(tippo=parameter_counts(model), plain=parameter_counts(plain)),
        feature_cache=dict(
            build_s=cache_build_s,
            load_s=cache_load_s,
            samples=len(dataset),
            build_ms_per_sample=1000 * cache_build_s / len(dataset),
        ),
        results=results,
        ratios=ratios,
        tables=dict(variants=table, ratios=ratio_table),
    )
    write_json(args.output, payload)
    return payload


if __name__ == "__main__":
    main()
