"""Tests for tippo_rl.processing_tippo: batch layout (image padding, labels), image-count errors, save/load."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from tippo_rl import TIPPoProcessor


def solid(colour) -> Image.Image:
    return Image.new("RGB", (40, 24), colour)


def test_images_are_padded_to_the_batch_maximum_and_masked(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    pixel_values, image_mask = processor.images_to_pixels([[solid("red"), solid("blue")], [solid("green")]])
    assert pixel_values.shape == (2, 2, 3, 32, 32)  # resized to the tiny preset's 32×32
    assert image_mask.tolist() == [[True, True], [True, False]]
    assert torch.count_nonzero(pixel_values[1, 1]) == 0  # the padding slot is a zero image
    assert not torch.equal(pixel_values[0, 0], pixel_values[0, 1])  # red and blue stay distinct, in order
    single, _ = processor.images_to_pixels([[solid("green")]])
    torch.testing.assert_close(pixel_values[1, 0], single[0, 0])  # batching does not change an image


def test_grayscale_and_rgba_images_become_three_channels(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    pixel_values, _ = processor.images_to_pixels([[Image.new("L", (8, 8), 128), Image.new("RGBA", (8, 8))]])
    assert pixel_values.shape == (1, 2, 3, 32, 32)


def test_batch_fields_and_labels(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    references = ["in the garden there is a red circle.", "by the sea there is a blue square and a red circle."]
    batch = processor(["in the garden", ""], [[solid("red")], [solid("blue"), solid("red")]], references)
    assert set(batch) == {"pixel_values", "image_mask", "title_input_ids", "title_attention_mask", "labels"}
    assert batch["title_input_ids"].shape == batch["title_attention_mask"].shape
    assert batch["title_input_ids"][1, 0] == processor.title_tokenizer.cls_token_id  # empty title: [CLS] [SEP] only
    assert batch["title_attention_mask"][1].sum() == 2
    labels = batch["labels"]
    eos = processor.tokenizer.eos_token_id
    lengths = (labels != -100).sum(1)
    assert lengths[0] < lengths[1] == labels.shape[1]  # the shorter reference is padded ...
    assert (labels[0, lengths[0] :] == -100).all()  # ... with -100, ignored by the loss
    assert [labels[b, lengths[b] - 1].item() for b in range(2)] == [eos, eos]  # every reference ends in EOS
    assert processor.batch_decode(labels.clamp(min=0)) == references


def test_references_are_truncated_with_eos_last(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    labels = processor.tokenize_references(["in the city there is a red circle" * 50])
    assert labels.shape == (1, processor.max_target_length)
    assert labels[0, -1] == processor.tokenizer.eos_token_id


@pytest.mark.parametrize("counts, bad_sample, bad_count", [([2, 0], 1, 0), ([6, 1], 0, 6)])
def test_sample_with_zero_or_too_many_images_is_rejected(tiny_model_and_processor, counts, bad_sample, bad_count):
    processor = tiny_model_and_processor[1]
    images = [[solid("red")] * count for count in counts]
    with pytest.raises(ValueError, match=f"sample {bad_sample} has {bad_count} images; TIPPo takes 1 to 5"):
        processor(["a", "b"], images)


def test_save_load_round_trip_gives_identical_batches(tmp_path, tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    processor.save_pretrained(tmp_path)
    loaded = TIPPoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    args = (
        ["in the forest", "by the sea"],
        [[solid("red"), solid((10, 200, 30))], [solid("purple")]],
        ["in the forest there is a green circle.", "by the sea there is a purple triangle and a red square."],
    )
    expected, batch = processor(*args), loaded(*args)
    assert batch.keys() == expected.keys()
    for name in expected:
        assert torch.equal(batch[name], expected[name]), name
    # The decoder's tokenizer sits at the top of the folder, so plain AutoTokenizer finds it.
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == processor.tokenizer.get_vocab()


def test_paths_pil_images_flat_lists_and_single_images_give_the_same_batch(tiny_model_and_processor, tmp_path):
    processor = tiny_model_and_processor[1]
    solid("red").save(tmp_path / "a.png")
    solid("blue").save(tmp_path / "b.png")
    expected = processor(["t"], [[solid("red"), solid("blue")]])
    for images in ([[str(tmp_path / "a.png"), tmp_path / "b.png"]], [solid("red"), str(tmp_path / "b.png")]):
        batch = processor("t", images)  # one sample: a title string, a flat list
        assert all(torch.equal(batch[key], expected[key]) for key in expected)
    assert processor("t", tmp_path / "a.png")["image_mask"].tolist() == [[True]]


@pytest.mark.parametrize(
    ("titles", "images", "message"),
    [
        (["t", "u"], ["{a}", "{a}"], "a flat list of 2 images, which is one sample's, but there are 2 titles"),
        (["t", "u"], [["{a}"]], "got 2 titles but 1 lists of images"),
        (["t"], [["{a}", 7]], "sample 0, image 1: expected a PIL image or a path, got int"),
        (["t"], [["{missing}"]], "sample 0, image 0: image '.*missing.png' does not exist"),
        (["t"], 3, "images must be one list of images .* per sample, got int"),
    ],
)
def test_images_that_do_not_fit_are_named(tiny_model_and_processor, tmp_path, titles, images, message):
    solid("red").save(tmp_path / "a.png")

    def fill(value):
        return (
            value.format(a=tmp_path / "a.png", missing=tmp_path / "missing.png") if isinstance(value, str) else value
        )

    images = (
        [[fill(v) for v in sample] if isinstance(sample, list) else fill(sample) for sample in images]
        if isinstance(images, list)
        else images
    )
    with pytest.raises(ValueError, match=message):
        tiny_model_and_processor[1](titles, images)


def test_auto_processor_loads_a_saved_tippo_model_as_its_processor(saved_model):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(saved_model)
    assert isinstance(processor, TIPPoProcessor)
    assert processor.to_dict() == TIPPoProcessor.from_pretrained(saved_model).to_dict()


def pipeline_texts(task, folder, **inputs):
    from transformers import logging, pipeline

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # transformers 5.x's "image-to-text has been removed" warning is a logging error
    try:
        pipe = pipeline(task, model=str(folder))
    finally:
        logging.set_verbosity(verbosity)
    return [row["generated_text"] for row in pipe(**inputs, max_new_tokens=6, return_full_text=False)]


def generate_texts(folder, titles, images):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    return processor.batch_decode(model.generate(**processor(titles=titles, images=images), max_new_tokens=6))


@pytest.mark.parametrize("decoder", ["t5", "llama"])
def test_image_text_to_text_pipeline_on_a_saved_model_gives_generate_s_texts(
    decoder, saved_model, tiny_causal_model_and_processor, tmp_path
):
    """The title is the pipeline's `text`, one sample's images its `images`; a batch is lists of both."""
    folder = saved_model
    if decoder == "llama":
        folder = tmp_path / "causal"
        for part in tiny_causal_model_and_processor:
            part.save_pretrained(folder)
    images = [[solid("red"), solid("blue")], [solid("green")]]
    expected = generate_texts(folder, ["in the garden", "a walk"], images)
    assert len(set(expected)) == 2  # the texts depend on the inputs, so the comparison below proves something
    one = pipeline_texts("image-text-to-text", folder, images=images[0], text="in the garden")
    assert one == expected[:1]
    batch = pipeline_texts("image-text-to-text", folder, images=images, text=["in the garden", "a walk"])
    assert batch == expected


def test_image_to_text_pipeline_with_an_empty_title(saved_model):
    """transformers 5 maps `image-to-text` onto `image-text-to-text`, which needs `text`: an empty title is `text=""`."""
    expected = generate_texts(saved_model, [""], [[solid("red")]])
    assert pipeline_texts("image-to-text", saved_model, images=solid("red"), text="") == expected


def test_a_decoder_prompt_is_refused(saved_model, tiny_model_varied_outputs, tiny_model_and_processor):
    batch = tiny_model_and_processor[1](text="t", images=[solid("red")])
    assert batch["decoder_input_ids"].shape == (1, 0)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        tiny_model_varied_outputs.generate(**{**batch, "decoder_input_ids": torch.ones(1, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="titles= or as text="):
        tiny_model_and_processor[1](titles="a", text="b", images=[solid("red")])
