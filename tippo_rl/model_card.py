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

A TIPPo ("TIP and Polish") model (title + images → text), trained with [tippo_rl](https://github.com/) ({{ stage }})
on [TRL](https://github.com/huggingface/trl){% if dataset_name %}, on {{ dataset_name }}{% endif %}.

- Started from: {{ start }}
- Frozen encoder φ: {{ encoder }}
- Decoder: {{ decoder }}
- Architecture: {{ architecture }}

## Quick start

```python
from PIL import Image
from transformers import AutoModel, AutoProcessor

import tippo_rl  # registers TIPPo with AutoModel and AutoProcessor

model = AutoModel.from_pretrained("{{ repo }}")
processor = AutoProcessor.from_pretrained("{{ repo }}")
images = [Image.new("RGB", (224, 224), "red"), Image.new("RGB", (224, 224), "blue")]  # or paths: ["a.jpg", "b.jpg"]
batch = processor(titles="a day in the garden", images=images)
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


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def non_default_fields(arguments: Any) -> dict[str, Any]:
    """The fields of a dataclass instance whose values differ from their defaults (no token fields)."""
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
        if value != default and not (hasattr(value, "value") and value.value == default):  # enums read as their value
            values[field.name] = value
    return json.loads(json.dumps(values, default=str))


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
    # base_model: the hub model it was fine-tuned from, else the hub checkpoints its parts came from.
    base_models = [start] if _is_hub_id(start) else components
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-to-text",
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
    if start:
        start_text = f"`{start}` (a TIPPo model), trained further here"
    else:
        start_text = "a fresh TIPPo model built here (its components below)"
    repo = trainer.args.hub_model_id or str(Path(trainer.args.output_dir).resolve())
    versions = (
        ("tippo_rl", __version__),
        ("TRL", trl.__version__),
        ("Transformers", transformers.__version__),
        ("PyTorch", torch.__version__),
        ("Datasets", datasets.__version__),
    )
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        model_name=model_name,
        stage=stage,
        dataset_name=dataset_name,
        start=start_text,
        encoder=f"initialised from `{config.encoder_name_or_path}`"
        if config.encoder_name_or_path
        else "built from a config (random weights, or the tiny preset's CLIP-style pretraining)",
        decoder=f"initialised from `{config.decoder_name_or_path}`"
        if config.decoder_name_or_path
        else "built from a config (random weights at the start of SFT)",
        architecture="TIPPo (DAA + DO)" if config.use_daa_do else "TIP ablation (no DAA, no DO)",
        repo=repo,
        metrics=("| metric | value |\n|---|---|\n" + metrics) if final else "(none logged)",
        config=yaml.safe_dump(sections, sort_keys=True, allow_unicode=True).strip(),
        versions="\n".join(f"- {name}: {version}" for name, version in versions),
    )
