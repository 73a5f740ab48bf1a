"""The model card pushed with a TIPPo model: what it is, how to run it, how it was trained, its final metrics."""

from __future__ import annotations

import json

import yaml
from huggingface_hub import ModelCard, ModelCardData


TEMPLATE = """---
{card_data}
---

# {model_name}

A TIPPo ("TIP and Polish") model (title + images → text) trained with `tippo_rl` ({stage}).

- Frozen encoder φ: {encoder}
- Decoder: {decoder}
- Architecture: {architecture}

## Quick start

```python
from PIL import Image
from tippo_rl import TIPPoModel, TIPPoProcessor

model = TIPPoModel.from_pretrained("{repo}")
processor = TIPPoProcessor.from_pretrained("{repo}")
batch = processor(titles=["{example_title}"], images=[[Image.open("a.jpg"), Image.open("b.jpg")]])
print(processor.batch_decode(model.generate(**batch, num_beams=4)))
```

or on the command line: `tippo-generate --model {repo} --title "..." --images a.jpg b.jpg`.

## Final metrics

{metrics}

## Training configuration

```yaml
{config}
```

## Framework versions

{versions}
"""


def build_model_card(trainer, stage: str, model_name: str, dataset_name: str | None = None, tags=()) -> ModelCard:
    """A model card for the model `trainer` trained (`stage`: "SFT" or "PolishPPO")."""
    import datasets
    import torch
    import transformers
    import trl

    from . import __version__

    model = trainer.accelerator.unwrap_model(trainer.model)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    base_models = [name for name in (config.encoder_name_or_path, config.decoder_name_or_path) if name]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-to-text",
        tags=sorted({"tippo", "tippo_rl", "trl", "multimodal", stage.lower(), *tags}),
        base_model=base_models or None,
        datasets=[dataset_name] if dataset_name and "/" in dataset_name else None,
    )
    final = {}
    for entry in trainer.state.log_history:
        final.update({key: value for key, value in entry.items() if isinstance(value, (int, float))})
    metrics = "\n".join(f"| {key} | {value:.4g} |" for key, value in sorted(final.items())) or "(none logged)"
    arguments = {key: value for key, value in trainer.args.to_dict().items() if not key.startswith(("hub_token", "push_to_hub_token"))}
    return ModelCard(
        TEMPLATE.format(
            card_data=card_data.to_yaml(),
            model_name=model_name,
            stage=stage,
            encoder=config.encoder_name_or_path or "built from a config (random weights)",
            decoder=config.decoder_name_or_path or "built from a config (random weights)",
            architecture="TIPPo (DAA + DO)" if config.use_daa_do else "TIP ablation (no DAA, no DO)",
            repo=trainer.args.hub_model_id or model_name,
            example_title="...",
            metrics="| metric | value |\n|---|---|\n" + metrics if final else metrics,
            config=yaml.safe_dump(json.loads(json.dumps(arguments, default=str)), sort_keys=True, allow_unicode=True),
            versions="\n".join(
                f"- {name}: {version}"
                for name, version in (
                    ("tippo_rl", __version__),
                    ("TRL", trl.__version__),
                    ("Transformers", transformers.__version__),
                    ("PyTorch", torch.__version__),
                    ("Datasets", datasets.__version__),
                )
            ),
        )
    )
