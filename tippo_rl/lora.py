"""LoRA for TIPPo (`--use_peft`): PEFT's adapters on the decoder's attention, TIPPo's own modules trained fully, φ
frozen."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

from .model_config import TIPPoModelConfig
from .modeling_tippo import TIPPoForConditionalGeneration


# Everything TIPPo adds in front of the decoder trains fully when the decoder gets LoRA.
TIPPO_MODULES = [
    "text_adapter",
    "image_adapter",
    "dual_alignment_attention",
    "difference_operator",
    "image_slot_embedding",
]
# LoRA's default targets: T5's attention projections, or those of a Llama/Qwen2-style causal LM (φ's are named otherwise).
LORA_TARGETS = {"seq2seq": ["q", "v"], "causal": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def lora_config(args: TIPPoModelConfig, model: TIPPoForConditionalGeneration) -> LoraConfig | None:
    """LoRA on the decoder's attention (`lora_target_modules`, default `LORA_TARGETS` for the decoder's kind), with
    TIPPo's own modules (those `model` has) fully trainable. None unless `--use_peft`."""
    if not args.use_peft:
        return None
    present = [name for name in TIPPO_MODULES if hasattr(model, name)]
    targets = args.lora_target_modules or LORA_TARGETS["seq2seq" if model.config.is_encoder_decoder else "causal"]
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        # A regex (PEFT full-matches it): only the decoder's modules, never φ's.
        target_modules=rf"language_model\..*\.({'|'.join(targets)})",
        modules_to_save=present + list(args.lora_modules_to_save or []),
        use_rslora=args.use_rslora,
        use_dora=args.use_dora,
    )


def apply_lora(model: TIPPoForConditionalGeneration, args: TIPPoModelConfig):
    """Wrap `model` with LoRA when `--use_peft` is set; otherwise return it unchanged."""
    config = lora_config(args, model)
    return model if config is None else get_peft_model(model, config)
