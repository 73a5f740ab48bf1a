"""Tests for tippo_rl.modeling_tippo: each equation on a tiny hand-computed case, the fusion layout, save/load,
the frozen encoder and the model's bad-input errors. Equation numbers refer to shared/method/TIPPo.md."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from tippo_rl import (
    TIPPoConfig,
    TIPPoDataCollator,
    TIPPoForConditionalGeneration,
    TIPPoModel,
    build_tiny_tippo,
    load_artmuse,
)
from tippo_rl.data_collator import model_inputs
from tippo_rl.modeling_tippo import (
    TIPPoDifferenceOperator,
    TIPPoDualAlignmentAttention,
    prototype_contrastive_loss,
    visual_prototype,
)


LN3 = math.log(3.0)


def width_config(d: int) -> TIPPoConfig:
    """A config whose only relevant field is d (the decoder width) — enough to build DAA and DO."""
    return TIPPoConfig(decoder_config={"d_model": d}, prefix_length=1)


def demo_batch(processor, dataset_dir, rows=4):
    dataset = load_artmuse(dataset_dir / "train.jsonl")
    return TIPPoDataCollator(processor)([dataset[i] for i in range(rows)])


# ------------------------------------------------------------------------------------------- prototype S^P


def test_visual_prototype_is_mean_of_real_images_only():
    # (batch 3, N 3, k 1, d 2); padding slots hold large garbage that would show up in any unmasked mean.
    signals = torch.tensor(
        [
            [[[1.0, 2.0]], [[3.0, 6.0]], [[100.0, -100.0]]],  # 2 real images → (1+3)/2, (2+6)/2
            [[[5.0, 7.0]], [[9.0, 9.0]], [[-50.0, 50.0]]],  # 1 real image → itself
            [[[0.0, 3.0]], [[3.0, 0.0]], [[3.0, 3.0]]],  # 3 real images → (0+3+3)/3, (3+0+3)/3
        ]
    )
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    expected = torch.tensor([[[2.0, 4.0]], [[5.0, 7.0]], [[2.0, 2.0]]])
    torch.testing.assert_close(visual_prototype(signals, mask), expected)


# ------------------------------------------------------------------------------------------ DAA, Eq. 1–2


def hand_set_daa() -> TIPPoDualAlignmentAttention:
    """d = 2 (so 1/√d_k = 1/√2); W^TQ = W^TIK = W^PIK = I, W^PQ swaps the two axes, W^V = diag(1, 2)."""
    daa = TIPPoDualAlignmentAttention(width_config(2))
    identity, swap = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        daa.text_query.weight.copy_(identity)
        daa.text_image_key.weight.copy_(identity)
        daa.prototype_query.weight.copy_(swap)
        daa.prototype_image_key.weight.copy_(identity)
        daa.value.weight.copy_(torch.diag(torch.tensor([1.0, 2.0])))
    return daa


@pytest.mark.parametrize(
    "m, M, expected",
    [
        # m = 0: λ1 = 0, pure text-image map [[3/4, 1/4], [1/4, 3/4]] times V = diag(1, 2).
        (0, 4, [[0.75, 0.5], [0.25, 1.5]]),
        # m = M: λ1 = 1, pure prototype-image map [[1/4, 3/4], [3/4, 1/4]] times V.
        (4, 4, [[0.25, 1.5], [0.75, 0.5]]),
        # m = 1 of 4: ¼·prototype map + ¾·text map = [[5/8, 3/8], [3/8, 5/8]], times V.
        (1, 4, [[0.625, 0.75], [0.375, 1.25]]),
    ],
)
def test_dual_alignment_attention_eq2(m, M, expected):
    # k = 2, d = 2, one sample with one image S_1^I = I (so K^T = K^P = I and V = diag(1, 2)).
    # S^T = S^P = √2·ln3·I: the text scores Q^T K^Tᵀ/√2 = ln3·I give softmax rows (3/4, 1/4) and (1/4, 3/4);
    # W^PQ swaps, so the prototype scores are ln3·swap and its rows are (1/4, 3/4) and (3/4, 1/4).
    c = math.sqrt(2.0) * LN3
    text_signal = c * torch.eye(2)[None]  # (batch 1, k 2, d 2)
    prototype = c * torch.eye(2)[None]
    image_signals = torch.eye(2)[None, None]  # (batch 1, N 1, k 2, d 2)
    lambda1 = torch.tensor([m / M])
    out = hand_set_daa()(text_signal, prototype, image_signals, lambda1)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor(expected))


def test_model_uses_its_lambda1_buffer(tiny_model_and_processor):
    model = copy.deepcopy(tiny_model_and_processor[0])
    features = dict(
        image_mask=torch.tensor([[True, True]]),
        image_features=torch.randn(1, 2, 64),
        title_features=torch.randn(1, 64),
    )
    at_start = model.encode_prefix(**features).inputs_embeds
    model.set_daa_lambda1(1.0)
    assert model.daa_lambda1.tolist() == [1.0]
    at_end = model.encode_prefix(**features).inputs_embeds
    k = model.config.prefix_length
    torch.testing.assert_close(at_start[:, :k], at_end[:, :k])  # S^T does not depend on λ1
    assert not torch.allclose(at_start[:, k : 2 * k], at_end[:, k : 2 * k])  # S_1^A does


# ------------------------------------------------------------------------------------------- DO, Eq. 3–4


def test_difference_operator_eq4():
    # S^I = (3, 1) and (1, 3), S^P = (2, 2): differences (1, −1) and (−1, 1).
    # π_D(x) = 2x + (1, −1), so S^D = x + π_D(x) = 3x + (1, −1) = (4, −4) and (−2, 2).
    operator = TIPPoDifferenceOperator(width_config(2))
    with torch.no_grad():
        operator.projection.weight.copy_(2 * torch.eye(2))
        operator.projection.bias.copy_(torch.tensor([1.0, -1.0]))
    image_signals = torch.tensor([[[[3.0, 1.0]], [[1.0, 3.0]]]])  # (batch 1, N 2, k 1, d 2)
    prototype = torch.tensor([[[2.0, 2.0]]])  # (batch 1, k 1, d 2)
    torch.testing.assert_close(operator(image_signals, prototype), torch.tensor([[[[4.0, -4.0]], [[-2.0, 2.0]]]]))


def test_difference_operator_with_zero_projection_is_the_raw_difference():
    operator = TIPPoDifferenceOperator(width_config(2))
    with torch.no_grad():
        operator.projection.weight.zero_()
        operator.projection.bias.zero_()
    image_signals = torch.tensor([[[[3.0, 1.0]], [[1.0, 3.0]]]])
    prototype = torch.tensor([[[2.0, 2.0]]])
    torch.testing.assert_close(operator(image_signals, prototype), torch.tensor([[[[1.0, -1.0]], [[-1.0, 1.0]]]]))


# ---------------------------------------------------------------------------------------------- fusion

# Two samples, N = 3 slots: sample 0 has 3 images, sample 1 has 1 (slots 2 and 3 are padding).
FUSION_MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_fusion_order_and_mask(tiny_model_and_processor):
    model = tiny_model_and_processor[0]
    k = model.config.prefix_length
    assert k == 2
    image_features, title_features = torch.randn(2, 3, 64), torch.randn(2, 64)
    prefix = model.encode_prefix(FUSION_MASK, image_features=image_features, title_features=title_features)

    with torch.no_grad():
        text = model.text_adapter(title_features)  # S^T (2, k, d)
        images = model.image_adapter(image_features)  # S^I (2, 3, k, d)
        prototype = torch.stack([images[0].mean(0), images[1, 0]])  # S^P by hand: real images only
        augmented = model.dual_alignment_attention(text, prototype, images, model.daa_lambda1)  # S^A
        differential = model.difference_operator(images, prototype)  # S^D
    expected = torch.cat(
        [
            text,
            augmented[:, 0],
            differential[:, 0],
            augmented[:, 1],
            differential[:, 1],
            augmented[:, 2],
            differential[:, 2],
        ],
        dim=1,
    )
    assert prefix.inputs_embeds.shape == (2, k + 3 * 2 * k, 64)
    torch.testing.assert_close(prefix.inputs_embeds, expected)
    # [S^T (k) | S_1^A S_1^D (2k) | S_2^A S_2^D (2k) | S_3^A S_3^D (2k)]
    assert prefix.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    torch.testing.assert_close(prefix.image_signals, images)
    assert prefix.image_mask.tolist() == FUSION_MASK.tolist()


def test_tip_ablation_fusion_is_text_then_raw_image_signals():
    model, _ = build_tiny_tippo(use_daa_do=False)
    model.eval()
    assert not hasattr(model, "dual_alignment_attention") and not hasattr(model, "difference_operator")
    image_features, title_features = torch.randn(2, 3, 64), torch.randn(2, 64)
    prefix = model.encode_prefix(FUSION_MASK, image_features=image_features, title_features=title_features)
    with torch.no_grad():
        text, images = model.text_adapter(title_features), model.image_adapter(image_features)
    torch.testing.assert_close(
        prefix.inputs_embeds, torch.cat([text, images[:, 0], images[:, 1], images[:, 2]], dim=1)
    )
    # [S^T (k) | S_1^I (k) | S_2^I (k) | S_3^I (k)]
    assert prefix.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]]


def test_image_slot_embeddings_add_one_vector_per_slot_to_that_images_tokens(tmp_path):
    """`image_slot_embeddings`: slot i's 2k fusion tokens get e_i added, S^T gets nothing; off, the module is absent."""
    model, _ = build_tiny_tippo(image_slot_embeddings=True)
    model.eval()
    plain, _ = build_tiny_tippo()
    assert not hasattr(plain, "image_slot_embedding")
    plain.load_state_dict(
        {key: value for key, value in model.state_dict().items() if "image_slot_embedding" not in key}
    )
    assert model.image_slot_embedding.weight.shape == (model.config.max_images, 64)
    k = model.config.prefix_length
    image_features, title_features = torch.randn(2, 3, 64), torch.randn(2, 64)
    with torch.no_grad():
        slots = model.encode_prefix(FUSION_MASK, image_features=image_features, title_features=title_features)
        bare = plain.eval().encode_prefix(FUSION_MASK, image_features=image_features, title_features=title_features)
        offsets = torch.cat(
            [torch.zeros(k, 64), model.image_slot_embedding.weight[:3].repeat_interleave(2 * k, dim=0)]
        )
    torch.testing.assert_close(slots.inputs_embeds, bare.inputs_embeds + offsets)
    assert slots.attention_mask.tolist() == bare.attention_mask.tolist()
    model.save_pretrained(tmp_path)
    loaded = TIPPoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.image_slot_embeddings is True
    assert torch.equal(loaded.image_slot_embedding.weight, model.image_slot_embedding.weight)


def test_padding_image_slots_do_not_change_outputs(tiny_model_varied_outputs):
    model = tiny_model_varied_outputs
    image_features, title_features = torch.randn(2, 3, 64), torch.randn(2, 64)
    garbage = image_features.clone()
    garbage[1, 1:] = 1000 * torch.randn(2, 64)
    decoder_input_ids = torch.tensor([[0, 5, 6], [0, 7, 8]])
    with torch.no_grad():
        clean = model(
            image_mask=FUSION_MASK,
            image_features=image_features,
            title_features=title_features,
            decoder_input_ids=decoder_input_ids,
        ).logits
        noisy = model(
            image_mask=FUSION_MASK,
            image_features=garbage,
            title_features=title_features,
            decoder_input_ids=decoder_input_ids,
        ).logits
    torch.testing.assert_close(clean, noisy)


# ----------------------------------------------------------------------------------------- L_C, Eq. 5


def contrastive_case(layout):
    """Sample 0: images a = (2, 0), b = (0, 1). Sample 1: one image c = (−1, 0). Padding slots hold garbage.

    layout (k, d) = (1, 2) or (2, 1): the loss flattens S_i^I to k·d, so both give the same vectors.
    """
    signals = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [5.0, -7.0]]])  # (batch 2, N 2, k·d 2)
    mask = torch.tensor([[True, True], [True, False]])
    return signals.reshape(2, 2, *layout), mask


def expected_contrastive_loss(tau: float) -> float:
    # Prototypes: p_0 = (a + b)/2 = (1, 0.5); sample 1 has one image, so p_1 = batch mean (a + b + c)/3 = (1/3, 1/3).
    # cos(a, p_0) = 2/√5, cos(b, p_0) = 1/√5, cos(c, p_1) = −1/√2.
    # Pairwise cosines: cos(a, b) = 0, cos(a, c) = −1, cos(b, c) = 0, and 1 with itself (j = i is in the sum).
    e = lambda x: math.exp(x / tau)  # noqa: E731
    loss_a = math.log(e(1) + e(0) + e(-1)) - (2 / math.sqrt(5)) / tau
    loss_b = math.log(e(0) + e(1) + e(0)) - (1 / math.sqrt(5)) / tau
    loss_c = math.log(e(-1) + e(0) + e(1)) + (1 / math.sqrt(2)) / tau
    return (loss_a + loss_b + loss_c) / 3


@pytest.mark.parametrize("layout", [(1, 2), (2, 1)])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_prototype_contrastive_loss_eq5(layout, tau):
    signals, mask = contrastive_case(layout)
    loss = prototype_contrastive_loss(signals, mask, temperature=tau)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected_contrastive_loss(tau), rel=1e-6)


def test_prototype_contrastive_loss_batch_of_one_is_eq5():
    # Only sample 0: p = (1, 0.5), the sum over j runs over a and b only.
    signals = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    loss = prototype_contrastive_loss(signals, torch.tensor([[True, True]]))
    loss_a = math.log(math.e + 1) - 2 / math.sqrt(5)
    loss_b = math.log(1 + math.e) - 1 / math.sqrt(5)
    assert loss.item() == pytest.approx((loss_a + loss_b) / 2, rel=1e-6)


def test_prototype_contrastive_loss_own_images_negatives_is_eq5_as_written():
    # `own_images`: j runs over the sample's own images only. a, b: {a, b}; c (one image): {c} alone.
    signals, mask = contrastive_case((1, 2))
    loss = prototype_contrastive_loss(signals, mask, negatives="own_images")
    loss_a = math.log(math.e + 1) - 2 / math.sqrt(5)  # cos(a, a) = 1, cos(a, b) = 0
    loss_b = math.log(1 + math.e) - 1 / math.sqrt(5)
    loss_c = math.log(math.e) + 1 / math.sqrt(2)  # only cos(c, c) = 1; its positive is still the batch mean
    assert loss.item() == pytest.approx((loss_a + loss_b + loss_c) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="negatives must be `batch` or `own_images`"):
        prototype_contrastive_loss(signals, mask, negatives="everything")


def test_prototype_contrastive_loss_other_processes_signals_join_every_denominator():
    # One more negative o = (0, −3) from another process: cos(a, o) = 0, cos(b, o) = −1, cos(c, o) = 0.
    signals, mask = contrastive_case((1, 2))
    other = torch.tensor([[[0.0, -3.0]]])  # (M 1, k 1, d 2)
    loss = prototype_contrastive_loss(signals, mask, other_signals=other)
    e = math.exp
    loss_a = math.log(e(1) + e(0) + e(-1) + e(0)) - 2 / math.sqrt(5)
    loss_b = math.log(e(0) + e(1) + e(0) + e(-1)) - 1 / math.sqrt(5)
    loss_c = math.log(e(-1) + e(0) + e(1) + e(0)) + 1 / math.sqrt(2)
    assert loss.item() == pytest.approx((loss_a + loss_b + loss_c) / 3, rel=1e-6)
    torch.testing.assert_close(
        prototype_contrastive_loss(signals, mask, other_signals=other[:0]), prototype_contrastive_loss(signals, mask)
    )


def test_prototype_contrastive_loss_ignores_padding_slots():
    signals, mask = contrastive_case((1, 2))
    other = signals.clone()
    other[1, 1] = torch.tensor([[-300.0, 42.0]])
    torch.testing.assert_close(prototype_contrastive_loss(signals, mask), prototype_contrastive_loss(other, mask))


# ----------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir):
    model = copy.deepcopy(tiny_model_varied_outputs)
    model.set_daa_lambda1(0.375)  # a value no config default or init would give
    inputs = model_inputs(demo_batch(tiny_model_and_processor[1], demo_dataset_dir))
    decoder_input_ids = torch.tensor([[0, 5, 6, 7]] * 4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "pytorch_model.bin").exists()

    assert isinstance(AutoConfig.from_pretrained(tmp_path), TIPPoConfig)
    auto_classes = (AutoModel, AutoModelForImageTextToText)  # the headless name, and the one for image + text → text
    for loaded in (TIPPoModel.from_pretrained(tmp_path), *(auto.from_pretrained(tmp_path) for auto in auto_classes)):
        assert type(loaded) is TIPPoForConditionalGeneration is TIPPoModel
        loaded.eval()
        assert loaded.daa_lambda1.tolist() == [0.375]
        with torch.no_grad():
            expected_logits = model(**inputs, decoder_input_ids=decoder_input_ids).logits
            logits = loaded(**inputs, decoder_input_ids=decoder_input_ids).logits
        assert torch.equal(logits, expected_logits)
        expected_ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        assert (expected_ids[:, 1:] != model.config.pad_token_id).any()  # not a vacuous all-padding comparison
        assert torch.equal(loaded.generate(**inputs, max_new_tokens=8, do_sample=False), expected_ids)


# ------------------------------------------------------------------------------------------ frozen φ


def test_encoder_is_frozen_during_training(tiny_model_and_processor, demo_dataset_dir):
    model, processor = copy.deepcopy(tiny_model_and_processor[0]), tiny_model_and_processor[1]
    model.train()
    assert model.language_model.training and model.text_adapter.training
    assert not any(module.training for module in model.encoder.modules())
    assert not any(parameter.requires_grad for parameter in model.encoder.parameters())

    batch = demo_batch(processor, demo_dataset_dir)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    outputs = model(**model_inputs(batch), labels=batch["labels"])
    outputs.loss.backward()  # L_SFT = L_NTP + L_C (α = 1)
    assert all(parameter.grad is None for parameter in model.encoder.parameters())
    assert all(parameter.grad is not None for parameter in model.image_adapter.parameters())
    optimizer.step()

    after = model.state_dict()
    for name in before:
        if name.startswith("encoder."):
            assert torch.equal(after[name], before[name]), name
    for prefix in ("text_adapter.", "image_adapter.", "difference_operator.", "dual_alignment_attention.value"):
        changed = [name for name in before if name.startswith(prefix) and not torch.equal(after[name], before[name])]
        assert changed, f"no parameter under {prefix} changed"


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_forward_loss_is_ntp_plus_alpha_times_contrastive(tiny_model_and_processor, demo_dataset_dir, alpha):
    model, processor = copy.deepcopy(tiny_model_and_processor[0]).eval(), tiny_model_and_processor[1]
    model.config.contrastive_weight, model.config.contrastive_temperature = alpha, 0.7
    batch = demo_batch(processor, demo_dataset_dir)
    outputs = model(**model_inputs(batch), labels=batch["labels"])
    labels = batch["labels"]
    ntp = torch.nn.functional.cross_entropy(outputs.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(outputs.ntp_loss, ntp)  # L_NTP: the mean over the label tokens
    if alpha == 0:
        assert outputs.contrastive_loss is None and torch.equal(outputs.loss, outputs.ntp_loss)
    else:
        contrastive = prototype_contrastive_loss(outputs.image_signals, outputs.image_mask, 0.7)  # Eq. 5
        torch.testing.assert_close(outputs.contrastive_loss, contrastive)
        torch.testing.assert_close(outputs.loss, ntp + alpha * contrastive)  # L_SFT
    decoder_input_ids = model.language_model._shift_right(labels)
    assert model(**model_inputs(batch), decoder_input_ids=decoder_input_ids).loss is None  # no labels, no loss


# ----------------------------------------------------------------------------------------- bad inputs


def test_config_defaults_build_and_decoding_starts_from_pad():
    # transformers 5's bare T5Config() has no decoder_start_token_id; T5 (and generate) need one.
    config = TIPPoConfig()
    assert config.decoder_config.decoder_start_token_id == config.decoder_config.pad_token_id == 0
    assert config.decoder_start_token_id == 0
    assert (config.prefix_length, config.max_images, config.daa_lambda1) == (4, 5, 0.0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(prefix_length=0), "prefix_length"),
        (dict(max_images=0), "max_images"),
        (dict(daa_lambda1=1.5), "daa_lambda1"),
        (dict(daa_lambda1=-0.1), "daa_lambda1"),
    ],
)
def test_config_rejects_bad_values(overrides, field):
    with pytest.raises(ValueError, match=field):
        TIPPoConfig(**overrides)


def test_set_daa_lambda1_rejects_values_outside_unit_interval(tiny_model_and_processor):
    model = copy.deepcopy(tiny_model_and_processor[0])
    model.set_daa_lambda1(0.25)
    with pytest.raises(ValueError, match=r"λ1 must lie in \[0, 1\], got 2"):
        model.set_daa_lambda1(2)
    assert model.daa_lambda1.tolist() == [0.25]  # unchanged


def test_forward_rejects_a_sample_without_images(tiny_model_and_processor):
    model = tiny_model_and_processor[0]
    with pytest.raises(ValueError, match="at least one image"):
        model.encode_prefix(
            torch.tensor([[True, False], [False, False]]),
            image_features=torch.randn(2, 2, 64),
            title_features=torch.randn(2, 64),
        )


def test_forward_rejects_missing_inputs(tiny_model_and_processor):
    model = tiny_model_and_processor[0]
    with pytest.raises(ValueError, match="image_mask"):
        model.encode_prefix(None, image_features=torch.randn(1, 1, 64), title_features=torch.randn(1, 64))
    with pytest.raises(ValueError, match="pixel_values"):
        model.encode_prefix(torch.tensor([[True]]), image_features=torch.randn(1, 1, 64))


def test_single_image_prototype_running_mean_is_moved_in_training_and_fixed_at_inference():
    """`single_image_prototype: running_mean`: one-image samples use m as S^P; m = the first batch's mean image
    signal, then μ·m + (1 − μ)·mean; evaluation reads m without moving it. Multi-image samples keep their own mean."""
    model, _ = build_tiny_tippo(single_image_prototype="running_mean", prototype_momentum=0.5)
    plain, _ = build_tiny_tippo()
    assert not hasattr(plain, "prototype_running_mean")
    mask = torch.tensor([[True, True], [True, False]])
    signals = torch.randn(2, 2, 2, 64)
    first = (signals[0, 0] + signals[0, 1] + signals[1, 0]) / 3  # the batch's mean real image signal
    model.train()
    prototype = model.single_image_prototype(visual_prototype(signals, mask), signals, mask)
    torch.testing.assert_close(model.prototype_running_mean, first)
    torch.testing.assert_close(prototype[1], first)  # the one-image sample
    torch.testing.assert_close(prototype[0], (signals[0, 0] + signals[0, 1]) / 2)  # its own mean
    later = torch.randn(2, 2, 2, 64)
    model.single_image_prototype(visual_prototype(later, mask), later, mask)
    torch.testing.assert_close(
        model.prototype_running_mean, 0.5 * first + 0.5 * (later[0, 0] + later[0, 1] + later[1, 0]) / 3
    )
    fixed = model.prototype_running_mean.clone()
    model.eval()
    again = model.single_image_prototype(visual_prototype(later, mask), later, mask)
    torch.testing.assert_close(model.prototype_running_mean, fixed)
    torch.testing.assert_close(again[1], fixed)
    assert "prototype_running_mean" in model.state_dict()
    with pytest.raises(ValueError, match="single_image_prototype must be `own` or `running_mean`"):
        TIPPoConfig(single_image_prototype="batch")


def test_daa_projection_elementwise_is_the_paper_s_w_odot_s_and_trains(tmp_path):
    """`daa_projection: elementwise`: each of DAA's five projections is a trainable k×d array times the signal
    (starting at ones, so W ⊙ S = S); the model trains and saves/loads with it; `linear` stays the default."""
    from tippo_rl import build_tiny_tippo
    from tippo_rl.modeling_tippo import ElementwiseProjection

    default, _ = build_tiny_tippo(seed=0, pretrained_encoder=False)
    assert (
        isinstance(default.dual_alignment_attention.text_query, torch.nn.Linear)
        and default.config.daa_projection == "linear"
    )
    model, processor = build_tiny_tippo(seed=0, pretrained_encoder=False, daa_projection="elementwise")
    daa = model.dual_alignment_attention
    for name in ("text_query", "prototype_query", "text_image_key", "prototype_image_key", "value"):
        projection = getattr(daa, name)
        assert isinstance(projection, ElementwiseProjection)
        assert projection.weight.shape == (model.config.prefix_length, model.config.hidden_size)
        assert bool((projection.weight == 1).all())
    signal = torch.randn(2, model.config.prefix_length, model.config.hidden_size)
    torch.testing.assert_close(daa.value(signal), signal)
    from PIL import Image

    batch = processor(
        titles=["a day by the sea"], images=[[Image.new("RGB", (32, 32), "red")]], references=["by the sea."]
    )
    loss = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"]).loss
    loss.backward()
    assert daa.value.weight.grad is not None and daa.value.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.daa_projection == "elementwise" and isinstance(
        loaded.dual_alignment_attention.value, ElementwiseProjection
    )
