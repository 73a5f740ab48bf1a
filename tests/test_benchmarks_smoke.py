"""The training benchmarks still run end to end (smallest settings, a few seconds each) and write their JSON.

No timing is asserted: numbers on a shared CI machine mean nothing; `benchmarks/RESULTS.md` holds the measurements.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import their shared modules (machine, timing, memory, tables)
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_bench_sft_runs_tippo_trl_on_the_same_model_and_the_plain_yardstick_with_and_without_the_cache(tmp_path):
    bench = load_benchmark("bench_sft")
    output = tmp_path / "sft.json"
    bench.main(
        [
            "--size",
            "tiny",
            "--batch_size",
            "4",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--num_train",
            "8",
            "--threads",
            "1",
            "--variants",
            "tippo/cache",
            "plain/cache",
            "tippo/pixels",
            "plain/pixels",
            "tippo_bf16/cache",
            "trl/cache",
            "--output",
            str(output),
        ]
    )
    payload = json.loads(output.read_text())
    assert set(payload["results"]) == {
        "tippo/cache",
        "plain/cache",
        "tippo/pixels",
        "plain/pixels",
        "tippo_bf16/cache",
        "trl/cache",
    }
    assert math.isfinite(payload["ratios"]["tippo_over_trl_cache"]["median"])  # TRL's SFTTrainer on the same model
    assert (
        payload["results"]["trl/cache"]["model_flops_per_step"]
        == payload["results"]["tippo/cache"]["model_flops_per_step"]
    )
    assert math.isfinite(payload["ratios"]["bf16_over_fp32_cache"]["median"])  # bf16 autocast, on the same model
    assert (
        payload["results"]["tippo_bf16/cache"]["model_flops_per_step"]
        == (payload["results"]["tippo/cache"]["model_flops_per_step"])
    )
    for variant, result in payload["results"].items():
        assert result["step_s_median"] > 0 and result["samples_per_s"] > 0, variant
        assert result["model_flops_per_step"] > 0 and result["target_tokens_per_step"] > 0, variant
    # φ runs only from pixels: the pixel variants count its forward FLOPs on top.
    assert (
        payload["results"]["tippo/pixels"]["model_flops_per_step"]
        > payload["results"]["tippo/cache"]["model_flops_per_step"]
    )
    assert math.isfinite(payload["ratios"]["tippo_over_plain_cache"]["median"])
    assert payload["parameters"]["plain"]["trainable"] < payload["parameters"]["tippo"]["trainable"]  # no DAA/DO


def test_linear_prefix_yardstick_matches_the_tippo_input_layout(tiny_model_and_processor):
    import torch

    bench = load_benchmark("bench_sft")
    model, processor = tiny_model_and_processor
    plain = bench.LinearPrefixT5(model.config)
    image_mask = torch.tensor([[True, True, False], [True, False, False]])
    features = torch.randn(2, 3, model.config.feature_size)
    labels = torch.tensor([[5, 6, 1], [7, 1, -100]])
    outputs = plain(
        image_mask=image_mask,
        image_features=features,
        title_features=torch.randn(2, model.config.feature_size),
        labels=labels,
    )
    assert outputs.loss.isfinite()
    k = model.config.prefix_length
    assert outputs.encoder_last_hidden_state.shape == (2, (1 + 3) * k, model.config.hidden_size)  # [W·φ(T); W·φ(I_i)…]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_polishppo_breaks_an_iteration_into_phases_for_polishppo_and_grpo(tmp_path):
    bench = load_benchmark("bench_polishppo")
    output = tmp_path / "polishppo.json"
    bench.main(
        [
            "--batch_size",
            "2",
            "--steps_per_generation",
            "2",
            "--num_ppo_epochs",
            "1",
            "--max_new_tokens",
            "4",
            "--sft_steps",
            "0",
            "--iterations",
            "1",
            "--warmup_iterations",
            "0",
            "--rounds",
            "1",
            "--num_train",
            "8",
            "--threads",
            "1",
            "--variants",
            "polishppo/natural",
            "polishppo/fixed",
            "grpo/fixed",
            "--output",
            str(output),
        ]
    )
    payload = json.loads(output.read_text())
    for variant, result in payload["results"].items():
        phases = result["phases_s_median"]
        assert phases["iteration"] > 0 and phases["generation"] > 0 and phases["update"] > 0, variant
        assert phases["reward/semantic"] > 0 and 0 < result["reward_share_median"] < 1, variant
        assert phases["logprobs/old"] > 0 and phases["logprobs/ref"] > 0, variant  # β > 0: reference log-probs
    assert payload["results"]["polishppo/fixed"]["completion_mean_length"] == 4  # min_new_tokens = max_new_tokens
    assert payload["ratios"]["polishppo_over_grpo"] > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_rl_gain_pairs_each_rl_run_with_its_own_sft_seed_and_reports_deltas_and_cis(tmp_path):
    bench = load_benchmark("bench_rl_gain")
    output = tmp_path / "rl_gain.json"
    arguments = ["--quick", "--sft_seeds", "0", "1", "--rl_seeds", "0", "--workdir", str(tmp_path / "work")]
    variants = [
        "demo:",
        "ppo: trainer=ppo reward_funcs=[cider] use_value_head=false advantage_baseline=greedy num_generations=2",
    ]
    bench.main([*arguments, "--output", str(output), "--bootstrap_samples", "50", "--variants", *variants])
    payload = json.loads(output.read_text())
    assert set(payload["summary"]) == {"en/demo", "en/ppo"}
    assert sorted((run["variant"], run["sft_seed"], run["rl_seed"]) for run in payload["runs"]) == [
        ("demo", 0, 0),
        ("demo", 1, 0),
        ("ppo", 0, 0),
        ("ppo", 1, 0),
    ]
    for run in payload["runs"]:  # each RL run is compared with the SFT model it started from
        assert run["sft"]["scores"] == payload["sft"]["en"][str(run["sft_seed"])]["scores"]
        assert set(run["rl"]["fields"]) == set(bench.FIELDS)
    for summary in payload["summary"].values():
        for key in ("ROUGE-L", "CIDEr"):
            low, high = summary[key]["ci95"]
            assert low <= high and len(summary[key]["deltas"]) == 2
    # A second call trains nothing again: every model and score is read from the work folder.
    again = bench.main(
        [*arguments, "--output", str(tmp_path / "again.json"), "--bootstrap_samples", "50", "--variants", "demo:"]
    )
    assert again["summary"]["en/demo"]["ROUGE-L"]["deltas"] == payload["summary"]["en/demo"]["ROUGE-L"]["deltas"]


def test_bench_rl_overfit_scores_the_trained_prompts_before_and_after_rl_and_the_ntp_control(tmp_path):
    work = tmp_path / "work"
    load_benchmark("bench_rl_gain").main(
        ["--quick", "--sft_seeds", "0", "--rl_seeds", "--workdir", str(work), "--output", str(tmp_path / "gain.json")]
    )
    output = tmp_path / "overfit.json"
    load_benchmark("bench_rl_overfit").main(
        ["--quick", "--lang", "en", "--sft_seed", "0", "--workdir", str(work), "--output", str(output)]
    )
    runs = json.loads(output.read_text())["runs"]
    assert set(runs) == {"scst", "control: NTP loss"}
    fields = set(load_benchmark("bench_rl_gain").FIELDS)
    for run in runs.values():
        # Every run starts from the same SFT model on the same 8 prompts, and scores them again after training.
        assert run["trained_prompts_before"] == runs["scst"]["trained_prompts_before"]
        for scored in ("trained_prompts_after", "held_out_after"):
            assert set(run[scored]["fields"]) == fields and {"ROUGE-L", "CIDEr"} <= set(run[scored]["scores"])
    assert runs["control: NTP loss"]["overrides"] == {"loss": "ntp", "steps": 2, "learning_rate": 1e-4, "batch": 16}
    assert runs["scst"]["held_out_before"] == runs["control: NTP loss"]["held_out_before"]

    # `--prompts wrong`: only scenes the SFT model gets wrong, trained with the exact-match plug-in of the benchmark.
    exact = f"{BENCHMARKS / 'bench_rl_overfit.py'}:exact_match"
    arguments = ["--quick", "--lang", "en", "--sft_seed", "0", "--workdir", str(work), "--output", str(output)]
    arguments += ["--prompts", "wrong", "--ce_steps", "0", "--variants", f"exact: reward_funcs=[{exact}]"]
    run = load_benchmark("bench_rl_overfit").main(arguments)["runs"]["exact"]
    assert run["trained_prompts_exact"]["before"] == 0 and run["num_prompts"] == 8


def test_paired_bootstrap_is_centred_on_the_mean_difference():
    bench = load_benchmark("bench_rl_gain")
    import random

    sft = [50.0, 60.0, 70.0, 80.0] * 25
    rl = [value + 2.0 for value in sft]  # +2 on every sample, in both SFT seeds
    low, high = bench.paired_bootstrap([(rl, sft, 0), (rl, sft, 1)], 200, random.Random(0))
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_bench_rl_gain_reads_variants_as_yaml_overrides():
    bench = load_benchmark("bench_rl_gain")
    assert bench.parse_variant(
        "paper: advantage_window=null gamma_schedule=paper reward_funcs=[literal,semantic]"
    ) == ("paper", {"advantage_window": None, "gamma_schedule": "paper", "reward_funcs": ["literal", "semantic"]})
    with pytest.raises(ValueError, match="key=value"):
        bench.parse_variant("bad: num_generations 4")


def test_bench_value_warmup_reports_the_first_token_bias_of_each_value_head_setting(tmp_path):
    bench = load_benchmark("bench_value_warmup")
    output = tmp_path / "value_warmup.json"
    bench.main(["--quick", "--iterations", "2", "--warmup", "1", "--measure", "1", "--output", str(output)])
    results = json.loads(output.read_text())["results"]
    assert len(results) == 3
    for name, result in results.items():
        assert len(result["first_token_negative"]) == 2 and 0 <= result["after_warmup_mean"] <= 1, name
