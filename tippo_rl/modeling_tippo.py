"""TIPPo: Text-Image-Prototype guided generation, top to bottom (φ: `frozen_encoder.py`; causal LMs: `causal_decoder.py`)

frozen Chinese-CLIP φ → adapters π_T, π_V → prototype S^P → Dual Alignment Attention (Eq. 1–2) → Difference Operator
(Eq. 3–4) → fusion S^F = [S^T; S_1^A; S_1^D; …] → T5 (S^F is its encoder's input) or a causal LM (S^F prefixes its
`inputs_embeds`, then the prompt tokens, then the completion); with labels, the loss L_SFT = L_NTP + α·L_C (Eq. 5).

Equations refer to `shared/method/TIPPo.md` and the paper (TIPPo.txt).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import Seq2SeqLMOutput

from .causal_decoder import TIPPoCausalLMOutput, causal_forward, causal_prompt, prompt_cache
from .configuration_tippo import TIPPoConfig
from .frozen_encoder import TIPPoFrozenEncoder


IMAGE_SLOT_EMBEDDING_STD = 0.5  # initial scale of the image-slot embeddings (see _init_weights)


@dataclass
class TIPPoPrefix:
    """What the TIPPo front end hands to the decoder. Attributes:
    inputs_embeds: `(batch, k + 2·N·k, d)` (or `(batch, k + N·k, d)` for the TIP ablation) — the fusion S^F.
    attention_mask: `(batch, seq)` — 0 on the tokens of padding images.
    image_signals: `(batch, N, k, d)` — S_i^I, kept for the contrastive loss (Eq. 5).
    image_mask: `(batch, N)` bool — which image slots hold a real image.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    image_signals: torch.Tensor
    image_mask: torch.Tensor


@dataclass
class TIPPoSeq2SeqLMOutput(Seq2SeqLMOutput):
    """`Seq2SeqLMOutput` plus the image signals S_i^I `(batch, N, k, d)`, their mask `(batch, N)` and, with labels, the
    terms of `loss` = L_SFT: `ntp_loss` (L_NTP) and `contrastive_loss` (L_C, None when α = 0)."""

    image_signals: torch.FloatTensor | None = None
    image_mask: torch.BoolTensor | None = None
    image_keys: torch.DoubleTensor | None = None
    ntp_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None


class TIPPoPrefixAdapter(nn.Module):
    """π_T / π_V: one φ vector `(..., d_φ)` → a prefix of k decoder tokens `(..., k, d)` (ClipCap-style MLP)."""

    def __init__(self, config: TIPPoConfig):
        super().__init__()
        self.prefix_length = config.prefix_length
        self.hidden_size = config.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(config.feature_size, config.adapter_hidden_size),
            nn.Tanh(),
            nn.Linear(config.adapter_hidden_size, config.prefix_length * config.hidden_size),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).unflatten(-1, (self.prefix_length, self.hidden_size))


class ElementwiseProjection(nn.Module):
    """W ⊙ S: a trainable `(k, d)` array times the signal `(..., k, d)` element by element (DAA as the paper writes it)."""

    def __init__(self, prefix_length: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(prefix_length, hidden_size))

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return self.weight * signal


class TIPPoDualAlignmentAttention(nn.Module):
    """Dual Alignment Attention (Eq. 1–2): text-image and prototype-image maps jointly re-weight each image."""

    def __init__(self, config: TIPPoConfig):
        super().__init__()
        d = config.hidden_size
        if config.daa_projection == "elementwise":  # the paper's W ⊙ S
            projection = lambda: ElementwiseProjection(config.prefix_length, d)  # noqa: E731
        else:  # W·S, a d×d matrix
            projection = lambda: nn.Linear(d, d, bias=False)  # noqa: E731
        self.text_query = projection()  # W^TQ
        self.prototype_query = projection()  # W^PQ
        self.text_image_key = projection()  # W^TIK
        self.prototype_image_key = projection()  # W^PIK
        self.value = projection()  # W^V
        self.scale = 1.0 / math.sqrt(d)  # 1/√d_k, single head so d_k = d

    def forward(
        self, text_signal: torch.Tensor, prototype: torch.Tensor, image_signals: torch.Tensor, lambda1: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            text_signal: S^T `(batch, k, d)`. prototype: S^P `(batch, k, d)`.
            image_signals: S^I `(batch, N, k, d)`. lambda1: λ1, a 1-element tensor.
        Returns:
            S^A `(batch, N, k, d)`.
        """
        q_text = self.text_query(text_signal).unsqueeze(1)  # Q^T = S^T W^TQ
        q_prototype = self.prototype_query(prototype).unsqueeze(1)  # Q^P = S^P W^PQ
        k_text = self.text_image_key(image_signals)  # K_i^T = S_i^I W^TIK
        k_prototype = self.prototype_image_key(image_signals)  # K_i^P = S_i^I W^PIK
        values = self.value(image_signals)  # V_i = S_i^I W^V
        prototype_map = torch.softmax(q_prototype @ k_prototype.transpose(-1, -2) * self.scale, dim=-1)
        text_map = torch.softmax(q_text @ k_text.transpose(-1, -2) * self.scale, dim=-1)
        lambda1 = lambda1.to(values.dtype)
        return (lambda1 * prototype_map + (1 - lambda1) * text_map) @ values  # Eq. 2


class TIPPoDifferenceOperator(nn.Module):
    """Difference Operator (Eq. 3–4): S_i^D = (S_i^I − S^P) + π_D(S_i^I − S^P)."""

    def __init__(self, config: TIPPoConfig):
        super().__init__()
        self.projection = nn.Linear(config.hidden_size, config.hidden_size)  # π_D

    def forward(self, image_signals: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        """S^I `(batch, N, k, d)`, S^P `(batch, k, d)` → S^D `(batch, N, k, d)`."""
        difference = image_signals - prototype.unsqueeze(1)
        return difference + self.projection(difference)  # Eq. 4


def visual_prototype(image_signals: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """S^P = mean of the sample's real image signals; `(batch, N, k, d)`, `(batch, N)` → `(batch, k, d)`."""
    weights = image_mask.to(image_signals.dtype)[:, :, None, None]
    return (image_signals * weights).sum(1) / weights.sum(1).clamp(min=1)


def batch_mean_image_signal(image_signals: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """The mean of every real image signal in the batch (§2.2's prototype of a one-image sample);
    `(batch, N, ...)`, `(batch, N)` → `(...)`."""
    weights = image_mask.to(image_signals.dtype).reshape(*image_mask.shape, *[1] * (image_signals.dim() - 2))
    return (image_signals * weights).sum((0, 1)) / weights.sum().clamp(min=1)


def image_keys(images: torch.Tensor) -> torch.Tensor:
    """One number per image slot, `(batch, N, ...)` → `(batch, N)` float64, that copies of an image (the same pixels,
    or the same cached φ features) share: a fixed projection of the slot's values, which different images do not
    share in practice. A dataset with several captions per image (COCO: five) puts copies of an image in one batch."""
    flat = images.detach().flatten(2).double()
    weights = torch.sin(torch.arange(flat.shape[-1], device=flat.device, dtype=torch.float64) * 12.9898 + 1.0)
    return flat @ weights


def same_image(keys: torch.Tensor, other_keys: torch.Tensor) -> torch.Tensor:
    """`(n,)`, `(m,)` `image_keys` → `(n, m)` bool: which pairs are copies of one image (equal up to rounding)."""
    scale = torch.cat([keys.abs(), other_keys.abs()]).max().clamp(min=1.0)
    return (keys[:, None] - other_keys[None, :]).abs() <= 1e-9 * scale


def prototype_contrastive_loss(
    image_signals: torch.Tensor,
    image_mask: torch.Tensor,
    temperature: float = 1.0,
    negatives: str = "batch",
    other_signals: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    other_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_C (Eq. 5), InfoNCE with the prototype as each image's positive anchor.

    For each real image signal s_i (S_i^I flattened) of sample b:
        −log( exp(cos(s_i, p_b)/τ) / Σ_j exp(cos(s_i, s_j)/τ) ),
    the sum over every real image signal j in the batch (the sample's own images and the other samples' images, j = i
    included as in Eq. 5), averaged over all real images. p_b is sample b's prototype; a sample with a single image
    takes the batch's mean image signal instead (paper, §2.2), since its own mean would be the image itself.

    Args:
        image_signals: `(batch, N, k, d)`. image_mask: `(batch, N)`. temperature: τ (paper: 1).
        negatives: `batch` (the decision above) or `own_images`: Eq. 5 as written, the sum over j running over the
            sample's own images only (a one-image sample then has itself as its only term).
        other_signals: `(M, k, d)` real image signals from elsewhere (other processes' micro-batches under DDP,
            without gradient), added to every denominator as negatives; `batch` only.
        keys, other_keys: `(batch, N)` and `(M,)` `image_keys` of the images. Where given, the copies of an image (the
            same image in another sample: another caption of it) share one term of each denominator, each weighted by
            1/copies, as if the batch held the image once: a copy is not its own negative. Without keys, copies are
            counted apart, and L_C cannot fall below the log of the number of copies.
    Returns:
        A scalar tensor.
    """
    # Every image slot is computed and padding slots are masked out, so no shape depends on the data (no host sync).
    image_mask = image_mask.bool()
    n_images = image_mask.shape[1]
    signals = image_signals.flatten(2)  # (batch, N, k·d)
    images_per_sample = image_mask.sum(1, keepdim=True)  # (batch, 1)
    prototypes = visual_prototype(signals[:, :, None, :], image_mask)[:, 0]  # p_b (batch, k·d)
    prototypes = torch.where(images_per_sample == 1, batch_mean_image_signal(signals, image_mask), prototypes)
    unit = F.normalize(signals, dim=-1).flatten(0, 1)  # s_i, (batch·N, k·d); row i belongs to sample i // N
    real = image_mask.flatten()
    anchors = F.normalize(prototypes, dim=-1).repeat_interleave(n_images, 0)
    positive = (unit * anchors).sum(-1) / temperature  # cos(s_i, p_b)/τ
    all_pairs = (unit @ unit.T / temperature).masked_fill(~real[None, :], float("-inf"))  # cos(s_i, s_j)/τ, real j
    if negatives == "own_images":  # Eq. 5 as written: j over sample b's own images
        sample = torch.arange(image_mask.shape[0], device=unit.device).repeat_interleave(n_images)
        all_pairs = all_pairs.masked_fill(sample[:, None] != sample[None, :], float("-inf"))
    elif negatives != "batch":
        raise ValueError(f"negatives must be `batch` or `own_images`, got {negatives!r}")
    if other_signals is not None and len(other_signals):
        if negatives != "batch":
            raise ValueError("other_signals are extra negatives of the `batch` reading; `own_images` has none")
        others = F.normalize(other_signals.flatten(1).to(unit.dtype), dim=-1)
        all_pairs = torch.cat([all_pairs, unit @ others.T / temperature], dim=1)  # cos(s_i, s_j)/τ, j elsewhere
    if keys is not None:  # copies of one image (its other captions) share one term of every denominator
        column_keys = keys.flatten() if other_keys is None else torch.cat([keys.flatten(), other_keys])
        column_real = real if other_keys is None else torch.cat([real, real.new_ones(len(other_keys))])
        copies = (same_image(column_keys, column_keys) & column_real[None, :]).sum(1).clamp(min=1)
        all_pairs = all_pairs - copies.log().to(all_pairs.dtype)[None, :]
    per_image = torch.logsumexp(all_pairs, dim=-1) - positive  # Eq. 5, for each slot
    return per_image.masked_fill(~real, 0.0).sum() / real.sum()  # mean over the real images


class TIPPoPreTrainedModel(PreTrainedModel):
    config_class = TIPPoConfig
    base_model_prefix = "tippo"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    # Losses are means over the batch's tokens; the Trainer scales them for gradient accumulation.
    accepts_loss_kwargs = False
    _no_split_modules = ["T5Block", "ChineseCLIPVisionLayer", "ChineseCLIPTextLayer"]
    _supports_sdpa = True

    @property
    def is_gradient_checkpointing(self) -> bool:
        # transformers 5 renamed it `is_activation_checkpointing` and warns on the old name, which TRL 1.16
        # (`unwrap_model_for_generation`) and PEFT still read on every generation: answer them without the warning.
        return self.is_activation_checkpointing

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # Sub-models (T5, the CLIP towers) are initialised by their own classes; this covers TIPPo's modules.
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding) and module is getattr(self, "image_slot_embedding", None):
            # Large enough to tell the slots apart from the first step. At the usual 0.02 the decoder first learnt the
            # objects as a bag, and only some seeds later learnt which image is which (demo SFT, 600 steps, seeds
            # 100–102: ROUGE-L 84.9, 91.3, 85.7, objects swapped; at 0.5: 96.4, 93.2, 94.7, count right in ≥ 99%).
            module.weight.normal_(mean=0.0, std=IMAGE_SLOT_EMBEDDING_STD)
        elif isinstance(module, ElementwiseProjection):
            module.weight.fill_(1.0)  # W ⊙ S starts as the identity
        elif isinstance(module, TIPPoForConditionalGeneration):
            module.daa_lambda1.fill_(self.config.daa_lambda1)


class TIPPoForConditionalGeneration(TIPPoPreTrainedModel, GenerationMixin):
    """TIPPo: text + images → text, with a frozen Chinese-CLIP encoder and a T5 or causal-LM decoder.

    A causal decoder (`config.is_encoder_decoder` False) reads `[S^F; prompt; completion]` (`causal_decoder.py`); its
    outputs cover the completion only, so `labels`, `decoder_input_ids` and `logits` line up as T5's.

    Inputs come either as pixels and tokens (`pixel_values`, `title_input_ids`) or as the frozen encoder's
    cached outputs (`image_features`, `title_features`); both give the same outputs up to float32 rounding (φ then ran
    on other batches: logits differ by ~1e-7), not bit for bit.
    """

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, safetensors only: a pickle (`pytorch_model.bin`) can run code on load."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def __init__(self, config: TIPPoConfig):
        super().__init__(config)
        self.encoder = TIPPoFrozenEncoder(config.encoder_config)
        self.text_adapter = TIPPoPrefixAdapter(config)  # π_T
        self.image_adapter = TIPPoPrefixAdapter(config)  # π_V
        if config.use_daa_do:
            self.dual_alignment_attention = TIPPoDualAlignmentAttention(config)
            self.difference_operator = TIPPoDifferenceOperator(config)
        if config.image_slot_embeddings:  # not in the paper: which image slot a fusion token came from
            self.image_slot_embedding = nn.Embedding(config.max_images, config.hidden_size)
        if config.is_encoder_decoder:
            self.language_model = T5ForConditionalGeneration._from_config(config.decoder_config)
        else:
            self.language_model = AutoModelForCausalLM.from_config(config.decoder_config)
            self._no_split_modules = [*self._no_split_modules, *(self.language_model._no_split_modules or [])]
        # λ1 of Eq. 2, 1-D so that DeepSpeed can shard it; saved with the weights.
        self.register_buffer("daa_lambda1", torch.tensor([config.daa_lambda1]), persistent=True)
        if config.single_image_prototype == "running_mean":  # S^P of one-image samples; saved, fixed at inference
            self.register_buffer("prototype_running_mean", torch.zeros(config.prefix_length, config.hidden_size))
            self.register_buffer("prototype_updates", torch.zeros(1))  # the first update copies the mean
        self.post_init()
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    # -- bookkeeping -----------------------------------------------------------------------------------

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # a frozen φ keeps dropout off, so cached features equal live ones
        return self

    def set_daa_lambda1(self, value: float) -> None:
        """Set λ1 of Eq. 2 (λ2 = 1 − λ1): the trainers' `daa_lambda_schedule` does, SFT every step, PPO every iteration."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"λ1 must lie in [0, 1], got {value}")
        self.daa_lambda1.fill_(value)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_encoder(self):
        return self.language_model.get_encoder() if self.config.is_encoder_decoder else None

    def floating_point_ops(self, input_dict: dict, exclude_embeddings: bool = True) -> int:
        """Training FLOPs of a batch for the Trainer's `total_flos`: 6 × trainable parameters × label tokens (the
        default would count `pixel_values` elements as tokens)."""
        labels = input_dict.get("labels")
        tokens = int((labels != -100).sum()) if labels is not None else 0
        return 6 * tokens * self.num_parameters(exclude_embeddings=exclude_embeddings, only_trainable=True)

    # -- the TIPPo front end ---------------------------------------------------------------------------

    def encode_frozen_features(
        self,
        pixel_values: torch.Tensor,
        image_mask: torch.Tensor,
        title_input_ids: torch.Tensor,
        title_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """φ(I_i) and φ(T), the only work of the frozen encoder (what the feature cache stores).

        Args:
            pixel_values: `(batch, N, 3, H, W)`; padding slots are skipped. image_mask: `(batch, N)`.
            title_input_ids, title_attention_mask: `(batch, L)`.
        Returns:
            image_features `(batch, N, d_φ)` (zeros in padding slots), title_features `(batch, d_φ)`.
        """
        image_mask = image_mask.bool()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            real_features = self.encoder.encode_images(pixel_values[image_mask])
            image_features = real_features.new_zeros(*image_mask.shape, real_features.shape[-1])
            image_features[image_mask] = real_features
            title_features = self.encoder.encode_text(title_input_ids, title_attention_mask)
        return image_features, title_features

    def encode_prefix(
        self,
        image_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        title_input_ids: torch.Tensor | None = None,
        title_attention_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        title_features: torch.Tensor | None = None,
    ) -> TIPPoPrefix:
        """Adapters, prototype, DAA, DO and fusion: everything between φ and the decoder."""
        if image_mask is None:
            raise ValueError("a TIPPo model needs `image_mask` (batch, N): which image slots hold a real image")
        image_mask = image_mask.bool()
        # Checked where it is free: on an accelerator `.any()` would stall the launch queue every step, and the
        # processor and collator already reject image-less samples by name.
        if image_mask.device.type == "cpu" and (image_mask.sum(1) == 0).any():
            raise ValueError("every sample needs at least one image; got a sample whose image_mask is all 0")
        if image_features is None or title_features is None:
            if pixel_values is None or title_input_ids is None:
                raise ValueError(
                    "a TIPPo model needs either `pixel_values` + `title_input_ids` or the cached "
                    "`image_features` + `title_features`"
                )
            image_features, title_features = self.encode_frozen_features(
                pixel_values, image_mask, title_input_ids, title_attention_mask
            )
        dtype = self.text_adapter.mlp[0].weight.dtype
        text_signal = self.text_adapter(title_features.to(dtype))  # S^T (batch, k, d)
        image_signals = self.image_adapter(image_features.to(dtype))  # S^I (batch, N, k, d)
        batch, n_images, k, d = image_signals.shape

        if self.config.use_daa_do:
            prototype = visual_prototype(image_signals, image_mask)  # S^P
            if self.config.single_image_prototype == "running_mean":
                prototype = self.single_image_prototype(prototype, image_signals, image_mask)
            augmented = self.dual_alignment_attention(text_signal, prototype, image_signals, self.daa_lambda1)
            differential = self.difference_operator(image_signals, prototype)
            per_image = torch.cat([augmented, differential], dim=2)  # [S_i^A; S_i^D] (batch, N, 2k, d)
        else:  # TIP ablation: [S^T; S_1^I; …; S_N^I]
            per_image = image_signals
        if self.config.image_slot_embeddings:
            per_image = per_image + self.image_slot_embedding.weight[:n_images, None, :].to(per_image.dtype)
        tokens_per_image = per_image.shape[2]
        inputs_embeds = torch.cat([text_signal, per_image.reshape(batch, n_images * tokens_per_image, d)], dim=1)
        attention_mask = torch.cat(
            [image_mask.new_ones(batch, k), image_mask.repeat_interleave(tokens_per_image, dim=1)], dim=1
        ).long()
        return TIPPoPrefix(inputs_embeds, attention_mask, image_signals, image_mask)

    def single_image_prototype(
        self, prototype: torch.Tensor, image_signals: torch.Tensor, image_mask: torch.Tensor
    ) -> torch.Tensor:
        """`single_image_prototype: running_mean`: one-image samples take the running mean of real image signals as S^P.
        In training the mean is first moved towards this batch's (m ← μ·m + (1 − μ)·mean, no gradient; the first
        training batch sets it)."""
        if self.training:
            with torch.no_grad():
                batch_mean = batch_mean_image_signal(image_signals, image_mask).to(self.prototype_running_mean.dtype)
                momentum = self.config.prototype_momentum
                moved = momentum * self.prototype_running_mean + (1 - momentum) * batch_mean
                self.prototype_running_mean.copy_(torch.where(self.prototype_updates > 0, moved, batch_mean))
                self.prototype_updates.add_(1)
        single = (image_mask.sum(1) == 1)[:, None, None]
        return torch.where(single, self.prototype_running_mean.to(prototype.dtype), prototype)

    # -- the decoder -----------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        title_input_ids: torch.Tensor | None = None,
        title_attention_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        title_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        completions_per_input: int = 1,
        **kwargs,
    ) -> TIPPoSeq2SeqLMOutput | TIPPoCausalLMOutput:
        """Teacher-forced pass. With `labels` `(batch, T)` (-100 = ignored), `loss` is L_SFT = L_NTP + α·L_C, α being
        `config.contrastive_weight` (`ntp_loss` and `contrastive_loss` hold the terms). A causal decoder also reads
        `prompt_input_ids` / `prompt_attention_mask` `(batch, L)` (see `causal_decoder.causal_forward`).

        `completions_per_input` = k > 1 (RL: k completions of each prompt): the inputs hold each prompt once
        `(batch, ...)` and `decoder_input_ids` / `labels` its k completions in a row `(batch·k, T)`. Everything up to the
        decoder (φ, adapters, DAA, DO, fusion, and T5's encoder) runs once per prompt; its output is repeated k times
        (gradients from the k completions add up in the shared part). A causal decoder's LM reads the prefix once too;
        its KV cache, repeated k times, is what the completions attend to (`causal_decoder.prompt_once_forward`)."""
        prefix = self.encode_prefix(
            image_mask, pixel_values, title_input_ids, title_attention_mask, image_features, title_features
        )
        k = completions_per_input
        if self.config.is_encoder_decoder and k > 1:
            encoded = self.language_model.get_encoder()(
                inputs_embeds=prefix.inputs_embeds, attention_mask=prefix.attention_mask, return_dict=True
            )
            kwargs["encoder_outputs"] = (encoded.last_hidden_state.repeat_interleave(k, 0),)
            prefix = TIPPoPrefix(
                None, prefix.attention_mask.repeat_interleave(k, 0), prefix.image_signals, prefix.image_mask
            )
        if self.config.is_encoder_decoder:
            outputs = self.language_model(
                inputs_embeds=prefix.inputs_embeds,
                attention_mask=prefix.attention_mask,
                labels=labels,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                return_dict=True,
                **kwargs,
            )
            output = TIPPoSeq2SeqLMOutput(
                loss=outputs.loss,
                logits=outputs.logits,
                past_key_values=outputs.past_key_values,
                encoder_last_hidden_state=outputs.encoder_last_hidden_state,
                decoder_hidden_states=outputs.decoder_hidden_states,
                image_signals=prefix.image_signals,
                image_mask=prefix.image_mask,
            )
        else:
            kwargs.setdefault("use_cache", False)
            output = causal_forward(
                self.language_model,
                prefix.inputs_embeds,
                prefix.attention_mask,
                prompt_input_ids,
                prompt_attention_mask,
                labels,
                decoder_input_ids,
                pad_token_id=self.config.pad_token_id,
                completions_per_input=k,
                **kwargs,
            )
            output.image_signals, output.image_mask = prefix.image_signals, prefix.image_mask
        if labels is not None:
            output.ntp_loss = output.loss  # L_NTP, the mean over the batch's label tokens
            if self.config.contrastive_weight > 0:
                output.image_keys = image_keys(image_features if image_features is not None else pixel_values)
                output.contrastive_loss = prototype_contrastive_loss(
                    prefix.image_signals,
                    prefix.image_mask,
                    self.config.contrastive_temperature,
                    self.config.contrastive_negatives,
                    keys=output.image_keys,
                )  # L_C, Eq. 5
                output.loss = output.ntp_loss + self.config.contrastive_weight * output.contrastive_loss  # L_SFT
        return output

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        title_input_ids: torch.Tensor | None = None,
        title_attention_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        title_features: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate text from images + title (or cached features). Any `GenerationConfig` option works
        (greedy, beam search, sampling, `max_new_tokens`, …); decoding runs in the language model's `generate()` with
        its KV cache.

        `decoder_input_ids`: the empty `(batch, 0)` prompt that `TIPPoProcessor(text=...)` gives the `image-text-to-text`
        pipeline; TIPPo's prompt is its prefix, so a non-empty one is refused.

        Returns token ids `(batch, T)`: T5's start with the decoder start token; a causal decoder's are the completion
        only (its prompt is input embeddings, which `generate()` does not return).
        """
        if decoder_input_ids is not None and decoder_input_ids.shape[-1] > 0:
            raise ValueError(
                "decoder_input_ids: TIPPo generates from its prefix (images + title) and takes no decoder prompt; "
                "put the text in the title"
            )
        prefix = self.encode_prefix(
            image_mask, pixel_values, title_input_ids, title_attention_mask, image_features, title_features
        )
        # The model's own generation config (saved with it) is the default; explicit arguments override it.
        generation_config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or self.generation_config)
        model_kwargs = generation_config.update(**generate_kwargs)
        if self.config.is_encoder_decoder:
            inputs_embeds, attention_mask = prefix.inputs_embeds, prefix.attention_mask
        else:
            inputs_embeds, attention_mask = causal_prompt(
                self.language_model,
                prefix.inputs_embeds,
                prefix.attention_mask,
                prompt_input_ids,
                prompt_attention_mask,
            )
            k = generation_config.num_return_sequences or 1
            if (
                k > 1
                and (generation_config.num_beams or 1) == 1  # unset (None) in the config: generate's default
                and generation_config.use_cache is not False
                and "past_key_values" not in model_kwargs
                and inputs_embeds.shape[1] > 1
            ):
                # k samples of a prompt: its KV cache is computed once and repeated (`generate` would read it k times).
                model_kwargs["past_key_values"] = prompt_cache(
                    self.language_model, inputs_embeds[:, :-1], attention_mask[:, :-1], k
                )
                inputs_embeds, attention_mask = (
                    inputs_embeds.repeat_interleave(k, 0),
                    attention_mask.repeat_interleave(k, 0),
                )
                generation_config.num_return_sequences = 1
        return self.language_model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            **model_kwargs,
        )


# The name before transformers' convention was followed (`<Name>Model` is a headless model there; this one generates).
TIPPoModel = TIPPoForConditionalGeneration

AutoConfig.register("tippo", TIPPoConfig)
AutoModel.register(TIPPoConfig, TIPPoForConditionalGeneration)
AutoModelForImageTextToText.register(TIPPoConfig, TIPPoForConditionalGeneration)
