"""What the tiny preset's pretrained φ gives the demo, against the random φ it replaces (README, RESULTS.md).

    python benchmarks/bench_tiny_encoder.py                   # English and Chinese, JSON into benchmarks/results/
    python benchmarks/bench_tiny_encoder.py --langs en --quick

For each language: the pretraining time (cold, into a temporary cache, one torch thread) and
`tippo_rl.demo.tiny_encoder.probe_tiny_encoder` of both encoders on fresh demo draws: the largest cosine between two
places' titles, linear-probe and nearest-centroid recovery of colour, shape and background place from image
features, and title↔scene retrieval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: benchmarks never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402
from machine import machine_info  # noqa: E402
from transformers import ChineseCLIPModel  # noqa: E402

from tippo_rl.demo.tiny_encoder import TinyEncoderRecipe, probe_tiny_encoder, tiny_encoder_folder  # noqa: E402
from tippo_rl.modeling_tippo import TIPPoForConditionalGeneration  # noqa: E402
from tippo_rl.presets import build_tiny_processor, load_encoder_weights, tiny_tippo_config  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results"


def measure(lang: str, recipe: TinyEncoderRecipe) -> dict:
    processor = build_tiny_processor(lang)
    config = tiny_tippo_config(processor)
    torch.manual_seed(0)
    model = TIPPoForConditionalGeneration(config)
    random_probe = probe_tiny_encoder(model.encoder, processor, lang)
    with tempfile.TemporaryDirectory() as cache:
        began = time.perf_counter()
        folder = tiny_encoder_folder(config.encoder_config, processor, lang, recipe, cache_dir=cache)
        seconds = time.perf_counter() - began
        load_encoder_weights(model, ChineseCLIPModel.from_pretrained(folder), str(folder))
    return {
        "pretraining_seconds": round(seconds, 1),
        "random": random_probe,
        "pretrained": probe_tiny_encoder(model.encoder, processor, lang),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", nargs="+", default=["en", "zh"])
    parser.add_argument(
        "--quick", action="store_true", help="a 5-step recipe: checks that the benchmark runs, measures nothing"
    )
    parser.add_argument("--output", default=str(RESULTS / "tiny_encoder.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = dataclasses.replace(TinyEncoderRecipe(), steps=5, pool_size=60) if args.quick else TinyEncoderRecipe()
    result = {
        "machine": machine_info(),
        "recipe": dataclasses.asdict(recipe),
        "langs": {lang: measure(lang, recipe) for lang in args.langs},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for lang, numbers in result["langs"].items():
        print(f"{lang}: pretraining {numbers['pretraining_seconds']} s")
        for name in numbers["pretrained"]:
            print(f"  {name:28s} random {numbers['random'][name]:.3f}  pretrained {numbers['pretrained'][name]:.3f}")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
