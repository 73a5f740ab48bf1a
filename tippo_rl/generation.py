"""Batched generation over a dataset, the `generate()` options of a set of decoding settings, and the
`tippo-generate` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import GenerationConfig

from .checkpoints import check_model_source
from .data import CHECK_PIXELS, ColumnNames, DataValidationError, load_artmuse, load_hf_dataset
from .data_collator import TIPPoDataCollator, model_inputs
from .feature_cache import undecoded_images
from .modeling_tippo import TIPPoForConditionalGeneration
from .processing_tippo import TIPPoProcessor, open_image


@torch.no_grad()
def generate_predictions(
    model: TIPPoForConditionalGeneration,
    processor: TIPPoProcessor,
    dataset: Dataset,
    batch_size: int = 16,
    progress: bool = False,
    **generate_kwargs,
) -> dict[str, str | list[str]]:
    """Generate a text for every row of a TIPPo dataset; returns `{row id: text}`, or `{row id: [texts]}` with
    `num_return_sequences` > 1 (in `generate_kwargs` or in a `generation_config` passed there).

    `generate_kwargs` go to `model.generate` (e.g. `num_beams=4`, `do_sample=True`, `max_new_tokens=128`,
    `generation_config=GenerationConfig(...)`); by default decoding is greedy with the model's generation config.
    `progress` shows a progress bar over the samples.
    """
    from tqdm.auto import tqdm

    config = generate_kwargs.get("generation_config")
    per_row = generate_kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", None) or 1
    collator = TIPPoDataCollator(processor, with_labels=False)
    dataset = undecoded_images(dataset)  # the collator decodes images at a bounded size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions = {}
    bar = tqdm(total=len(dataset), desc="Generating", unit="sample", disable=not progress, leave=False)
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[index] for index in range(start, min(start + batch_size, len(dataset)))])
            inputs = {name: tensor.to(device) for name, tensor in model_inputs(batch).items()}
            texts = processor.batch_decode(model.generate(**inputs, **generate_kwargs))
            if per_row > 1:
                texts = [texts[index : index + per_row] for index in range(0, len(texts), per_row)]
            predictions.update(zip(batch["ids"], texts))
            bar.update(len(batch["ids"]))
    finally:
        bar.close()
        model.train(was_training)
    return predictions


def generate_kwargs(overrides: Mapping[str, Any] | None = None, /, **settings: Any) -> dict[str, Any]:
    """`model.generate()` options from decoding settings: each of `settings` that is set (not None), in their order,
    then `overrides` (a user's `generation_kwargs`) over them. What evaluation, the trainers' eval decode and
    `tippo-generate` decode with; [`generation_config`] makes them a `GenerationConfig`."""
    return {**{name: value for name, value in settings.items() if value is not None}, **(overrides or {})}


def generation_config(overrides: Mapping[str, Any] | None = None, /, **settings: Any) -> GenerationConfig:
    """[`generate_kwargs`] as a `GenerationConfig` (the PPO trainer's rollouts)."""
    return GenerationConfig(**generate_kwargs(overrides, **settings))


def load_generation_config(value: str | None) -> GenerationConfig | None:
    """`--generation_config`: a `generation_config.json` file, a folder holding one, or a JSON object of options."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        return GenerationConfig.from_pretrained(path)
    if path.is_file():
        return GenerationConfig.from_json_file(path)
    try:
        options = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"--generation_config {value!r}: not a file, a folder or a JSON object ({error})") from error
    if not isinstance(options, dict):
        raise ValueError(f"--generation_config {value!r}: expected a JSON object of GenerationConfig options")
    return GenerationConfig(**options)


def true_or_false(value: str) -> bool:
    """A boolean option's value as TRL and transformers spell it: true/false (also yes/no, 1/0)."""
    if value.lower() in ("true", "yes", "1", "y", "t"):
        return True
    if value.lower() in ("false", "no", "0", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tippo-generate",
        description="Generate text from a title and images with a TIPPo model: one sample (--title, --images; the text on "
        "stdout) or a batch (--input_file rows.jsonl, or a Hugging Face dataset with --dataset_name; one JSON object per "
        "row on stdout or in --output_file: its id, title, image paths, reference if it has one, and the generation).",
    )
    parser.add_argument("--model", required=True, help="a saved TIPPo model folder (or Hub id) with its processor")
    sample = parser.add_argument_group("one sample")
    sample.add_argument("--title", default="", help="the title (may be empty, e.g. for captioning)")
    sample.add_argument("--images", nargs="+", help="1 to N_max image files")
    batch = parser.add_argument_group("a batch")
    batch.add_argument(
        "--input_file",
        help='JSONL rows {"id", "title", "images": [paths]} (a reference is not needed), checked as the '
        "recipes check their data; relative paths start from the file's folder",
    )
    batch.add_argument(
        "--dataset_name",
        help="a Hugging Face dataset (hub id, save_to_disk folder, data file or folder), as the recipes read it",
    )
    batch.add_argument("--dataset_config", help="--dataset_name: its configuration (load_dataset's `name`)")
    batch.add_argument(
        "--dataset_split", default="test", help="--dataset_name: the split to generate for (default test)"
    )
    batch.add_argument("--title_column", default="title", help="--dataset_name: the title's column (may be absent)")
    batch.add_argument("--images_column", default="images", help="--dataset_name: the images' column")
    batch.add_argument(
        "--reference_column", default="reference", help="--dataset_name: the reference's column, copied to the output"
    )
    batch.add_argument(
        "--output_file",
        help="where the output JSONL goes (default: stdout): each row's id, title, images (paths), reference (where "
        "the row has one) and generation(s)",
    )
    batch.add_argument("--batch_size", type=int, default=16, help="samples generated at once (default 16)")
    decoding = parser.add_argument_group("decoding (unset: the model's generation config)")
    decoding.add_argument(
        "--generation_config",
        help="a generation_config.json, a folder holding one, or a JSON object such as "
        '\'{"num_beams": 4, "no_repeat_ngram_size": 3}\'; the options below override it',
    )
    decoding.add_argument("--num_beams", type=int, help="beams of beam search (1: greedy or sampling)")
    decoding.add_argument("--num_return_sequences", type=int, help="texts per sample (≤ num_beams without sampling)")
    decoding.add_argument(
        "--do_sample",
        type=true_or_false,
        nargs="?",
        const=True,
        metavar="true|false",
        help="sample (true) or search greedily/with beams (false); a bare --do_sample is true",
    )
    decoding.add_argument("--temperature", type=float, help="sampling temperature (with --do_sample)")
    decoding.add_argument("--top_k", type=int, help="top-k sampling (with --do_sample)")
    decoding.add_argument("--top_p", type=float, help="nucleus sampling (with --do_sample)")
    decoding.add_argument(
        "--repetition_penalty", type=float, help="penalty on tokens already generated (> 1 discourages them)"
    )
    decoding.add_argument("--no_repeat_ngram_size", type=int, help="never repeat an n-gram of this size")
    decoding.add_argument("--max_new_tokens", type=int, help="most tokens per text")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:1, ... (default: a GPU if there is one)",
    )
    return parser


DECODING_OPTIONS = (
    "num_beams",
    "num_return_sequences",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "max_new_tokens",
)


def main(argv: list[str] | None = None) -> int:
    """`tippo-generate --model DIR --title T --images a.jpg b.jpg`: print the generated text; with `--input_file
    rows.jsonl` or `--dataset_name`, one JSON line per row (`{"id", "title", "images", "reference", "generation"}`:
    `images` are the row's image paths (null for an image stored without one), `reference` only where the row has
    one, `"generations"` with `--num_return_sequences` > 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = [option for option in ("images", "input_file", "dataset_name") if getattr(args, option) is not None]
    if len(sources) != 1:
        parser.error(
            "give one sample (--images, with --title) or a batch (--input_file or --dataset_name): one of them, got "
            + (", ".join(f"--{option}" for option in sources) or "none")
        )
    for name in ("num_beams", "num_return_sequences", "max_new_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.temperature is not None and args.temperature <= 0:
        parser.error(f"--temperature must be > 0, got {args.temperature}")
    try:
        config = load_generation_config(args.generation_config)
        options = generate_kwargs(**{name: getattr(args, name) for name in DECODING_OPTIONS})
        settings = {**(config.to_diff_dict() if config is not None else {}), **options}
        beams, returned = settings.get("num_beams", 1), settings.get("num_return_sequences", 1)
        if returned > beams and not settings.get("do_sample"):
            raise ValueError(
                f"--num_return_sequences {returned} needs --do_sample or at least as many --num_beams (got {beams})"
            )
        check_model_source(args.model, "--model")
        if args.images is not None:
            for path in args.images:
                open_image(path, max_pixels=CHECK_PIXELS)
            rows = Dataset.from_list(
                [{"id": "sample", "title": args.title, "images": [str(Path(path)) for path in args.images]}]
            )
        elif args.input_file is not None:
            rows = load_artmuse(args.input_file, require_reference=False, allow_empty_title=True)
        else:
            columns = ColumnNames(args.title_column, args.images_column, args.reference_column)
            rows = load_hf_dataset(
                args.dataset_name,
                split=args.dataset_split,
                config=args.dataset_config,
                columns=columns,
                allow_empty_title=True,
                require_reference=False,
            )
        model = TIPPoForConditionalGeneration.from_pretrained(args.model).to(args.device).eval()
        processor = TIPPoProcessor.from_pretrained(args.model)
        if config is not None:
            options = {"generation_config": config, **options}
        predictions = generate_predictions(
            model, processor, rows, batch_size=args.batch_size, progress=args.images is None, **options
        )
    except (ValueError, OSError, DataValidationError) as error:
        print(f"tippo-generate: {error}", file=sys.stderr)
        return 2
    if args.images is not None:
        texts = predictions["sample"]
        print("\n".join(texts) if isinstance(texts, list) else texts)
        return 0
    key = "generations" if returned > 1 else "generation"
    lines = []
    for row in undecoded_images(rows).select_columns(["id", "title", "images", "reference"]):
        output = {"id": row["id"], "title": row["title"], "images": [image["path"] for image in row["images"]]}
        if row["reference"]:
            output["reference"] = row["reference"]
        output[key] = predictions[row["id"]]
        lines.append(json.dumps(output, ensure_ascii=False))
    if args.output_file:
        Path(args.output_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
