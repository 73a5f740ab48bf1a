"""CIDEr-D as a reward (built-in name ``cider``): the captioning literature's RL reward (SCST, Rennie et al. 2017).

CIDEr-D (Vedantam et al. 2015) compares a completion's n-grams (n = 1…4) with its references' as tf-idf vectors,
clips the completion's counts at the reference's, and penalises the length difference with a Gaussian (σ = 6);
×10, as pycocoevalcap's ``Cider`` reports it. The idf comes from the reference sets of the training data: n-grams every
scene shares ("there is a") weigh nothing, the words that tell scenes apart (colours, shapes) weigh most, which is why
it carries more signal per token than the character-level literal reward of Eq. 7. The document frequencies are
those of a fixed ``corpus`` of reference sets: the PPO trainers give it their whole training set's before the first
rollout (``set_corpus``), as SCST's code precomputes them from the training captions, so a completion's reward does not
drift as the run sees more data and a resumed run scores as the uninterrupted one. Called without a corpus (alone, on a
batch), the reward counts every reference set it is called with, as pycocoevalcap counts the set it scores. Words are
lower-cased runs of letters and digits; Chinese and Japanese ideographs count one each.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from ..language import CJK_IDEOGRAPHS
from .completions import completion_text


WORD = re.compile(rf"[{CJK_IDEOGRAPHS}]|[^\W_]+")


def cider_words(text: str) -> list[str]:
    """The words CIDEr-D compares: lower-cased letter/digit runs, each CJK ideograph on its own."""
    return WORD.findall(text.lower())


def ngram_counts(words: Sequence[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CIDErDReward:
    """CIDEr-D of each completion against its references, a plug-in with TRL's reward signature (``cider``).

    Args:
        corpus: reference sets (each a string or a list of strings) whose document frequencies define the idf, fixed
            from then on. None: `set_corpus` gives it later (the PPO trainers do, with their training set); until then
            built from the reference sets the reward is called with, each counted once.
        sigma: σ of the length penalty (CIDEr-D: 6).
        n: longest n-gram (4).
    """

    __name__ = "cider"

    def __init__(self, corpus: Iterable[str | Sequence[str]] | None = None, sigma: float = 6.0, n: int = 4):
        self.sigma, self.n = sigma, n
        self.document_frequency: defaultdict[tuple, int] = defaultdict(int)
        self.seen: set[tuple[str, ...]] = set()
        self.has_corpus = False
        if corpus is not None:
            self.set_corpus(corpus)

    def set_corpus(self, corpus: Iterable[str | Sequence[str]]) -> None:
        """Take the idf from `corpus` (reference sets, each a string or a list of strings; duplicates counted once) and
        keep it fixed: reference sets outside it no longer change it."""
        self.document_frequency.clear()
        self.seen.clear()
        for references in corpus:
            self._count_document(self._as_list(references))
        if not self.seen:
            raise ValueError("the cider reward's corpus holds no reference texts")
        self.has_corpus = True

    @staticmethod
    def _as_list(references: str | Sequence[str]) -> list[str]:
        return [references] if isinstance(references, str) else list(references)

    def _count_document(self, references: list[str]) -> None:
        key = tuple(references)
        if key in self.seen:
            return
        self.seen.add(key)
        for ngram in {ngram for text in references for ngram in ngram_counts(cider_words(text), self.n)}:
            self.document_frequency[ngram] += 1

    def _vector(self, counts: Counter, log_documents: float) -> tuple[list[dict], list[float]]:
        vectors, norms = [{} for _ in range(self.n)], [0.0] * self.n
        for ngram, count in counts.items():
            weight = count * (log_documents - math.log(max(1.0, self.document_frequency[ngram])))  # tf · idf
            vectors[len(ngram) - 1][ngram] = weight
            norms[len(ngram) - 1] += weight * weight
        return vectors, [math.sqrt(value) for value in norms]

    def score(self, completions: Sequence[Any], references: Sequence[str | Sequence[str]]) -> list[float]:
        """CIDEr-D (×10, pycocoevalcap's scale) of each completion against its reference set."""
        if len(completions) != len(references):
            raise ValueError(f"the cider reward got {len(completions)} completions but {len(references)} references")
        reference_sets = [self._as_list(refs) for refs in references]
        if not self.has_corpus:
            for refs in reference_sets:
                self._count_document(refs)
        log_documents = math.log(max(len(self.seen), 1))
        # Each distinct reference once per call: a batch holds its prompt's references k times (k samples per prompt).
        reference_vectors = {}
        for text in {text for refs in reference_sets for text in refs}:
            ref_words = cider_words(text)
            reference_vectors[text] = (len(ref_words), *self._vector(ngram_counts(ref_words, self.n), log_documents))
        scores = []
        for completion, refs in zip(completions, reference_sets):
            words = cider_words(completion_text(completion))
            vec, norm = self._vector(ngram_counts(words, self.n), log_documents)
            total = 0.0
            for reference in refs:
                ref_length, ref_vec, ref_norm = reference_vectors[reference]
                penalty = math.exp(-((len(words) - ref_length) ** 2) / (2 * self.sigma**2))
                for k in range(self.n):
                    overlap = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in vec[k].items())
                    if norm[k] and ref_norm[k]:
                        total += penalty * overlap / (norm[k] * ref_norm[k])
            scores.append(10.0 * total / (self.n * len(refs)))
        return scores

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        reference: Sequence[str] | None = None,
        references: Sequence[Sequence[str]] | None = None,
        **kwargs,
    ) -> list[float]:
        """Plug-in form: the column ``references`` (all of a sample's reference texts) when the dataset has it, else
        ``reference``."""
        targets = references if references is not None else reference
        if targets is None:
            raise ValueError(
                "the cider reward needs the reference texts: a dataset column 'reference' (or 'references')"
            )
        return self.score(completions, targets)
