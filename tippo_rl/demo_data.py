"""The embedded default dataset: scenes of coloured shapes that a tiny model can learn in minutes.

Each sample has a title naming a place, 1–5 images each showing one coloured shape, and a reference that
describes every image in order ("in the garden there is a red circle, a blue square and a green
triangle."). The English and Chinese variants share the same scenes. Everything is generated from a seed,
so two machines produce byte-identical files.

The files are written in the ArtMuse layout (`train.jsonl`/`test.jsonl` rows `{title, images, reference}`
plus an `images/` folder), so the demo goes through the same loader as real data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": ((220, 40, 40), "红色"),
    "green": ((40, 170, 60), "绿色"),
    "blue": ((40, 80, 220), "蓝色"),
    "yellow": ((235, 200, 30), "黄色"),
    "purple": ((140, 60, 180), "紫色"),
}
SHAPES = {"circle": "圆形", "square": "方形", "triangle": "三角形"}
PLACES = {
    "garden": ("in the garden", "花园里"),
    "city": ("in the city", "城市里"),
    "sea": ("by the sea", "海边"),
    "forest": ("in the forest", "森林里"),
}
IMAGE_SIZE = 64


def draw_shape(shape: str, colour: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """One image: a coloured shape at a jittered position and scale on a light background."""
    background = tuple(rng.randint(235, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = rng.randint(size // 4, size // 3)
    cx, cy = (rng.randint(radius + 2, size - radius - 2) for _ in range(2))
    fill = COLOURS[colour][0]
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def describe(place: str, objects: list[tuple[str, str]], lang: str) -> tuple[str, str]:
    """(title, reference) for a scene; `objects` are (colour, shape) pairs in image order."""
    if lang == "zh":
        title = PLACES[place][1]
        items = [f"一个{COLOURS[c][1]}的{SHAPES[s]}" for c, s in objects]
        listed = items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]
        return title, f"{title}有{listed}。"
    title = PLACES[place][0]
    items = [f"a {c} {s}" for c, s in objects]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return title, f"{title} there is {listed}."


def demo_corpus(lang: str = "en") -> list[str]:
    """Every word and phrase the generator can produce (titles and references), to train tiny tokenizers."""
    texts = []
    for place in PLACES:
        for colour in COLOURS:
            for shape in SHAPES:
                title, reference = describe(place, [(colour, shape), (colour, shape)], lang)
                texts += [title, reference]
    return texts


def make_demo_dataset(
    output_dir: str | Path,
    num_train: int = 400,
    num_test: int = 48,
    lang: str = "en",
    max_images: int = 5,
    seed: int = 0,
) -> Path:
    """Write the embedded default dataset to `output_dir` (train.jsonl, test.jsonl, images/) and return it.

    Re-running with the same arguments reproduces the same files; an existing complete dataset with the
    same arguments is reused.
    """
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    if not 1 <= max_images <= 5:
        raise ValueError(f"max_images must lie in 1..5 for the demo dataset, got {max_images}")
    output_dir = Path(output_dir)
    arguments = dict(num_train=num_train, num_test=num_test, lang=lang, max_images=max_images, seed=seed)
    stamp = output_dir / "demo_dataset.json"
    if stamp.exists() and json.loads(stamp.read_text()) == arguments:
        return output_dir
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        rows = []
        for index in range(count):
            place = rng.choice(sorted(PLACES))
            objects = [(rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES))) for _ in range(rng.randint(1, max_images))]
            paths = []
            for position, (colour, shape) in enumerate(objects):
                relative = f"images/{split}_{index:05d}_{position}.png"
                draw_shape(shape, colour, rng).save(output_dir / relative)
                paths.append(relative)
            title, reference = describe(place, objects, lang)
            rows.append({"id": f"{split}-{index}", "title": title, "images": paths, "reference": reference})
        with open(output_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stamp.write_text(json.dumps(arguments))
    return output_dir
