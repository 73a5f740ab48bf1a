"""Batched generation over a dataset, and the `tippo-generate` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from datasets import Dataset
from .checkpoints import check_model_source
from .data import TIPPoDataCollator, check_image, model_inputs
from .feature_cache import undecoded_images
from .modeling_tippo import TIPPoModel
from .processing_tippo import TIPPoProcessor, open_image


@torch.no_grad()
def generate_predictions(
    model: TIPPoModel,
    processor: TIPPoProcessor,
    dataset: Dataset,
    batch_size: int = 16,
    **generate_kwargs,
) -> dict[str, str]:
    """Generate a text for every row of a TIPPo dataset; returns `{row id: text}`.

    `generate_kwargs` go to `model.generate` (e.g. `num_beams=4`, `do_sample=True`, `max_new_tokens=128`);
    by default decoding is greedy with the model's generation config.
    """
    collator = TIPPoDataCollator(processor, with_labels=False)
    dataset = undecoded_images(dataset)  # the collator decodes images at a bounded size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions = {}
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[index] for index in range(start, min(start + batch_size, len(dataset)))])
            inputs = {name: tensor.to(device) for name, tensor in model_inputs(batch).items()}
            texts = processor.batch_decode(model.generate(**inputs, **generate_kwargs))
            predictions.update(zip(batch["ids"], texts))
    finally:
        model.train(was_training)
    return predictions


def main(argv: list[str] | None = None) -> int:
    """`tippo-generate --model DIR --title T --images a.jpg b.jpg`: print the generated text."""
    parser = argparse.ArgumentParser(prog="tippo-generate", description="Generate text from a title and images with a TIPPo model.")
    parser.add_argument("--model", required=True, help="a saved TIPPo model folder (or Hub id) with its processor")
    parser.add_argument("--title", default="", help="the title (may be empty, e.g. for captioning)")
    parser.add_argument("--images", nargs="+", required=True, help="1 to N_max image files")
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.num_beams < 1:
        parser.error(f"--num_beams must be ≥ 1 (1: greedy or sampling), got {args.num_beams}")
    if args.temperature <= 0:
        parser.error(f"--temperature must be > 0, got {args.temperature}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be ≥ 1, got {args.max_new_tokens}")
    try:
        check_model_source(args.model, "--model")
        for path in args.images:
            check_image(Path(path))
        model = TIPPoModel.from_pretrained(args.model).to(args.device).eval()
        processor = TIPPoProcessor.from_pretrained(args.model)
        batch = processor(titles=[args.title], images=[[open_image(path) for path in args.images]])
        options = {"num_beams": args.num_beams, "do_sample": args.do_sample}
        if args.do_sample:
            options["temperature"] = args.temperature
        if args.max_new_tokens:
            options["max_new_tokens"] = args.max_new_tokens
        output = model.generate(**{name: tensor.to(args.device) for name, tensor in batch.items()}, **options)
    except (ValueError, OSError) as error:
        print(f"tippo-generate: {error}", file=sys.stderr)
        return 2
    print(processor.batch_decode(output)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
