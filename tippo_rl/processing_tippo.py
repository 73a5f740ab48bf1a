"""TIPPoProcessor: images → pixels, title → Chinese-CLIP tokens (and, for a causal decoder, prompt tokens),
reference → decoder labels."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoProcessor, AutoTokenizer, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

from .configuration_tippo import TIPPoConfig


PROCESSOR_CONFIG_NAME = "tippo_processor_config.json"
TITLE_TOKENIZER_FOLDER = "title_tokenizer"
# Images are resized to φ's input (224 px) anyway: a larger one is decoded at a reduced size, so that decoding a photo of
# any size costs at most about this many pixels (JPEG: PIL's DCT-domain `draft`, 1/2 to 1/8 scale; other formats: a box
# filter by a whole factor right after decoding, which moves the processor's output by at most one 8-bit level).
MAX_DECODED_PIXELS = 4096 * 4096
# A file that would decode to more pixels than this (a JPEG: at 1/8 scale) is refused when its row is checked: a 600-dpi
# A4 scan (35 Mpx) fits. At the limit a PNG takes 0.5 s and 0.2 GB to become one 224² input (0.3 GB at most: just under
# MAX_DECODED_PIXELS, where it is not reduced); a 12000×12000 PNG, refused now, took 7 s and 2.5 GB.
MAX_IMAGE_PIXELS = 8000 * 5000
# What transparent pixels show (PNG/GIF transparency, LA/RGBA alpha): white, as an image viewer shows them.
BACKGROUND = (255, 255, 255)

logger = logging.getLogger(__name__)
_reported_animation = False  # the first animated image of this process is reported, the rest are not


def open_image(image, max_pixels: int = MAX_DECODED_PIXELS, max_image_pixels: int | None = None) -> Image.Image:
    """The RGB PIL image TIPPo sees, from what a dataset's `images` column holds: a path, a `datasets.Image`
    `{path, bytes}` dict, or a PIL image. The one place images are opened: the processor, the collator (and so the
    feature cache), the data checks and the generation CLI all call it.

    A file is decoded as `datasets.Image` decodes it (EXIF orientation applied) and closed, except that:
    - an image of more than `max_pixels` is reduced to fit: a JPEG is decoded at the largest 1/2–1/8 scale that fits,
      other formats are reduced by a whole factor right after decoding;
    - a file that would decode to more than `max_image_pixels` (None: `MAX_IMAGE_PIXELS`; a JPEG at 1/8 scale) is
      refused, and so is one beyond PIL's own decompression-bomb limit;
    - an animated GIF/PNG/WebP (or a multi-page TIFF) gives its first frame (reported once per process).
    Every image, files' and PIL images alike, then becomes 8-bit RGB with `to_rgb`.

    Raises:
        ValueError: one line naming the image: it does not exist, is a folder, cannot be decoded (missing, truncated,
            not an image: PIL's message), or is larger than `max_image_pixels` (how to fix it: resize it).
    """
    if isinstance(image, Image.Image):
        return _reduced(to_rgb(image), max_pixels)
    max_image_pixels = MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels
    if isinstance(image, dict):
        name = image.get("path") or "<bytes>"
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    else:
        name = source = os.fspath(image)
    if isinstance(source, str):
        if os.path.isdir(source):
            raise ValueError(f"image '{name}' is a folder, not an image file")
        if not os.path.exists(source):
            raise ValueError(f"image '{name}' does not exist")
    refusal = None
    try:
        # A file object we close ourselves: PIL keeps the files of animated images open after `load()`.
        with open(source, "rb") if isinstance(source, str) else source as file:
            with warnings.catch_warnings():  # PIL warns below its own limit; ours is checked right after
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(file)
            width, height = opened.size
            smallest = 8 if opened.format == "JPEG" else 1  # a JPEG decodes at down to 1/8 scale
            if math.ceil(width / smallest) * math.ceil(height / smallest) > max_image_pixels:
                limit = f"MAX_IMAGE_PIXELS = {max_image_pixels:,} (tippo_rl/processing_tippo.py)"
                refusal = _too_large(name, f"{width}×{height} = {width * height:,} pixels", limit)
            else:
                animated = getattr(opened, "is_animated", False)  # reads on to frame 2: before the file is closed
                if opened.format == "JPEG" and width * height > max_pixels:
                    scale = (max_pixels / (width * height)) ** 0.5 / 2  # draft: the smallest result ≥ this
                    opened.draft("RGB", (max(int(width * scale), 1), max(int(height * scale), 1)))
                opened.load()
    except Image.DecompressionBombError as error:  # beyond PIL's own limit, which it checks on opening
        pixels, limit = (int(number) for number in re.findall(r"\d+", str(error))[:2])
        raise _too_large(
            name, f"{pixels:,} pixels", f"PIL's limit of {limit:,} (2 × PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except Exception as error:  # PIL raises many types for missing, corrupt or truncated files
        raise ValueError(f"image '{name}' cannot be opened: {error}") from error
    if refusal is not None:
        raise refusal
    global _reported_animation
    if animated and not _reported_animation:
        _reported_animation = True
        logger.warning(
            "image '%s' has several frames; TIPPo uses the first (other such images are not reported)", name
        )
    if opened.getexif().get(Image.ExifTags.Base.Orientation, 1) != 1:
        opened = ImageOps.exif_transpose(opened)
    return _reduced(to_rgb(opened), max_pixels)


def _reduced(image: Image.Image, max_pixels: int) -> Image.Image:
    """`image`, or over `max_pixels` reduced by the smallest whole factor that fits (a box filter, as JPEG's `draft`
    does in the DCT): the processor's float copies of a large PNG or TIFF then stay as small as a JPEG's."""
    if image.width * image.height <= max_pixels:
        return image
    return image.reduce(math.ceil((image.width * image.height / max_pixels) ** 0.5))


def _too_large(name: str, size: str, limit: str) -> ValueError:
    return ValueError(
        f"image '{name}' is {size}, more than {limit}; resize it, e.g. to 4096 px on its long side (TIPPo sees 224 px)"
    )


def padded_labels(rows: Sequence[Sequence[int]], left: bool = False) -> torch.Tensor:
    """Token id rows as `labels` `(batch, longest)`, padded with -100 (ignored by the loss), on the right (or the
    left)."""
    width = max(map(len, rows))
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for index, row in enumerate(rows):
        if left:
            labels[index, width - len(row) :] = torch.tensor(row)
        else:
            labels[index, : len(row)] = torch.tensor(row)
    return labels


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB (itself if it is RGB already). Pixel ranges of the modes PIL would clip or drop:

    - `I;16` (16-bit PNG/TIFF, e.g. a greyscale scan): value / 257, so 0..65535 spans 0..255;
    - `I` (32-bit integer TIFF): its 16-bit range (/ 257) when every value fits in 0..65535, else scaled so its largest
      value is 255; negative values are 0;
    - `F` (32-bit float TIFF): values in [0, 1] (clipped; NaN is 0) times 255;
    - transparency (`LA`, `RGBA`, a palette or PNG with a transparent colour) is composited onto `BACKGROUND`;
    - the rest (`L`, `1`, `P`, `CMYK`, `YCbCr`, …) as PIL converts it.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            values = np.nan_to_num(values, nan=0.0).clip(0.0, 1.0) * 255
        else:
            values = values.clip(0, None)
            values *= 255 / max(65535.0, float(values.max(initial=0)))
        return Image.fromarray(values.round().astype(np.uint8)).convert("RGB")
    if image.has_transparency_data:
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


class TIPPoProcessor(ProcessorMixin):
    """Turns `(title, images, reference)` samples into a [`TIPPoForConditionalGeneration`] batch.

    Args:
        image_processor: Chinese-CLIP's image processor (the PIL one: no torchvision needed).
        title_tokenizer: the tokenizer of φ's text tower (a BERT tokenizer for Chinese-CLIP).
        tokenizer: the decoder's tokenizer (T5, or a causal LM's); decodes generations.
        max_images: N_max, the most images a sample may have.
        max_title_length: title tokens kept for φ.
        max_target_length: reference tokens kept as labels (an EOS is always last).
        causal_lm: the decoder is a causal LM: batches also hold the title as decoder prompt tokens (`prompt_input_ids`,
            `prompt_attention_mask`, left-padded; inside the tokenizer's chat template as the user's message where it has
            one), and references are tokenized without the tokenizer's special tokens, then EOS.
        max_prompt_length: prompt tokens kept (the chat template's included; its end, the assistant's turn, is kept).

    It is a `ProcessorMixin` (so TRL and the Trainer treat it as a multi-modal processor and save it with every
    checkpoint) with its own saving and loading, since it holds two tokenizers.

    Saved as: the decoder tokenizer and `preprocessor_config.json` at the top of the folder (so
    `AutoTokenizer.from_pretrained(folder)` gives the decoder's), the title tokenizer in `title_tokenizer/`.
    """

    def __init__(
        self,
        image_processor: ChineseCLIPImageProcessorPil,
        title_tokenizer: PreTrainedTokenizerBase,
        tokenizer: PreTrainedTokenizerBase,
        max_images: int = 5,
        max_title_length: int = 52,
        max_target_length: int = 512,
        causal_lm: bool = False,
        max_prompt_length: int = 128,
    ):
        # ProcessorMixin.__init__ is not called: it expects one tokenizer; this class saves and loads its parts itself.
        self.image_processor = image_processor
        self.title_tokenizer = title_tokenizer
        self.tokenizer = tokenizer
        self.max_images = max_images
        self.max_title_length = max_title_length
        self.max_target_length = max_target_length
        self.causal_lm = causal_lm
        self.max_prompt_length = max_prompt_length

    # -- batches ---------------------------------------------------------------------------------------

    def images_to_pixels(self, images: Sequence[Sequence[Image.Image]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`images[b]` is sample b's list of PIL images → pixel_values `(batch, N, 3, H, W)`, image_mask `(batch, N)`.

        N is the largest image count in the batch; shorter samples are padded with zero images, masked out.
        """
        counts = [len(sample) for sample in images]
        for index, count in enumerate(counts):
            if not 1 <= count <= self.max_images:
                raise ValueError(f"sample {index} has {count} images; TIPPo takes 1 to {self.max_images}")
        flat = [open_image(image) for sample in images for image in sample]  # 8-bit RGB, see `to_rgb`
        pixels = self.image_processor(images=flat, return_tensors="pt")["pixel_values"]
        n_images = max(counts)
        pixel_values = pixels.new_zeros(len(images), n_images, *pixels.shape[1:])
        image_mask = torch.zeros(len(images), n_images, dtype=torch.bool)
        offset = 0
        for index, count in enumerate(counts):
            pixel_values[index, :count] = pixels[offset : offset + count]
            image_mask[index, :count] = True
            offset += count
        return pixel_values, image_mask

    def tokenize_titles(self, titles: Sequence[str]) -> dict[str, torch.Tensor]:
        """Titles (may be empty) → `title_input_ids`, `title_attention_mask` `(batch, L)` for φ's text tower."""
        encoded = self.title_tokenizer(
            list(titles), padding=True, truncation=True, max_length=self.max_title_length, return_tensors="pt"
        )
        return {"title_input_ids": encoded["input_ids"], "title_attention_mask": encoded["attention_mask"]}

    def tokenize_prompts(self, titles: Sequence[str]) -> dict[str, torch.Tensor]:
        """A causal decoder's prompts: titles → `prompt_input_ids`, `prompt_attention_mask` `(batch, L)`, left-padded
        and cut from the left (the end of a chat template opens the assistant's turn). With a chat template the title is
        the user's message; without one, the title's text alone (no special tokens: S^F comes before it)."""
        if self.tokenizer.chat_template:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": title}], tokenize=False, add_generation_prompt=True
                )
                for title in titles
            ]
        else:
            texts = list(titles)
        side, self.tokenizer.truncation_side = self.tokenizer.truncation_side, "left"  # not a call argument
        try:
            encoded = self.tokenizer(
                texts,
                add_special_tokens=False,
                padding=True,
                padding_side="left",
                truncation=True,
                max_length=self.max_prompt_length,
                return_tensors="pt",
            )
        finally:
            self.tokenizer.truncation_side = side
        return {"prompt_input_ids": encoded["input_ids"], "prompt_attention_mask": encoded["attention_mask"]}

    def tokenize_references(self, references: Sequence[str]) -> torch.Tensor:
        """References → `labels` `(batch, T)`, padding set to -100 (ignored by the loss)."""
        if self.causal_lm:  # the completion: its tokens, then EOS (a causal LM's tokenizer adds BOS, not EOS)
            ids = self.tokenizer(
                list(references), add_special_tokens=False, truncation=True, max_length=self.max_target_length - 1
            )
            return padded_labels([row + [self.tokenizer.eos_token_id] for row in ids["input_ids"]])
        encoded = self.tokenizer(
            list(references), padding=True, truncation=True, max_length=self.max_target_length, return_tensors="pt"
        )
        labels = encoded["input_ids"]
        return labels.masked_fill(encoded["attention_mask"] == 0, -100)

    def __call__(
        self,
        titles: str | Sequence[str] | None = None,
        images: Any = None,
        references: str | Sequence[str] | None = None,
        *,
        text: str | Sequence[str] | None = None,
        return_tensors: str = "pt",
        padding: bool | str = True,
    ) -> BatchFeature:
        """A model-ready batch: `pixel_values`, `image_mask`, `title_input_ids`, `title_attention_mask`, for a causal
        decoder `prompt_input_ids` and `prompt_attention_mask`, and, when references are given, `labels`.

        Args:
            titles: one title per sample (a string for one sample).
            images: one list of images per sample (`[[a, b], [c]]`), or, for one sample, a flat list (`[a, b]`) or a
                single image; an image is a PIL image or a path.
            references: one target text per sample (a string for one sample), or None.
            text: the titles under transformers' processor name, as the `image-text-to-text` pipeline passes them. The
                batch then also holds `decoder_input_ids`, an empty `(batch, 0)` decoder prompt: the pipeline reads
                its prompt tokens from there, and TIPPo's prompt is its prefix (a causal decoder's, `prompt_input_ids`
                too), so `generate` takes it and adds nothing.
            return_tensors: "pt" (the only kind; transformers' pipelines pass it).
            padding: batches are always padded; accepted because transformers' pipelines pass it.

        Raises:
            ValueError: images and titles do not pair up, an image is neither a PIL image nor a path, or cannot be
                opened (the message names the sample and image).
        """
        if text is not None and titles is not None:
            raise ValueError("give the titles once: as titles= or as text= (transformers' name), not both")
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}: TIPPoProcessor returns PyTorch tensors only ('pt')")
        if padding is False or padding == "do_not_pad":
            raise ValueError("padding=False: TIPPoProcessor always pads a batch (its samples differ in length)")
        if images is None:
            raise ValueError("images are missing: TIPPo needs 1 to N_max images per sample")
        from_pipeline = text is not None
        titles = text if from_pipeline else titles
        if titles is None:
            raise ValueError("titles are missing: give one title per sample (an empty string for none)")
        titles = [titles] if isinstance(titles, str) else list(titles)
        if isinstance(references, str):
            references = [references]
        images = self.images_per_sample(images, len(titles))
        pixel_values, image_mask = self.images_to_pixels(images)
        batch = {"pixel_values": pixel_values, "image_mask": image_mask, **self.tokenize_titles(titles)}
        if self.causal_lm:
            batch.update(self.tokenize_prompts(titles))
        if references is not None:
            if len(references) != len(titles):
                raise ValueError(
                    f"got {len(titles)} titles but {len(references)} references; give one reference per sample"
                )
            batch["labels"] = self.tokenize_references(references)
        if from_pipeline:
            batch["decoder_input_ids"] = torch.zeros(len(titles), 0, dtype=torch.long)
        return BatchFeature(batch)

    @staticmethod
    def images_per_sample(images: Any, n_samples: int) -> list[list[Image.Image]]:
        """`images` as one list of decoded PIL images per sample (see `__call__` for the forms accepted)."""
        is_image = lambda value: isinstance(value, (Image.Image, str, os.PathLike))  # noqa: E731
        if is_image(images):
            images = [[images]]
        elif isinstance(images, (list, tuple)) and images and all(is_image(image) for image in images):
            if n_samples != 1:
                raise ValueError(
                    f"images is a flat list of {len(images)} images, which is one sample's, but there are {n_samples} "
                    "titles: give one list of images per sample, e.g. images=[[a, b], [c]]"
                )
            images = [list(images)]
        if not isinstance(images, (list, tuple)) or not all(isinstance(sample, (list, tuple)) for sample in images):
            raise ValueError(
                f"images must be one list of images (PIL images or paths) per sample, got {type(images).__name__}: {images!r:.80}"
            )
        if len(images) != n_samples:
            raise ValueError(f"got {n_samples} titles but {len(images)} lists of images; give one list per sample")
        decoded = []
        for index, sample in enumerate(images):
            row = []
            for position, image in enumerate(sample):
                if isinstance(image, Image.Image):
                    row.append(image)
                    continue
                if not isinstance(image, (str, os.PathLike)):
                    raise ValueError(
                        f"sample {index}, image {position}: expected a PIL image or a path, got {type(image).__name__}"
                    )
                try:
                    row.append(open_image(image))
                except ValueError as error:  # names the image and what is wrong with it
                    raise ValueError(f"sample {index}, image {position}: {error}") from error
            decoded.append(row)
        return decoded

    def batch_decode(self, token_ids: torch.Tensor, **kwargs) -> list[str]:
        """Decoder token ids → texts (special tokens skipped)."""
        kwargs.setdefault("skip_special_tokens", True)
        return [text.strip() for text in self.tokenizer.batch_decode(token_ids, **kwargs)]

    def post_process_image_text_to_text(
        self, generated_outputs: torch.Tensor, skip_special_tokens: bool = True, **kwargs
    ):
        """What the `image-text-to-text` pipeline decodes with: `batch_decode`."""
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    # -- saving and loading ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "processor_class": type(self).__name__,
            "max_images": self.max_images,
            "max_title_length": self.max_title_length,
            "max_target_length": self.max_target_length,
            "causal_lm": self.causal_lm,
            "max_prompt_length": self.max_prompt_length,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Write the processor to `save_directory` (and push it when `push_to_hub=True`)."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)
        self.title_tokenizer.save_pretrained(save_directory / TITLE_TOKENIZER_FOLDER)
        (save_directory / PROCESSOR_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2))
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", save_directory.name)
            return self.push_to_hub(repo_id, **kwargs)
        return [str(path) for path in save_directory.rglob("*") if path.is_file()]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> TIPPoProcessor:
        """Load a processor saved with `save_pretrained`, from a folder or a Hub repository."""
        source = str(pretrained_model_name_or_path)
        if Path(source).is_dir():
            settings = json.loads((Path(source) / PROCESSOR_CONFIG_NAME).read_text())
        else:
            from huggingface_hub import hf_hub_download

            settings = json.loads(Path(hf_hub_download(source, PROCESSOR_CONFIG_NAME, **kwargs)).read_text())
        settings.pop("processor_class", None)
        return cls(
            image_processor=ChineseCLIPImageProcessorPil.from_pretrained(source, **kwargs),
            title_tokenizer=AutoTokenizer.from_pretrained(source, subfolder=TITLE_TOKENIZER_FOLDER, **kwargs),
            tokenizer=AutoTokenizer.from_pretrained(source, **kwargs),
            **settings,
        )

    @classmethod
    def from_pretrained_components(
        cls, encoder_name_or_path: str, decoder_name_or_path: str, **kwargs
    ) -> TIPPoProcessor:
        """Build the processor of a fresh TIPPo model from its two checkpoints, e.g.
        `OFA-Sys/chinese-clip-vit-base-patch16` and `Langboat/mengzi-t5-base`."""
        return cls(
            image_processor=ChineseCLIPImageProcessorPil.from_pretrained(encoder_name_or_path),
            title_tokenizer=AutoTokenizer.from_pretrained(encoder_name_or_path),
            tokenizer=AutoTokenizer.from_pretrained(decoder_name_or_path),
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict())})"


# AutoProcessor.from_pretrained(a saved TIPPo model) gives this class.
AutoProcessor.register(TIPPoConfig, TIPPoProcessor)
