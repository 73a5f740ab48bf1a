"""The model card saved and pushed with a TIPPo model: what it is, where it started, on what data, a quick start that
runs as written, how it was trained and its final metrics.

Built as TRL builds its cards (`trl.trainer.utils.generate_model_card`: `huggingface_hub.ModelCard.from_template` with
`ModelCardData`), from a TIPPo template, since TRL's shows a text-generation pipeline, which a TIPPo model is not.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData


TEMPLATE = """---
{{ card_data }}
---

# Model Card for {{ model_name }}

A TIPPo ("TIP and Polish") model (title + images → text), {{ origin }}{% if dataset_text %} on {{ dataset_text }}{% endif %}.
It has been trained with tippo_rl ({{ stage }}) on [TRL](https://github.com/huggingface/trl).

- Started from: {{ start }}
- Frozen encoder φ: {{ encoder }}
- Decoder: {{ decoder }}
- Architecture: {{ architecture }}

## Quick start

```python
from PIL import Image
from transformers import pipeline

import tippo_rl  # registers TIPPo with the Auto classes the pipeline loads

generator = pipeline("image-text-to-text", model="{{ repo }}")
images = [Image.new("RGB", (224, 224), "red"), Image.new("RGB", (224, 224), "blue")]  # or paths: ["a.jpg", "b.jpg"]
output = generator(
    images=images, text="a day in the garden", return_full_text=False, generate_kwargs={"num_beams": 4, "max_new_tokens": 48}
)
print(output[0]["generated_text"])
```

The title is the pipeline's `text` (`text=""` for none); `return_full_text=False` keeps the title out of the output.
transformers 5 has no separate `image-to-text` pipeline: `pipeline("image-to-text", ...)` builds this one, which
needs `text`. With the model and processor:

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import tippo_rl

model = AutoModelForImageTextToText.from_pretrained("{{ repo }}")
processor = AutoProcessor.from_pretrained("{{ repo }}")
batch = processor(titles="a day in the garden", images=[Image.new("RGB", (224, 224), "red")])
print(processor.batch_decode(model.generate(**batch, num_beams=4, max_new_tokens=48)))
```

or on the command line: `tippo-generate --model {{ repo }} --title "a day in the garden" --images a.jpg b.jpg`.

## Final metrics

{{ metrics }}

## Training configuration

Options that differ from their defaults.

```yaml
{{ config }}
```

### Framework versions

{{ versions }}
"""

# How the logged metrics read: the card says it under its table.
METRIC_UNITS = (
    "Scores are on the scale tippo_rl logs them: ROUGE-L, BLEU, METEOR, BERTScore, the literal reward (Eq. 7) and "
    "the rewards are 0–1 (papers print ROUGE-L, BLEU and METEOR ×100); CIDEr-D is pycocoevalcap's (about 0–10, "
    "papers print it ×100). Losses and the other values are as the trainer logs them; `*_runtime` in seconds."
)


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def non_default_fields(arguments: Any) -> dict[str, Any]:
    """The fields of a dataclass instance whose values differ from their defaults (no token fields), as YAML-ready
    values: a nested dataclass (TrainingArguments' `accelerator_config`) as its own differing fields, enums as their
    values, and an empty value that `__post_init__` resolved from a None, "auto" or "none" default (`report_to: []`,
    `pad_to_multiple_of: null`) left out."""
    values = {}
    for field in dataclasses.fields(arguments):
        if not field.init or "token" in field.name:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(arguments, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = non_default_fields(value) or default
        if hasattr(value, "value") and not isinstance(value, dict):  # an enum reads as its value
            value = value.value
        if value == default or (default in (None, "", "auto", "none") and value in (False, [], {}, "", None)):
            continue
        values[field.name] = value
    return json.loads(json.dumps(values, default=str))


def _started_from_card(start: str) -> dict[str, Any]:
    """The card metadata of the saved model a run started from (its README.md), or {}."""
    readme = Path(start) / "README.md"
    if not start or not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme).data.to_dict()
    except Exception:  # a hand-written README without card metadata
        return {}


def _provenance(start: str, base_models: list[str], config, stage: str) -> dict[str, str]:
    """The card's lines on where the weights come from: `origin` (the first sentence's), `start`, `encoder` and
    `decoder`, for a model that started from `start` (a hub id, a saved folder, or "" for a fresh model) and whose
    `config` names the checkpoints its components were first initialised from."""
    hub_link = lambda name: f"[{name}](https://huggingface.co/{name})"  # noqa: E731
    if _is_hub_id(start):
        origin, start_text = f"fine-tuned from {hub_link(start)}", f"`{start}` (a TIPPo model), trained further here"
    elif start:
        origin = "fine-tuned from a saved TIPPo model"
        if base_models:
            origin += " (itself from " + ", ".join(hub_link(name) for name in base_models) + ")"
        start_text = f"the saved TIPPo model `{start}`, trained further here"
    else:
        origin, start_text = "built and trained here", "a fresh TIPPo model built here (its components below)"
    if start:  # trained weights: never "random", whatever the config's component names say
        encoder = "as in the model it started from (φ stays frozen)"
        decoder = "the model it started from, trained further here"
        if config.encoder_name_or_path:
            encoder += f"; first initialised from `{config.encoder_name_or_path}`"
        if config.decoder_name_or_path:
            decoder += f"; first initialised from `{config.decoder_name_or_path}`"
    else:
        encoder = (
            f"initialised from `{config.encoder_name_or_path}`"
            if config.encoder_name_or_path
            else "built from a config (random weights, or the tiny preset's CLIP-style pretraining)"
        )
        decoder = (
            f"initialised from `{config.decoder_name_or_path}`"
            if config.decoder_name_or_path
            else f"built from a config (random weights at the start of this {stage} run)"
        )
    return {"origin": origin, "start": start_text, "encoder": encoder, "decoder": decoder}


def build_model_card(
    trainer,
    stage: str,
    model_name: str,
    dataset_name: str | None = None,
    tags=(),
    script_args: Any = None,
    model_args: Any = None,
) -> ModelCard:
    """A model card for the model `trainer` trained (`stage`: "SFT", "PPO" or "PolishPPO").

    Args:
        dataset_name: what the data is called (a hub id goes into the card's `datasets`).
        script_args, model_args: the recipe's data and model arguments, shown beside the training arguments.
    """
    import datasets
    import torch
    import transformers
    import trl

    from . import __version__

    model = trainer.accelerator.unwrap_model(trainer.model)
    policy = trainer._policy(model) if hasattr(trainer, "_policy") else model
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    config = base.config
    start = getattr(base, "name_or_path", "") or ""
    components = [name for name in (config.encoder_name_or_path, config.decoder_name_or_path) if _is_hub_id(name)]
    # base_model: the hub model it was fine-tuned from; for a saved folder, the one that folder's card names; else the
    # hub checkpoints its parts came from.
    earlier = _started_from_card(start)
    if _is_hub_id(start):
        base_models = [start]
    elif earlier.get("base_model"):
        base_models = [earlier["base_model"]] if isinstance(earlier["base_model"], str) else earlier["base_model"]
    else:
        base_models = components
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        model_name=model_name,
        tags=sorted({"tippo", "tippo_rl", "trl", "multimodal", stage.lower(), *tags}),
        base_model=base_models or None,
        datasets=[dataset_name] if _is_hub_id(dataset_name) else None,
    )
    final = {}
    for entry in trainer.state.log_history:
        final.update({key: value for key, value in entry.items() if isinstance(value, (int, float))})
    metrics = "\n".join(f"| {key} | {value:.4g} |" for key, value in sorted(final.items()))
    sections = {"training": non_default_fields(trainer.args)}
    if script_args is not None:
        sections["data"] = non_default_fields(script_args)
    if model_args is not None:
        sections["model"] = non_default_fields(model_args)
    if _is_hub_id(dataset_name):
        dataset_text = f"[{dataset_name}](https://huggingface.co/datasets/{dataset_name})"
    else:
        dataset_text = f"`{dataset_name}`" if dataset_name else None
    repo = trainer.args.hub_model_id or str(Path(trainer.args.output_dir).resolve())
    versions = (
        ("tippo_rl", __version__),
        ("TRL", trl.__version__),
        ("Transformers", transformers.__version__),
        ("PyTorch", torch.__version__),
        ("Datasets", datasets.__version__),
    )
    table = "| metric | value |\n|---|---|\n" + metrics + "\n\n" + METRIC_UNITS
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        model_name=model_name,
        stage=stage,
        dataset_text=dataset_text,
        **_provenance(start, base_models, config, stage),
        architecture="TIPPo (DAA + DO)" if config.use_daa_do else "TIP ablation (no DAA, no DO)",
        repo=repo,
        metrics=table if final else "(none logged)",
        config=yaml.safe_dump(sections, sort_keys=True, allow_unicode=True).strip(),
        versions="\n".join(f"- {name}: {version}" for name, version in versions),
    )
