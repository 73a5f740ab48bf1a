"""tippo_rl.caches: every cache the project writes (the tiny φ, static sentence embedders, frozen features) is checked
against the manifest written with it; a truncated or corrupted entry is said in one warning and built again, to the
same result as a clean build; an entry from before manifests is loaded once and adopted; a full disk while building is
one line and leaves no partial entry."""

from __future__ import annotations

import copy
import errno
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_rewards import save_tiny_bert_encoder

from tippo_rl import cache_frozen_features, load_artmuse
from tippo_rl.caches import MANIFEST_NAME, cached_folder
from tippo_rl.checkpoints import DiskFullError
from tippo_rl.demo.tiny_encoder import TinyEncoderRecipe, tiny_encoder_folder
from tippo_rl.presets import build_tiny_processor, tiny_tippo_config
from tippo_rl.rewards import static_sentence_embedder


QUICK = TinyEncoderRecipe(steps=3, images_per_batch=8, scenes_per_batch=2, pool_size=40)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    """Corrupt `path` without changing its size (a bad sector, a copy gone wrong)."""
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF
    path.write_bytes(bytes(data))


def cache_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "tippo_rl.caches"]


def test_a_truncated_tiny_encoder_is_said_and_pretrained_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TIPPO_RL_CACHE", str(tmp_path))  # the default cache folder, moved
    processor = build_tiny_processor("en")
    folder = tiny_encoder_folder(tiny_tippo_config(processor).encoder_config, processor, "en", QUICK)
    assert folder.parent == tmp_path / "tiny_encoders" and (folder / MANIFEST_NAME).is_file()
    clean = {
        name: tensor.clone() for name, tensor in load_file(folder / "model.safetensors").items()
    }  # not a view of the file
    size = (folder / "model.safetensors").stat().st_size
    truncate(folder / "model.safetensors")

    with caplog.at_level(logging.WARNING):
        again = tiny_encoder_folder(tiny_tippo_config(processor).encoder_config, processor, "en", QUICK)
    (warning,) = cache_warnings(caplog)
    assert warning == (
        f"cache '{folder}' is damaged (model.safetensors has {size // 2} bytes, {size} were written (truncated?)): "
        "building it again"
    )
    rebuilt = load_file(again / "model.safetensors")
    assert again == folder and all(torch.equal(rebuilt[name], clean[name]) for name in clean)


def test_a_corrupted_static_embedder_table_is_said_and_distilled_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TIPPO_RL_CACHE", str(tmp_path / "cache"))
    encoder = save_tiny_bert_encoder(tmp_path / "tiny-bert")
    texts = ["a red circle by the sea", "two blue squares"]
    clean = static_sentence_embedder(encoder, dims=8).encode(texts)
    (folder,) = [path for path in (tmp_path / "cache/static_embedders").iterdir() if path.is_dir()]
    flip_a_byte(folder / "model.safetensors")  # same size: only the checksum sees it

    with caplog.at_level(logging.WARNING):
        rebuilt = static_sentence_embedder(encoder, dims=8).encode(texts)
    assert f"cache '{folder}' is damaged (model.safetensors is corrupted" in cache_warnings(caplog)[0]
    np.testing.assert_allclose(rebuilt, clean, rtol=1e-5, atol=1e-6)


def feature_values(dataset) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([np.asarray(row, dtype=np.float32) for row in dataset["image_features"]]),
        np.asarray(dataset["title_features"], dtype=np.float32),
    )


@pytest.mark.parametrize("damage", [truncate, flip_a_byte])
def test_a_damaged_feature_cache_file_is_said_and_computed_again(
    tmp_path, tiny_model_and_processor, demo_dataset_dir, caplog, damage
):
    model, processor = copy.deepcopy(tiny_model_and_processor[0]), tiny_model_and_processor[1]
    dataset = load_artmuse(demo_dataset_dir / "test.jsonl")
    clean = feature_values(cache_frozen_features(dataset, model, processor, cache_dir=tmp_path))
    (cache_file,) = tmp_path.glob("tippo-features-*.arrow")
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == [
        cache_file.name,
        cache_file.name + ".manifest.json",
    ]  # one cache file, no second one from casting the images
    damage(cache_file)

    with caplog.at_level(logging.WARNING):
        rebuilt = cache_frozen_features(load_artmuse(demo_dataset_dir / "test.jsonl"), model, processor, tmp_path)
    (warning,) = cache_warnings(caplog)
    assert warning.startswith(f"cache '{cache_file}' is damaged (") and warning.endswith("): building it again")
    np.testing.assert_array_equal(feature_values(rebuilt)[0], clean[0])
    np.testing.assert_array_equal(feature_values(rebuilt)[1], clean[1])


def test_a_feature_file_from_before_manifests_is_adopted_or_rebuilt(
    tmp_path, tiny_model_and_processor, demo_dataset_dir, caplog
):
    model, processor = copy.deepcopy(tiny_model_and_processor[0]), tiny_model_and_processor[1]
    dataset = load_artmuse(demo_dataset_dir / "test.jsonl")
    clean = feature_values(cache_frozen_features(dataset, model, processor, cache_dir=tmp_path))
    (cache_file,) = tmp_path.glob("tippo-features-*.arrow")
    manifest = cache_file.with_name(cache_file.name + ".manifest.json")
    manifest.unlink()  # as an older version left it: it loads, so it is kept and given its manifest
    written = cache_file.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        cache_frozen_features(dataset, model, processor, cache_dir=tmp_path)
    assert not cache_warnings(caplog) and manifest.is_file() and cache_file.stat().st_mtime_ns == written

    manifest.unlink()
    truncate(cache_file)  # an old file that does not load
    with caplog.at_level(logging.WARNING):
        rebuilt = cache_frozen_features(dataset, model, processor, cache_dir=tmp_path)
    (warning,) = cache_warnings(caplog)
    assert warning.startswith(f"cache '{cache_file}' is damaged (it does not load: ")
    np.testing.assert_array_equal(feature_values(rebuilt)[0], clean[0])


def write_two_files(folder):
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "sub").mkdir()
    (folder / "sub/b.bin").write_bytes(b"b" * 100)


def test_a_folder_entry_is_built_once_and_a_missing_file_or_bad_manifest_rebuilds_it(tmp_path, caplog):
    builds = []

    def build(folder):
        builds.append(folder)
        write_two_files(folder)

    target = tmp_path / "entry"
    assert cached_folder(target, build, check=lambda folder: None) == target
    assert cached_folder(target, build, check=lambda folder: None) == target and len(builds) == 1
    assert builds[0].name == "entry.partial" and not builds[0].exists()
    (target / "sub/b.bin").unlink()
    with caplog.at_level(logging.WARNING):
        cached_folder(target, build, check=lambda folder: None)
    assert cache_warnings(caplog) == [f"cache '{target}' is damaged (sub/b.bin is missing): building it again"]
    (target / MANIFEST_NAME).write_text("{not json")
    cached_folder(target, build, check=lambda folder: None)
    assert "its manifest tippo_rl_manifest.json is unreadable" in cache_warnings(caplog)[-1]
    assert len(builds) == 3 and (target / "sub/b.bin").read_bytes() == b"b" * 100


def test_a_full_disk_while_building_is_one_line_and_leaves_no_partial_entry(tmp_path):
    def build(folder):
        write_two_files(folder)
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "entry"
    with pytest.raises(
        DiskFullError, match=rf"^no space left on device writing '{target}' \(.* free there\); .*TIPPO_RL_CACHE"
    ):
        cached_folder(target, build, check=lambda folder: None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["entry.lock"]
