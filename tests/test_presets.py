"""Building TIPPo from two pretrained checkpoints (the path users take with the Hub), exercised offline on
tiny local checkpoints; and the paper-setting recipe configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import ChineseCLIPModel, T5ForConditionalGeneration
from trl import TrlParser

from tippo_rl import TIPPoModel
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.presets import (
    build_tippo_by_size,
    build_tippo_from_pretrained_components,
    chinese_clip_vit_b16_config,
    load_model_and_processor,
    t5_base_config,
    tiny_tippo_config,
)
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer import TIPPoSFTConfig


REPO = Path(__file__).resolve().parents[1]


def save_component_checkpoints(folder: Path, processor):
    """A tiny Chinese-CLIP checkpoint and a tiny T5 checkpoint, laid out as on the Hub."""
    config = tiny_tippo_config(processor)
    clip = ChineseCLIPModel(config.encoder_config)
    clip.save_pretrained(folder / "clip")
    processor.title_tokenizer.save_pretrained(folder / "clip")
    processor.image_processor.save_pretrained(folder / "clip")
    t5 = T5ForConditionalGeneration(config.decoder_config)
    t5.save_pretrained(folder / "t5")
    processor.tokenizer.save_pretrained(folder / "t5")
    return clip, t5


def test_build_from_pretrained_components_keeps_their_weights(tmp_path, tiny_model_and_processor):
    clip, t5 = save_component_checkpoints(tmp_path, tiny_model_and_processor[1])
    model, processor = build_tippo_from_pretrained_components(
        str(tmp_path / "clip"), str(tmp_path / "t5"), prefix_length=3
    )
    assert model.config.prefix_length == 3
    assert model.config.encoder_name_or_path == str(tmp_path / "clip")
    for name, tensor in clip.state_dict().items():
        if name != "logit_scale":  # the one ChineseCLIPModel weight TIPPo does not keep
            torch.testing.assert_close(model.encoder.state_dict()[name], tensor)
    for name, tensor in t5.state_dict().items():
        torch.testing.assert_close(model.language_model.state_dict()[name], tensor)
    assert not any(parameter.requires_grad for parameter in model.encoder.parameters())
    # φ(T) is exactly Chinese-CLIP's text feature
    tokens = processor.title_tokenizer(["in the garden"], return_tensors="pt")
    with torch.no_grad():
        expected = clip.eval().get_text_features(**tokens).pooler_output
        actual = model.encoder.encode_text(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(actual, expected)


def test_recipe_builds_the_pretrained_preset_from_model_args(tmp_path, tiny_model_and_processor):
    save_component_checkpoints(tmp_path, tiny_model_and_processor[1])
    args = TIPPoModelConfig(
        preset="pretrained", encoder_name_or_path=str(tmp_path / "clip"), decoder_name_or_path=str(tmp_path / "t5")
    )
    model, processor = load_model_and_processor(args)
    assert isinstance(model, TIPPoModel) and processor.max_images == model.config.max_images


def test_paper_configs_parse_with_the_papers_settings(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    parser = TrlParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))
    script, training, model = parser.parse_args_and_config(
        args=[
            "--config",
            str(REPO / "recipes/configs/artmuse_sft.yaml"),
            "--train_file",
            str(data),
            "--eval_file",
            str(data),
            "--image_root",
            str(tmp_path),
            "--bf16",
            "false",
        ]
    )
    assert (training.learning_rate, training.max_steps, training.contrastive_weight) == (5e-5, 50000, 1.0)
    assert model.preset == "pretrained" and model.decoder_name_or_path == "Langboat/mengzi-t5-base"
    parser = TrlParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))  # a YAML's values stay as defaults
    script, training, model = parser.parse_args_and_config(
        args=[
            "--config",
            str(REPO / "recipes/configs/cococn_sft.yaml"),
            "--coco_train_annotations",
            str(data),
            "--coco_eval_annotations",
            str(data),
            "--coco_image_dir",
            str(tmp_path),
            "--bf16",
            "false",
        ]
    )
    assert script.dataset == "cococn" and training.max_steps == 50000


def test_model_folders_that_do_not_exist_or_hold_only_a_pickle_are_refused(tmp_path, tiny_model_and_processor):
    with pytest.raises(ValueError, match=rf"--model_name_or_path '{tmp_path / 'nothing'}': no such folder"):
        load_model_and_processor(TIPPoModelConfig(model_name_or_path=str(tmp_path / "nothing")))
    model, _ = tiny_model_and_processor
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):  # safetensors only, as the README says
        load_model_and_processor(TIPPoModelConfig(model_name_or_path=str(tmp_path)))


def test_max_target_length_sets_the_processors(tmp_path):
    _, _, model_args = TIPPoParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig)).parse_args_and_config(
        args=[
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--max_target_length",
            "16",
            "--tiny_pretrained_encoder",
            "false",
        ]
    )
    _, processor = load_model_and_processor(model_args)
    assert processor.max_target_length == 16
    assert processor.tokenize_references(["word " * 40]).shape[1] == 16


def test_the_benchmarks_base_size_has_the_papers_dimensions():
    t5 = t5_base_config()
    assert (t5.d_model, t5.num_layers, t5.num_decoder_layers, t5.num_heads, t5.d_ff, t5.vocab_size) == (
        768, 12, 12, 12, 3072, 32128,
    )  # fmt: skip
    clip = chinese_clip_vit_b16_config()
    assert (clip.vision_config.image_size, clip.vision_config.patch_size, clip.text_config.vocab_size) == (
        224,
        16,
        21128,
    )
    assert clip.projection_dim == 512
    with pytest.raises(ValueError, match="size must be one of tiny, base; got 'huge'"):
        build_tippo_by_size("huge")


def test_a_hub_model_that_cannot_be_had_is_one_line_naming_the_option():
    from tippo_rl.checkpoints import CheckpointError
    from tippo_rl.model_config import TIPPoModelConfig
    from tippo_rl.presets import load_model_and_processor

    # The tests run with HF_HUB_OFFLINE=1 (conftest), as a machine without network does.
    with pytest.raises(
        CheckpointError, match=r"--model_name_or_path 'someorg/no-such-model': not a local folder, .*HF_HUB_OFFLINE"
    ):
        load_model_and_processor(TIPPoModelConfig(model_name_or_path="someorg/no-such-model"))
    pretrained = TIPPoModelConfig(
        preset="pretrained", encoder_name_or_path="someorg/no-encoder", decoder_name_or_path="someorg/no-decoder"
    )
    with pytest.raises(CheckpointError, match="--encoder_name_or_path 'someorg/no-encoder', --decoder_name_or_path"):
        load_model_and_processor(pretrained)


# -- --preset beside --model_name_or_path (issue 24, item 12) ----------------------------------------------------


def test_a_preset_of_another_decoder_kind_than_the_saved_model_is_one_line_and_exit_2(tmp_path, saved_model):
    """The real recipe, a saved T5 model and `--preset tiny_causal`: refused while reading the options."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes/sft.py"), "--config", str(REPO / "recipes/configs/demo_sft.yaml")]
        + ["--preset", "tiny_causal", "--model_name_or_path", str(saved_model), "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"sft.py: error: --preset tiny_causal builds a causal decoder, but --model_name_or_path '{saved_model}' holds "
        "a t5 decoder (encoder-decoder); a saved model is loaded as it was saved, so drop --preset (or the config's "
        "`preset:`) to continue from it, or drop --model_name_or_path to build a fresh model from the preset"
    )
    assert not (tmp_path / "out").exists()


def test_a_preset_that_agrees_or_is_only_the_default_loads_the_saved_model(
    tmp_path, saved_model, tiny_causal_model_and_processor
):
    causal = tmp_path / "causal"
    tiny_causal_model_and_processor[0].save_pretrained(causal)
    tiny_causal_model_and_processor[1].save_pretrained(causal)
    # Unset (`tiny` only by default): the saved causal model, as saved.
    model, _ = load_model_and_processor(TIPPoModelConfig(model_name_or_path=str(causal)))
    assert not model.config.is_encoder_decoder
    for preset, folder in (("tiny_causal", causal), ("smollm2", causal), ("tiny", saved_model)):
        TIPPoModelConfig(model_name_or_path=str(folder), preset=preset)
    # As in a YAML config: `preset: tiny` (a T5) beside a causal model.
    with pytest.raises(
        ValueError, match=r"^--preset tiny builds a T5 \(encoder-decoder\) decoder, but .* holds a llama"
    ):
        TIPPoModelConfig(model_name_or_path=str(causal), preset="tiny")
    with pytest.raises(
        ValueError, match=r"^--preset pretrained builds a T5 .* \(--decoder_name_or_path 'Langboat/mengzi-t5-base'\)"
    ):
        TIPPoModelConfig(model_name_or_path=str(causal), preset="pretrained")
