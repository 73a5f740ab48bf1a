"""tippo_rl.demo.tiny_encoder: the tiny preset's φ is pretrained CLIP-style on demo pairs, deterministically, cached under
a key of its whole recipe, and has what the demo needs of a pretrained CLIP (separated titles, colour and shape in
its image features, titles that find their scenes); the random φ stays available."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from tippo_rl import build_tiny_tippo
from tippo_rl.demo.tiny_encoder import (
    Described,
    TinyEncoderRecipe,
    clip_loss,
    describes,
    probe_tiny_encoder,
    recipe_key,
    soft_targets,
    tiny_encoder_folder,
)
from tippo_rl.presets import build_tiny_processor, tiny_tippo_config


QUICK = TinyEncoderRecipe(steps=3, images_per_batch=8, scenes_per_batch=2, pool_size=40)


@pytest.fixture(scope="module")
def processor_and_config():
    processor = build_tiny_processor("en")
    return processor, tiny_tippo_config(processor).encoder_config


def test_a_text_describes_the_items_it_names():
    red_circle_by_sea = Described("sea", frozenset([("red", "circle")]))
    scene = Described("sea", frozenset([("red", "circle"), ("blue", "square")]))
    assert describes(Described(None, frozenset([("red", "circle")])), red_circle_by_sea)
    assert describes(Described("sea", frozenset()), scene) and not describes(Described("city", frozenset()), scene)
    assert not describes(Described("sea", frozenset([("blue", "circle")])), scene)
    assert soft_targets(
        [Described("sea", frozenset())], [red_circle_by_sea, Described("city", frozenset())]
    ).tolist() == [[1.0], [0.0]]


def test_clip_loss_with_one_positive_each_is_symmetric_infonce():
    items, texts = torch.randn(3, 4), torch.randn(3, 4)
    scale = torch.tensor(0.0)  # logits = cosines
    logits = torch.nn.functional.normalize(items, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T
    expected = (
        torch.nn.functional.cross_entropy(logits, torch.arange(3))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))
    ) / 2
    torch.testing.assert_close(clip_loss(items, texts, scale, torch.eye(3)), expected)


def test_same_recipe_gives_the_same_weights_and_another_seed_does_not(tmp_path, processor_and_config):
    processor, config = processor_and_config
    first = load_file(
        tiny_encoder_folder(config, processor, "en", QUICK, cache_dir=tmp_path / "a") / "model.safetensors"
    )
    second = load_file(
        tiny_encoder_folder(config, processor, "en", QUICK, cache_dir=tmp_path / "b") / "model.safetensors"
    )
    assert first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)
    other = load_file(
        tiny_encoder_folder(config, processor, "en", dataclasses.replace(QUICK, seed=1), cache_dir=tmp_path / "c")
        / "model.safetensors"
    )
    assert not torch.equal(first["text_projection.weight"], other["text_projection.weight"])


def test_the_cache_is_reused_and_invalidated_when_the_recipe_changes(tmp_path, processor_and_config, monkeypatch):
    processor, config = processor_and_config
    folder = tiny_encoder_folder(config, processor, "en", QUICK, cache_dir=tmp_path)
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert tiny_encoder_folder(config, processor, "en", QUICK, cache_dir=tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == written  # reused, not retrained
    keys = {recipe_key(config, processor, "en", QUICK)}
    keys.add(recipe_key(config, processor, "en", dataclasses.replace(QUICK, steps=4)))
    keys.add(recipe_key(config, processor, "en", dataclasses.replace(QUICK, learning_rate=1e-3)))
    keys.add(recipe_key(config, processor, "zh", QUICK))
    assert len(keys) == 4
    # The generator's code is part of the recipe: changing demo_data.py changes the key.
    import tippo_rl.demo.scenes as demo_data

    changed = tmp_path / "demo_data.py"
    changed.write_text(open(demo_data.__file__, encoding="utf-8").read() + "\n# changed\n", encoding="utf-8")
    before = recipe_key(config, processor, "en", QUICK)
    monkeypatch.setattr(demo_data, "__file__", str(changed))
    assert recipe_key(config, processor, "en", QUICK) != before


def test_an_interrupted_save_is_redone(tmp_path, processor_and_config):
    processor, config = processor_and_config
    folder = tiny_encoder_folder(config, processor, "en", QUICK, cache_dir=tmp_path)
    (folder / "config.json").unlink()  # as if the process died before the folder was complete
    assert (tiny_encoder_folder(config, processor, "en", QUICK, cache_dir=tmp_path) / "config.json").is_file()


def test_the_tiny_preset_loads_the_pretrained_encoder_and_the_random_one_on_request(processor_and_config):
    processor, config = processor_and_config
    pretrained, _ = build_tiny_tippo()
    folder = tiny_encoder_folder(config, processor, "en")
    saved = load_file(folder / "model.safetensors")
    for name, tensor in pretrained.encoder.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    random_encoder, _ = build_tiny_tippo(pretrained_encoder=False)
    assert not torch.equal(random_encoder.encoder.text_projection.weight, pretrained.encoder.text_projection.weight)
    torch.manual_seed(0)  # the random φ is the seeded initialisation, as before
    assert torch.equal(
        build_tiny_tippo(pretrained_encoder=False)[0].encoder.text_projection.weight,
        random_encoder.encoder.text_projection.weight,
    )
    # Everything but φ is the same seeded initialisation either way.
    assert torch.equal(pretrained.text_adapter.mlp[0].weight, random_encoder.text_adapter.mlp[0].weight)
    assert all(not p.requires_grad for p in pretrained.encoder.parameters())


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_pretrained_encoder_separates_titles_objects_and_places(lang):
    model, processor = build_tiny_tippo(lang=lang)
    probe = probe_tiny_encoder(model.encoder, processor, lang)
    assert probe["title_max_cosine"] < 0.9
    assert probe["colour_accuracy"] >= 0.95 and probe["shape_accuracy"] >= 0.95 and probe["place_accuracy"] >= 0.95
    assert probe["scene_to_title"] >= 0.8 and probe["title_to_scene"] >= 0.8
    random_probe = probe_tiny_encoder(
        build_tiny_tippo(lang=lang, pretrained_encoder=False)[0].encoder, processor, lang
    )
    assert random_probe["title_max_cosine"] > 0.99  # what the pretraining fixes


def shipped_key(lang: str) -> str:
    model, processor = build_tiny_tippo(lang=lang, pretrained_encoder=False)
    return recipe_key(model.config.encoder_config, processor, lang, TinyEncoderRecipe())


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_shipped_pretrained_weights_fit_today_s_recipe_and_are_used(lang, tmp_path, caplog):
    """The package ships the tiny φ pretrained for each language (so a fresh `make demo` does not spend a minute per
    language on it). Failing here means the recipe changed (its settings, configs or code): run
    `python -m tippo_rl.demo.tiny_encoder` to pretrain and ship them again."""
    from tippo_rl.demo import tiny_encoder

    key = shipped_key(lang)
    weights = tiny_encoder.shipped_weights(lang, key)
    assert weights is not None, (
        "the shipped weights were pretrained with another recipe: python -m tippo_rl.demo.tiny_encoder"
    )
    model, processor = build_tiny_tippo(lang=lang, pretrained_encoder=False)
    with caplog.at_level("WARNING"):
        folder = tiny_encoder_folder(model.config.encoder_config, processor, lang, cache_dir=tmp_path)
    assert "pretraining" not in caplog.text  # the shipped weights, not a minute of pretraining
    built, shipped = load_file(folder / "model.safetensors"), load_file(weights)
    assert built.keys() == shipped.keys() and all(torch.equal(built[name], shipped[name]) for name in built)


def test_shipped_weights_that_fail_their_checksum_are_not_used(tmp_path, monkeypatch, caplog):
    from tippo_rl.demo import tiny_encoder

    for name in ("tiny_encoder_en.json", "tiny_encoder_en.safetensors"):
        (tmp_path / name).write_bytes((tiny_encoder.SHIPPED / name).read_bytes())
    data = bytearray((tmp_path / "tiny_encoder_en.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "tiny_encoder_en.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(tiny_encoder, "SHIPPED", tmp_path)
    with caplog.at_level("WARNING"):
        assert tiny_encoder.shipped_weights("en", shipped_key("en")) is None
    assert "fail their checksum" in caplog.text


@pytest.mark.slow
def test_pretraining_again_gives_the_shipped_weights():
    """The shipped English φ is what pretraining gives today (one thread, on this kind of machine; 1e-6 allows for
    another CPU's float summation)."""
    from tippo_rl.demo import tiny_encoder

    model, processor = build_tiny_tippo(lang="en", pretrained_encoder=False)
    again = tiny_encoder.pretrain_tiny_encoder(model.config.encoder_config, processor, "en", TinyEncoderRecipe())
    shipped = load_file(tiny_encoder.SHIPPED / "tiny_encoder_en.safetensors")
    for name, tensor in again.state_dict().items():
        if name in shipped:
            torch.testing.assert_close(tensor, shipped[name], atol=1e-6, rtol=0, msg=name)
