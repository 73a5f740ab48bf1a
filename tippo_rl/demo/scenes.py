"""The embedded default dataset: scenes of coloured shapes in four places, which a tiny model learns in minutes.

Each sample is a scene: a place (garden, city, sea or forest) and 1–5 objects, one per image. What the images
share and what sets them apart is what TIPPo models:
- **commonality**: every image of a scene shows the place as its background (a lawn with flowers, grey buildings,
  sky over water, tree trunks), noisily: colours jitter, and each image shows another place's background with
  probability `OFF_PLACE_PROBABILITY`, so one image can mislead where the scene as a whole does not;
- **discrepancy**: each image shows its own object, a coloured shape.

The title names the place in one of three wordings ("a day by the sea", "seaside views"), which the images only
hint at; the reference names the place and describes every image in order ("by the sea there is a red circle, a
blue square and a green triangle."). The English and Chinese variants show the same scenes. Everything is drawn
from a seed with integer arithmetic, so two machines produce byte-identical files.

The training references can come from annotators who confuse two colours (`annotator_confusion`: each purple object
is called "blue" with that probability, so that with more than one half SFT learns to say "blue"); the held-out
references are always right. What the references get wrong, a reward that reads the images can teach: the demo's
PolishPPO adds the scene verifier (`tippo_rl.demo.scene_verifier`), which reads each image's object with φ.

The files are written in the ArtMuse layout (`train.jsonl`/`test.jsonl` rows `{title, images, reference}`
plus an `images/` folder), so the demo goes through the same loader as real data. [`parse_scene`] reads a
description back into its fields, and [`scene_field_accuracy`] scores predictions field by field.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..caches import MANIFEST_NAME, record_manifest, whole


COLOURS = {
    "red": ((220, 40, 40), "红色"),
    "green": ((40, 170, 60), "绿色"),
    "blue": ((40, 80, 220), "蓝色"),
    "yellow": ((235, 200, 30), "黄色"),
    "purple": ((140, 60, 180), "紫色"),
}
SHAPES = {"circle": "圆形", "square": "方形", "triangle": "三角形"}
# place → (English phrase, Chinese phrase): how a reference names it (and the first title wording).
PLACES = {
    "garden": ("in the garden", "花园里"),
    "city": ("in the city", "城市里"),
    "sea": ("by the sea", "海边"),
    "forest": ("in the forest", "森林里"),
}
# place → the title wordings, English and Chinese (a sample's title is one of them).
TITLES = {
    "garden": (("in the garden", "a day in the garden", "garden corner"), ("花园里", "花园的一天", "花园一角")),
    "city": (("in the city", "a day in the city", "city streets"), ("城市里", "城市的一天", "城市街头")),
    "sea": (("by the sea", "a day by the sea", "seaside views"), ("海边", "海边的一天", "海边风光")),
    "forest": (("in the forest", "a day in the forest", "forest paths"), ("森林里", "森林的一天", "林间小路")),
}
IMAGE_SIZE = 64
OFF_PLACE_PROBABILITY = 0.2  # an image shows another place's background
# The colour that annotators who confuse two colours write for the other: a purple object called "blue".
CONFUSED_COLOUR, CONFUSED_AS = "purple", "blue"


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, ...]:
    return tuple(min(255, max(0, value + rng.randint(-amount, amount))) for value in rgb)


def draw_background(place: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """A place as a background: a light lawn with flowers (garden), grey buildings (city), sky over water (sea) or
    tree trunks (forest), jittered. No pixel takes an object colour of `COLOURS`."""
    if place == "garden":
        image = Image.new("RGB", (size, size), _jitter((196, 232, 186), rng))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(6, 10)):
            x, y = rng.randint(2, size - 3), rng.randint(2, size - 3)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_jitter((250, 170, 205), rng))
    elif place == "city":
        image = Image.new("RGB", (size, size), _jitter((214, 216, 222), rng))
        draw = ImageDraw.Draw(image)
        x = rng.randint(-4, 2)
        while x < size:
            width, height = rng.randint(8, 14), rng.randint(size // 3, size - 6)
            draw.rectangle([x, size - height, x + width - 2, size], fill=_jitter((150, 152, 160), rng))
            x += width + rng.randint(1, 4)
    elif place == "sea":
        image = Image.new("RGB", (size, size), _jitter((206, 228, 246), rng))
        draw = ImageDraw.Draw(image)
        horizon = rng.randint(size // 3, size // 2)
        draw.rectangle([0, horizon, size, size], fill=_jitter((120, 168, 212), rng))
        for _ in range(rng.randint(2, 4)):
            y = rng.randint(horizon + 3, size - 3)
            draw.line([(0, y), (size, y)], fill=_jitter((236, 244, 250), rng), width=1)
    elif place == "forest":
        image = Image.new("RGB", (size, size), _jitter((168, 196, 160), rng))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(3, 5)):
            x = rng.randint(0, size - 5)
            draw.rectangle([x, 0, x + rng.randint(3, 5), size], fill=_jitter((116, 88, 62), rng))
    else:
        raise ValueError(f"unknown place {place!r}; the demo's places are {', '.join(PLACES)}")
    return image


def draw_shape(
    shape: str, colour: str, rng: random.Random, size: int = IMAGE_SIZE, place: str | None = None
) -> Image.Image:
    """One image: a coloured shape at the centre (jittered by a pixel or two), on `place`'s background (a plain
    light one when `place` is None). The background stays visible around the shape."""
    if place is None:
        image = Image.new("RGB", (size, size), tuple(rng.randint(235, 255) for _ in range(3)))
    else:
        image = draw_background(place, rng, size)
    draw = ImageDraw.Draw(image)
    # Nearly fixed size and place: at the tiny preset's 32×32 pixels and 8×8 patches, a shape's outline then falls
    # on the same patches every time (with the earlier random sizes and positions a tiny ViT learnt shapes slowly).
    radius = size * 5 // 16 + rng.randint(-1, 0)
    cx, cy = (size // 2 + rng.randint(-size // 32, size // 32) for _ in range(2))
    fill = COLOURS[colour][0]
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def background_place(place: str, rng: random.Random) -> str:
    """The place an image of a scene at `place` shows: `place`, or another one with `OFF_PLACE_PROBABILITY`."""
    if rng.random() < OFF_PLACE_PROBABILITY:
        return rng.choice(sorted(set(PLACES) - {place}))
    return place


def draw_scene(
    place: str, objects: Sequence[tuple[str, str]], rng: random.Random
) -> tuple[list[Image.Image], list[str]]:
    """A scene's images, one per (colour, shape) object, and the place each image's background shows."""
    shown = [background_place(place, rng) for _ in objects]
    return [draw_shape(shape, colour, rng, place=where) for (colour, shape), where in zip(objects, shown)], shown


def object_phrase(colour: str, shape: str, lang: str) -> str:
    """ "a red circle" / "一个红色的圆形"."""
    return f"一个{COLOURS[colour][1]}的{SHAPES[shape]}" if lang == "zh" else f"a {colour} {shape}"


def place_phrase(place: str, lang: str) -> str:
    """How a reference names a place: "by the sea" / "海边"."""
    return PLACES[place][1 if lang == "zh" else 0]


def titles_of(place: str, lang: str) -> tuple[str, ...]:
    """The title wordings of a place."""
    return TITLES[place][1 if lang == "zh" else 0]


def annotated(objects: Sequence[tuple[str, str]], confusion: float, rng: random.Random) -> list[tuple[str, str]]:
    """`objects` as an annotator who calls a purple object "blue" with probability `confusion` describes them."""
    return [
        (CONFUSED_AS if colour == CONFUSED_COLOUR and rng.random() < confusion else colour, shape)
        for colour, shape in objects
    ]


def describe(place: str, objects: Sequence[tuple[str, str]], lang: str, title_variant: int = 0) -> tuple[str, str]:
    """(title, reference) for a scene; `objects` are (colour, shape) pairs in image order."""
    title = titles_of(place, lang)[title_variant]
    items = [object_phrase(c, s, lang) for c, s in objects]
    if lang == "zh":
        listed = items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]
        return title, f"{place_phrase(place, lang)}有{listed}。"
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return title, f"{place_phrase(place, lang)} there is {listed}."


def demo_corpus(lang: str = "en") -> list[str]:
    """Every word and phrase the generator can produce (titles and references), to train tiny tokenizers."""
    texts = []
    for place in PLACES:
        texts += list(titles_of(place, lang))
        for colour in COLOURS:
            for shape in SHAPES:
                texts.append(describe(place, [(colour, shape), (colour, shape)], lang)[1])
    return texts


def parse_scene(text: str, lang: str = "en") -> tuple[str | None, list[tuple[str, str]]]:
    """Read a description back: (place or None, the (colour, shape) objects it names, in order). Words that are
    not the generator's are skipped, so a partly wrong prediction still yields the fields it got."""
    places = {place_phrase(place, lang): place for place in PLACES}
    found = [(text.find(phrase), place) for phrase, place in places.items() if phrase in text]
    place = min(found)[1] if found else None
    if lang == "zh":
        colours = {zh: en for en, (_, zh) in COLOURS.items()}
        shapes = {zh: en for en, zh in SHAPES.items()}
        pattern = rf"一个({'|'.join(colours)})的({'|'.join(shapes)})"
        return place, [(colours[c], shapes[s]) for c, s in re.findall(pattern, text)]
    pattern = rf"\ba ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b"
    return place, re.findall(pattern, text)


def scene_field_accuracy(predictions: Sequence[str], references: Sequence[str], lang: str = "en") -> dict[str, float]:
    """How often predictions get each field of the reference's scene right, in [0, 1]:
    `place` and `count` per sample; `colour`, `shape` and `object` (both) per reference object, position by position
    (an object the prediction lacks counts as wrong); `objects_any_order`: the objects named regardless of order,
    2·|predicted ∩ reference| / (|predicted| + |reference|) over the corpus (multisets)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    hits = {"place": 0, "count": 0, "colour": 0, "shape": 0, "object": 0}
    n_objects, shared, named = 0, 0, 0
    for prediction, reference in zip(predictions, references):
        predicted_place, predicted = parse_scene(prediction, lang)
        true_place, true = parse_scene(reference, lang)
        hits["place"] += predicted_place == true_place
        hits["count"] += len(predicted) == len(true)
        n_objects += len(true)
        shared += sum((Counter(predicted) & Counter(true)).values())
        named += len(predicted) + len(true)
        for position, (colour, shape) in enumerate(true):
            guess = predicted[position] if position < len(predicted) else (None, None)
            hits["colour"] += guess[0] == colour
            hits["shape"] += guess[1] == shape
            hits["object"] += guess == (colour, shape)
    n = max(len(references), 1)
    return {
        "place": hits["place"] / n,
        "count": hits["count"] / n,
        **{field: hits[field] / max(n_objects, 1) for field in ("colour", "shape", "object")},
        "objects_any_order": 2 * shared / max(named, 1),
    }


def make_demo_dataset(
    output_dir: str | Path,
    num_train: int = 400,
    num_test: int = 300,
    lang: str = "en",
    max_images: int = 5,
    seed: int = 0,
    annotator_confusion: float = 0.0,
) -> Path:
    """Write the embedded default dataset to `output_dir` (train.jsonl, test.jsonl, images/) and return it.

    Rows carry `place`, `shown_places` (the place each image's background shows) and `objects` (the scene's
    (colour, shape) pairs, right whatever the reference says) besides `title`, `images` and `reference`. A training
    reference calls each purple object "blue" with probability `annotator_confusion` (0: every reference right); the
    held-out references are always right. The test split depends on `seed`, `lang` and `max_images` only, not on
    `num_train`. Re-running with the same arguments reproduces the same files; an existing complete dataset
    with the same arguments is reused, after checking its files against the manifest written with them (a truncated
    or corrupted file is said in one warning and the dataset generated again: `tippo_rl.caches`).
    """
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    if not 1 <= max_images <= 5:
        raise ValueError(f"max_images must lie in 1..5 for the demo dataset, got {max_images}")
    if not 0.0 <= annotator_confusion <= 1.0:
        raise ValueError(f"annotator_confusion is a probability in [0, 1], got {annotator_confusion}")
    output_dir = Path(output_dir)
    arguments = dict(num_train=num_train, num_test=num_test, lang=lang, max_images=max_images, seed=seed, version=4)
    if annotator_confusion:
        arguments["annotator_confusion"] = annotator_confusion
    stamp, manifest = output_dir / "demo_dataset.json", output_dir / MANIFEST_NAME
    if _stamp(stamp) == arguments and whole(output_dir, manifest, check=_images_open):
        return output_dir
    stamp.unlink(missing_ok=True)
    manifest.unlink(missing_ok=True)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("test", num_test)):
        # Each split from its own stream: the held-out scenes are the same whatever num_train is, so models trained
        # on different amounts of data are scored on the same samples.
        rng = random.Random(f"{seed}:{split}")
        # The annotators' mistakes from a stream of their own: the scenes are those of a dataset without them.
        annotator_rng = random.Random(f"{seed}:{split}:annotators")
        confusion = annotator_confusion if split == "train" else 0.0
        rows = []
        for index in range(count):
            place = rng.choice(sorted(PLACES))
            objects = [
                (rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES))) for _ in range(rng.randint(1, max_images))
            ]
            title_variant = rng.randrange(len(titles_of(place, lang)))
            images, shown = draw_scene(place, objects, rng)
            paths = []
            for position, image in enumerate(images):
                relative = f"images/{split}_{index:05d}_{position}.png"
                image.save(output_dir / relative)
                paths.append(relative)
            title, reference = describe(place, annotated(objects, confusion, annotator_rng), lang, title_variant)
            rows.append(
                {
                    "id": f"{split}-{index}",
                    "title": title,
                    "images": paths,
                    "reference": reference,
                    "place": place,
                    "shown_places": shown,
                    "objects": [list(pair) for pair in objects],
                }
            )
        with open(output_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stamp.write_text(json.dumps(arguments))
    record_manifest(output_dir, manifest)
    return output_dir


def _stamp(path: Path) -> dict | None:
    """The arguments a complete demo dataset was generated with (None: none, or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _images_open(folder: Path) -> None:
    """Raise unless both splits parse and every image they name opens (a dataset generated before manifests)."""
    for split in ("train", "test"):
        for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            for relative in json.loads(line)["images"]:
                with Image.open(folder / relative) as image:
                    image.verify()
