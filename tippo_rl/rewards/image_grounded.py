"""Image-grounded reward plug-in: how well a completion matches its sample's images, in the space of the TIPPo
model's frozen multi-modal encoder φ (Chinese-CLIP).

    R = cos(φ(y), mean_i φ(I_i))

φ(y) is the completion embedded by φ's text tower, φ(I_i) each image by its vision tower (pooled, projected; the
same vectors TIPPo's adapters read), and the mean over the sample's images is the prototype in φ's space. R lies in
[-1, 1]; it does not need a reference text, so it rewards grounding in the images rather than copying the reference.
With the paper's pretrained Chinese-CLIP it is a CLIPScore-like signal. (The demo's tiny φ is pretrained on demo
images against object phrases, placed objects and titles, not whole descriptions; there it is a rough signal.)

Use it in a PolishPPO config (it is added to G_m with its weight):

    reward_funcs: [literal, semantic, "tippo_rl.rewards.image_grounded:ImageGroundedReward"]
    reward_weights: [1.0, 1.0, 0.5]
    reward_init_kwargs:
      "tippo_rl.rewards.image_grounded:ImageGroundedReward": {model_name_or_path: outputs/demo_sft}

(the file spec `rewards/image_grounded.py:ImageGroundedReward` names the same class), or in Python:
``ImageGroundedReward(model=model, processor=processor)`` to share a loaded model's φ.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..modeling_tippo import TIPPoForConditionalGeneration
from ..processing_tippo import TIPPoProcessor, open_image
from ..trainer.tippo_trainer import unwrap_tippo
from ..zero3 import full_weights_under_zero3
from .completions import completion_text


def _open_image(image: Any) -> Image.Image:
    """A PIL image from what a dataset's `images` column holds: a PIL image, a path, or a `{path, bytes}` dict;
    decoded as the collator decodes it (`open_image`: 8-bit RGB, a huge JPEG at a reduced size)."""
    if not isinstance(image, (Image.Image, dict, str)):
        raise TypeError(f"cannot read an image from {type(image).__name__} {image!r:.60}")
    return open_image(image)


class ImageGroundedReward:
    """R = cos(φ(y), mean_i φ(I_i)) with the frozen encoder φ of a TIPPo model (TRL reward-function signature).

    Args:
        model_name_or_path: a saved TIPPo model folder or Hub id (its processor alongside), e.g. the SFT output.
        model, processor: or a loaded `TIPPoForConditionalGeneration` (PEFT/DDP-wrapped is fine) and its `TIPPoProcessor`; φ is shared,
            not copied.
        device: where φ runs; default: the given model's device, else CUDA when available, else the CPU.
        batch_size: texts or images per forward pass.
        max_cached_images: image embeddings kept, keyed by file path (rollouts revisit the same images).

    Given none of `model_name_or_path`, `model`: the PPO trainers give it the φ of the model they train
    (`set_policy`, a frozen copy) before the first rollout.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model: TIPPoForConditionalGeneration | None = None,
        processor: TIPPoProcessor | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        max_cached_images: int = 10_000,
    ):
        self.batch_size = batch_size
        self.max_cached_images = max_cached_images
        self._image_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.__name__ = "image_grounded"  # the name rewards are logged under
        self.encoder = None
        if (model is None) != (processor is None):
            raise ValueError(f"{type(self).__name__} needs both model and processor, or model_name_or_path")
        if model is None and model_name_or_path is not None:
            with full_weights_under_zero3():  # a reward model runs outside the DeepSpeed engine
                model = TIPPoForConditionalGeneration.from_pretrained(model_name_or_path)
                processor = TIPPoProcessor.from_pretrained(model_name_or_path)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is not None:
            tippo = unwrap_tippo(model)
            self.use_encoder(tippo.encoder, tippo.config, processor, device)  # φ shared, not copied

    def use_encoder(
        self, encoder, config, processor: TIPPoProcessor, device: str | torch.device | None = None
    ) -> None:
        """Score with φ `encoder` of a TIPPo model with `config`, and `processor`'s title tokenizer and image
        preprocessing."""
        self.encoder = encoder
        if device is not None:
            self.encoder.to(device)
        self.encoder.eval().requires_grad_(False)
        self.device = next(self.encoder.parameters()).device
        self.processor = processor
        text_config = config.encoder_config.text_config
        self.max_length = min(processor.title_tokenizer.model_max_length, text_config.max_position_embeddings)

    @property
    def has_model(self) -> bool:
        return self.encoder is not None

    def set_policy(self, model, processor: TIPPoProcessor, device: str | torch.device | None = None) -> None:
        """The PPO trainers' hook for a reward built without a model: the φ of the model they train, as a frozen copy
        in eval mode on `device` (the policy's own φ switches to train mode with it; φ is frozen, so the copy stays
        equal)."""
        encoder = unwrap_tippo(model).encoder
        if any(parameter.numel() == 0 for parameter in encoder.parameters()):
            raise ValueError(
                f"{self.__name__}: the trained model's φ is partitioned (DeepSpeed ZeRO-3); give the reward its own "
                f"copy with reward_init_kwargs {{model_name_or_path: <the SFT model>}}"
            )
        self.use_encoder(copy.deepcopy(encoder), unwrap_tippo(model).config, processor, device)

    def check_ready(self, completions: Sequence[Any], images) -> None:
        """Raise, in one line, where a call cannot be scored: no φ yet, no `images` column, or not one image list per
        completion."""
        if self.encoder is None:
            raise ValueError(
                f"the {self.__name__} reward has no model: give it model_name_or_path (or model and processor), or "
                "train with a PPO trainer, which gives it the φ of the model it trains"
            )
        if images is None:
            raise ValueError(f"the {self.__name__} reward needs the dataset column 'images'")
        if len(images) != len(completions):
            raise ValueError(f"got {len(completions)} completions but {len(images)} image lists")

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """φ(T) for each text: `(n, d_φ)`."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.processor.title_tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            chunks.append(self.encoder.encode_text(tokens["input_ids"], tokens["attention_mask"]).float())
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        """φ(I) for each image (PIL image, path or `{path, bytes}`): `(n, d_φ)`; embeddings of files are cached."""
        keys = [
            image if isinstance(image, str) else image.get("path") if isinstance(image, dict) else None
            for image in images
        ]
        missing = [i for i, key in enumerate(keys) if key is None or key not in self._image_cache]
        computed = {}
        for start in range(0, len(missing), self.batch_size):
            part = missing[start : start + self.batch_size]
            pixels = self.processor.image_processor(images=[_open_image(images[i]) for i in part], return_tensors="pt")
            embeddings = self.encoder.encode_images(pixels["pixel_values"].to(self.device)).float()
            for i, embedding in zip(part, embeddings):
                computed[i] = embedding
                if keys[i] is not None:
                    self._image_cache[keys[i]] = embedding
        while len(self._image_cache) > self.max_cached_images:
            self._image_cache.popitem(last=False)
        return torch.stack([computed[i] if i in computed else self._image_cache[keys[i]] for i in range(len(images))])

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        images: Sequence[Sequence[Any]] | None = None,
        **kwargs,
    ) -> list[float]:
        """Score each completion against its sample's images.

        Args:
            prompts: the batch's prompts (unused).
            completions: generated texts, length batch (strings, or TRL chat messages).
            images: the dataset column `images`: per sample, a list of PIL images, paths or `{path, bytes}` dicts.
            **kwargs: other columns and TRL's extras, unused.

        Returns:
            `list[float]` of length batch, each in [-1, 1].
        """
        self.check_ready(completions, images)
        texts = [completion_text(c) for c in completions]
        counts = [len(sample) for sample in images]
        if min(counts, default=1) == 0:
            raise ValueError(f"sample {counts.index(0)} has no images")
        image_embeddings = self.embed_images([image for sample in images for image in sample])
        owner = torch.repeat_interleave(
            torch.arange(len(counts), device=self.device), torch.tensor(counts, device=self.device)
        )
        prototypes = torch.zeros(len(counts), image_embeddings.shape[-1], device=self.device).index_add_(
            0, owner, image_embeddings
        )
        prototypes = (
            prototypes / torch.tensor(counts, device=self.device, dtype=prototypes.dtype)[:, None]
        )  # mean_i φ(I_i)
        return F.cosine_similarity(self.embed_texts(texts), prototypes, dim=-1).tolist()  # cos(φ(y), ·)
