"""The embedded demo's scene verifier, a reward plug-in: what each image shows, read by the TIPPo model's frozen φ.

    R = (1/n)·Σ_i [the completion's i-th object is φ's reading of image i] + ½·[the completion names n objects]

n is the number of the sample's images. φ reads each image zero-shot: the object phrase ("a purple circle",
"一个紫色的圆形") whose φ text embedding is closest to the image's φ embedding. The completion is read back with the
demo's grammar (`tippo_rl.demo.scenes.parse_scene`). R lies in [0, 1.5] and reads no reference: where the training
references are wrong (`--demo_annotator_confusion`: annotators who call purple objects "blue"), it knows better. On
the demo's held-out scenes the tiny φ reads colours right 100% of the time and shapes 99%.

The demo's PolishPPO config adds it to G_m (`recipes/configs/demo_polishppo.yaml`):

    reward_funcs: [literal, semantic, "tippo_rl.demo.scene_verifier:SceneVerifier"]
    reward_weights: [1.0, 1.0, 1.0]

Built without a model, it reads with the φ of the model being trained (the PPO trainers hand over a frozen copy);
`reward_init_kwargs` `{model_name_or_path: ...}` gives it another TIPPo model's φ.

It stands in for what a real user would reach for: a reward model, a detector or CLIPScore (`ImageGroundedReward`)
that sees what the captions leave out or get wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F

from ..language import LANGUAGES, detect_language
from ..rewards import completion_text
from ..rewards.image_grounded import ImageGroundedReward
from .scenes import COLOURS, SHAPES, object_phrase, parse_scene


class SceneVerifier(ImageGroundedReward):
    """R = objects named as φ reads their images, in order, + ½ for naming as many as there are images.

    Args:
        lang: the completions' language, `en` or `zh`; `auto`: read from the `reference` column (else the
            completions) at the first call.
        **kwargs: `ImageGroundedReward`'s (`model_name_or_path`, or `model` and `processor`; `device`, …).
    """

    def __init__(self, lang: str = "auto", **kwargs):
        if lang not in ("auto", *LANGUAGES):
            raise ValueError(f"SceneVerifier: lang must be 'auto', 'en' or 'zh'; got {lang!r}")
        super().__init__(**kwargs)
        self.lang = lang
        self.objects = [(colour, shape) for colour in sorted(COLOURS) for shape in sorted(SHAPES)]
        self._phrase_embeddings = {}
        self.__name__ = "scene_verifier"

    def phrase_embeddings(self, lang: str):
        """φ(T) of every object phrase in `lang`, unit-norm: `(15, d_φ)`."""
        if lang not in self._phrase_embeddings:
            phrases = [object_phrase(colour, shape, lang) for colour, shape in self.objects]
            self._phrase_embeddings[lang] = F.normalize(self.embed_texts(phrases), dim=-1)
        return self._phrase_embeddings[lang]

    def read_images(self, images: Sequence[Any], lang: str) -> list[tuple[str, str]]:
        """φ's zero-shot reading of each image: its (colour, shape)."""
        similarity = F.normalize(self.embed_images(images), dim=-1) @ self.phrase_embeddings(lang).T
        return [self.objects[index] for index in similarity.argmax(-1).tolist()]

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        images: Sequence[Sequence[Any]] | None = None,
        reference: Sequence[str] | None = None,
        **kwargs,
    ) -> list[float]:
        self.check_ready(completions, images)
        texts = [completion_text(c) for c in completions]
        if self.lang == "auto":
            self.lang = detect_language(reference or texts)
        seen = self.read_images([image for sample in images for image in sample], self.lang)
        rewards, start = [], 0
        for text, sample in zip(texts, images):
            truth, start = seen[start : start + len(sample)], start + len(sample)
            named = parse_scene(text, self.lang)[1]
            right = sum(position < len(named) and named[position] == obj for position, obj in enumerate(truth))
            rewards.append(right / max(len(truth), 1) + 0.5 * (len(named) == len(truth)))
        return rewards
