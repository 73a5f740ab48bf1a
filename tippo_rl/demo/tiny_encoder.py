"""The tiny preset's φ: a Chinese-CLIP pretrained CLIP-style on the embedded default's own images and texts.

A real user's φ is a pretrained Chinese-CLIP. No CLIP weights can be downloaded here, and a random φ maps every
title to nearly the same vector (the four place titles had pairwise cosine ≥ 0.9999), so the demo's title carried
nothing. [`pretrain_tiny_encoder`] trains the tiny preset's two towers with symmetric InfoNCE on what the demo
generator draws (`tippo_rl.demo.scenes`, from the recipe's own seed, never the dataset's): single images against
every object phrase ("a red circle"), every placed object ("a red circle by the sea") and every title wording
("seaside views"), and whole scenes (the mean of their images' embeddings) against the titles. A text's positives
are all the items it describes; one loss per kind of text, averaged, so that the place titles do not drown the
shapes.

The result is saved as a `ChineseCLIPModel` folder and loaded into TIPPo exactly as the paper's checkpoint is
(`presets.load_encoder_weights`). [`tiny_encoder_folder`] builds it once per recipe and keeps it under
`~/.cache/tippo_rl/tiny_encoders/` (`TIPPO_RL_CACHE` moves the root), keyed by everything the weights depend on:
the training settings, the tower configs, the tokenizer's vocabulary, the image preprocessing, the code of this
module and of the generator, and torch's version. [`probe_tiny_encoder`] measures what the demo needs of it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_model
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from ..caches import cache_root, cached_folder, save_model_folder
from . import scenes as demo_data
from .scenes import COLOURS, PLACES, SHAPES, draw_scene, draw_shape, object_phrase, place_phrase, titles_of


logger = logging.getLogger(__name__)

ENCODER_FOLDER_VERSION = 1


@dataclass(frozen=True)
class TinyEncoderRecipe:
    """How the tiny φ is pretrained. Every field enters the cache key."""

    steps: int = 600
    images_per_batch: int = 96
    scenes_per_batch: int = 16
    pool_size: int = 2400  # distinct images drawn for pretraining
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    seed: int = 0


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch thread: float sums then come out the same on every run of this machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- pretraining pairs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Described:
    """What a text says or an item shows: a place and/or objects. A text describes an item when its place (if it
    names one) is the item's and its object (if it names one) is among the item's."""

    place: str | None
    objects: frozenset


def describes(text: Described, item: Described) -> bool:
    return (text.place is None or text.place == item.place) and text.objects <= item.objects


def draw_pool(recipe: TinyEncoderRecipe, rng: random.Random) -> tuple[list, list[Described]]:
    """`pool_size` images, each one object on a place's background, and what each shows."""
    images, shown = [], []
    for _ in range(recipe.pool_size):
        place = rng.choice(sorted(PLACES))
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES))
        images.append(draw_shape(shape, colour, rng, place=place))
        shown.append(Described(place, frozenset([(colour, shape)])))
    return images, shown


def pretraining_texts(lang: str) -> dict[str, list[tuple[str, Described]]]:
    """Every text the pretraining contrasts, by kind, with what each says: the 15 objects ("a red circle"), the 60
    placed objects ("a red circle by the sea") and the 12 title wordings ("seaside views")."""
    objects = [(colour, shape) for colour in sorted(COLOURS) for shape in sorted(SHAPES)]
    placed = []
    for place in sorted(PLACES):
        for colour, shape in objects:
            text = (
                f"{place_phrase(place, lang)}有{object_phrase(colour, shape, lang)}"
                if lang == "zh"
                else f"{object_phrase(colour, shape, lang)} {place_phrase(place, lang)}"
            )
            placed.append((text, Described(place, frozenset([(colour, shape)]))))
    return {
        "objects": [(object_phrase(c, s, lang), Described(None, frozenset([(c, s)]))) for c, s in objects],
        "placed objects": placed,
        "titles": [
            (title, Described(place, frozenset())) for place in sorted(PLACES) for title in titles_of(place, lang)
        ],
    }


def soft_targets(texts: list[Described], items: list[Described]) -> torch.Tensor:
    """`(n_items, n_texts)` 1 where the text describes the item."""
    return torch.tensor([[float(describes(text, item)) for text in texts] for item in items])


def clip_loss(
    item_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with several positives: cross-entropy against the normalised rows (items → texts) and
    columns (texts → items) of `targets` `(n_items, n_texts)`; rows or columns without a positive are left out."""
    logits = (
        logit_scale.exp().clamp(max=100)
        * F.normalize(item_embeddings, dim=-1)
        @ F.normalize(text_embeddings, dim=-1).T
    )

    def soft_cross_entropy(logits, targets):
        present = targets.sum(1) > 0
        weights = targets[present] / targets[present].sum(1, keepdim=True)
        return -(weights * logits[present].log_softmax(1)).sum(1).mean()

    return (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.T, targets.T)) / 2


def pretrain_tiny_encoder(
    config: ChineseCLIPConfig, processor, lang: str = "en", recipe: TinyEncoderRecipe = TinyEncoderRecipe()
) -> ChineseCLIPModel:
    """Train a `ChineseCLIPModel` of `config` on demo pairs (see the module docstring); deterministic for a
    recipe on a given machine (one torch thread). `processor` is the tiny `TIPPoProcessor` (its title tokenizer
    and image preprocessing are φ's)."""
    rng = random.Random(recipe.seed)
    with one_thread():
        torch.manual_seed(recipe.seed)
        model = ChineseCLIPModel(config)
        pool, shown = draw_pool(recipe, rng)
        pixels = processor.image_processor(images=pool, return_tensors="pt")["pixel_values"]
        by_place = {place: [i for i, item in enumerate(shown) if item.place == place] for place in PLACES}
        decay = [p for n, p in model.named_parameters() if p.dim() > 1]
        rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=recipe.learning_rate,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: (
                min(1.0, (step + 1) / recipe.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
            ),
        )
        texts = pretraining_texts(lang)
        all_texts = [text for kind in texts.values() for text, _ in kind]
        tokens = processor.title_tokenizer(
            all_texts, padding=True, truncation=True, max_length=processor.max_title_length, return_tensors="pt"
        )
        model.train()
        for _ in range(recipe.steps):
            image_ids = [rng.randrange(len(pool)) for _ in range(recipe.images_per_batch)]
            scene_members, scene_items = [], []
            for _ in range(recipe.scenes_per_batch):
                place = rng.choice(sorted(PLACES))
                scene_members.append([rng.choice(by_place[place]) for _ in range(rng.randint(2, 4))])
                scene_items.append(Described(place, frozenset().union(*(shown[i].objects for i in scene_members[-1]))))
            unique = sorted(set(image_ids) | {i for members in scene_members for i in members})
            position = {image: row for row, image in enumerate(unique)}
            image_embeddings = F.normalize(model.get_image_features(pixel_values=pixels[unique]).pooler_output, dim=-1)
            images = image_embeddings[[position[i] for i in image_ids]]
            scenes = torch.stack(
                [image_embeddings[[position[i] for i in members]].mean(0) for members in scene_members]
            )
            text_embeddings = model.get_text_features(**tokens).pooler_output.split(
                [len(kind) for kind in texts.values()]
            )
            # One InfoNCE per kind of text, averaged, so that the many place titles do not drown the objects' shapes.
            losses = []
            for (kind, described), embeddings in zip(texts.items(), text_embeddings):
                items = [shown[i] for i in image_ids] + (scene_items if kind == "titles" else [])
                item_embeddings = torch.cat([images, scenes]) if kind == "titles" else images
                losses.append(
                    clip_loss(
                        item_embeddings, embeddings, model.logit_scale, soft_targets([m for _, m in described], items)
                    )
                )
            loss = torch.stack(losses).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
    logger.info("tiny encoder pretrained: %d steps, final CLIP loss %.3f", recipe.steps, loss.item())
    return model


# -- the cached folder ------------------------------------------------------------------------------------


def recipe_key(config: ChineseCLIPConfig, processor, lang: str, recipe: TinyEncoderRecipe) -> str:
    """A hash of everything the pretrained weights depend on."""
    settings = config.to_dict()
    settings.pop("transformers_version", None)
    source = [Path(__file__).read_bytes(), Path(demo_data.__file__).read_bytes()]
    parts = [
        json.dumps(dataclasses.asdict(recipe), sort_keys=True),
        json.dumps(settings, sort_keys=True, default=str),
        json.dumps(processor.title_tokenizer.get_vocab(), sort_keys=True),
        json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str),
        str(processor.max_title_length),
        lang,
        torch.__version__.split("+")[0],
        str(ENCODER_FOLDER_VERSION),
    ]
    digest = hashlib.sha256("|".join(parts).encode())
    for code in source:
        digest.update(code)
    return digest.hexdigest()[:16]


SHIPPED = (
    Path(__file__).parent / "assets"
)  # pretrained weights shipped with the package: `python -m tippo_rl.demo.tiny_encoder`


def shipped_weights(lang: str, key: str) -> Path | None:
    """The shipped pretrained weights for `lang` when they were pretrained with exactly this recipe (`key`, the cache
    key: settings, configs, vocabulary, code and torch version) and their SHA-256 checks; else None (pretrain)."""
    record, weights = SHIPPED / f"tiny_encoder_{lang}.json", SHIPPED / f"tiny_encoder_{lang}.safetensors"
    if not (record.is_file() and weights.is_file()):
        return None
    shipped = json.loads(record.read_text())
    if shipped.get("recipe_key") != key:
        return None
    if hashlib.sha256(weights.read_bytes()).hexdigest() != shipped.get("sha256"):
        logger.warning("the shipped tiny φ weights %s fail their checksum: pretraining instead", weights)
        return None
    return weights


def tiny_encoder_folder(
    config: ChineseCLIPConfig,
    processor,
    lang: str = "en",
    recipe: TinyEncoderRecipe = TinyEncoderRecipe(),
    cache_dir: str | Path | None = None,
) -> Path:
    """The folder of the pretrained tiny φ for this recipe (a `ChineseCLIPModel` checkpoint), pretrained on first
    use (~60 s on one CPU thread) and cached (`tippo_rl.caches`: a damaged folder is said and pretrained again).
    Processes that start together wait on a file lock while one trains."""
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "tiny_encoders"
    key = recipe_key(config, processor, lang, recipe)
    target = cache_dir / f"tiny-chinese-clip-{lang}-{key}"

    def build(folder: Path) -> None:
        shipped = shipped_weights(lang, key)
        if shipped is not None:  # the same recipe, pretrained once and shipped: no minute of pretraining
            model = ChineseCLIPModel(copy.deepcopy(config))
            model.load_state_dict(load_file(shipped))
        else:
            logger.warning(
                "tiny preset: pretraining its Chinese-CLIP encoder on demo pairs, once (~60 s); cached in %s", target
            )
            model = pretrain_tiny_encoder(config, processor, lang, recipe)
        save_model_folder(model, folder)
        (folder / "tiny_encoder_recipe.json").write_text(
            json.dumps({"lang": lang, **dataclasses.asdict(recipe)}, indent=2) + "\n"
        )

    return cached_folder(target, build, check=ChineseCLIPModel.from_pretrained)


# -- what the demo needs of φ -------------------------------------------------------------------------------


def linear_probe_accuracy(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, steps: int = 300
) -> float:
    """Accuracy on `test` of a softmax regression fitted to `train` (full-batch L-BFGS, a little weight decay)."""
    with torch.enable_grad():
        generator = torch.Generator().manual_seed(0)
        probe = torch.nn.Linear(train.shape[1], int(train_labels.max()) + 1)
        torch.nn.init.normal_(probe.weight, std=0.01, generator=generator)
        torch.nn.init.zeros_(probe.bias)
        optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
        scale = train.std().clamp(min=1e-6)

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(probe(train / scale), train_labels) + 1e-4 * probe.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        return (probe(test / scale).argmax(1) == test_labels).float().mean().item()


@torch.no_grad()
def probe_tiny_encoder(
    encoder, processor, lang: str = "en", seed: int = 1234, n_images: int = 600, n_scenes: int = 400
) -> dict[str, float]:
    """Properties of a φ (a `TIPPoFrozenEncoder`, or anything with `encode_text`/`encode_images`) on fresh demo
    draws (seed `seed`, not the pretraining's):
    - `title_max_cosine`: the largest cosine between two places' canonical titles ("in the garden", …);
    - `colour_accuracy`, `shape_accuracy`, `place_accuracy`: a linear probe's recovery of each image's colour,
      shape and background place from its features (a softmax regression fitted on one half of the images, scored
      on the other); `*_centroid_accuracy`: the same by nearest class centroid;
    - `scene_to_title`: how often a scene (mean of its 1–5 images' features, each background showing another place
      with the generator's probability) is closest to its own place's title among the four;
    - `title_to_scene`: for each title wording, how often it is closest to a scene of its place among four scenes,
      one per place (averaged over draws).
    """
    rng = random.Random(seed)

    def embed_texts(texts):
        tokens = processor.title_tokenizer(
            list(texts), padding=True, truncation=True, max_length=processor.max_title_length, return_tensors="pt"
        )
        return F.normalize(encoder.encode_text(tokens["input_ids"], tokens["attention_mask"]), dim=-1)

    def embed_images(images):
        return F.normalize(
            encoder.encode_images(processor.image_processor(images=images, return_tensors="pt")["pixel_values"]),
            dim=-1,
        )

    places = sorted(PLACES)
    titles = embed_texts([titles_of(place, lang)[0] for place in places])
    cosines = titles @ titles.T
    title_max_cosine = cosines[~torch.eye(len(places), dtype=torch.bool)].max().item()

    labels = [(rng.choice(places), rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES))) for _ in range(n_images)]
    features = embed_images([draw_shape(shape, colour, rng, place=place) for place, colour, shape in labels])
    half = n_images // 2
    accuracy = {}
    for field, index in (("place", 0), ("colour", 1), ("shape", 2)):
        values = sorted({label[index] for label in labels})
        classes = torch.tensor([values.index(label[index]) for label in labels])
        centroids = torch.stack([features[:half][classes[:half] == c].mean(0) for c in range(len(values))])
        predicted = (features[half:] @ F.normalize(centroids, dim=-1).T).argmax(1)
        accuracy[f"{field}_centroid_accuracy"] = (predicted == classes[half:]).float().mean().item()
        accuracy[f"{field}_accuracy"] = linear_probe_accuracy(
            features[:half], classes[:half], features[half:], classes[half:]
        )

    scene_places, scene_features = [], []
    for _ in range(n_scenes):
        place = rng.choice(places)
        objects = [(rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES))) for _ in range(rng.randint(1, 5))]
        images, _ = draw_scene(place, objects, rng)
        scene_places.append(places.index(place))
        scene_features.append(F.normalize(embed_images(images).mean(0), dim=-1))
    scenes = torch.stack(scene_features)
    truth = torch.tensor(scene_places)
    scene_to_title = ((scenes @ titles.T).argmax(1) == truth).float().mean().item()
    wordings = embed_texts([t for place in places for t in titles_of(place, lang)])
    wording_place = torch.tensor([i for i, place in enumerate(places) for _ in titles_of(place, lang)])
    hits, draws = 0, 0
    for _ in range(50):
        choice = [rng.choice([i for i, t in enumerate(scene_places) if t == p]) for p in range(len(places))]
        best = (wordings @ scenes[choice].T).argmax(1)
        hits += (best == wording_place).sum().item()
        draws += len(wording_place)
    return {
        "title_max_cosine": title_max_cosine,
        **accuracy,
        "scene_to_title": scene_to_title,
        "title_to_scene": hits / draws,
    }


def ship_pretrained_weights(langs: tuple[str, ...] = ("en", "zh")) -> None:
    """Pretrain the tiny φ of the tiny preset for each language (one thread: the same weights on every run of this
    machine) and write them, with their recipe key and SHA-256, into `SHIPPED`, which the package ships."""
    from ..presets import build_tiny_tippo

    SHIPPED.mkdir(exist_ok=True)
    recipe = TinyEncoderRecipe()
    for lang in langs:
        model, processor = build_tiny_tippo(lang=lang, pretrained_encoder=False)
        config = model.config.encoder_config  # as `build_tiny_tippo` asks for the folder: the same recipe key
        key = recipe_key(config, processor, lang, recipe)
        weights = SHIPPED / f"tiny_encoder_{lang}.safetensors"
        save_model(pretrain_tiny_encoder(config, processor, lang, recipe), str(weights))
        record = {
            "recipe_key": key,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "torch": torch.__version__,
        }
        (SHIPPED / f"tiny_encoder_{lang}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{weights}: {weights.stat().st_size} bytes, recipe key {key}")


if __name__ == "__main__":
    ship_pretrained_weights()
