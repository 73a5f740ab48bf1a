"""Configuration of TIPPo (Text-Image-Prototype guided generation)."""

from __future__ import annotations

from transformers import AutoConfig, ChineseCLIPConfig, PretrainedConfig, T5Config
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


CONTRASTIVE_NEGATIVES = ("batch", "own_images")


def check_contrastive_loss_settings(weight: float, temperature: float, negatives: str, owner: str = "") -> None:
    """Raise, naming the option, unless α ≥ 0, τ > 0 and the negatives are a known reading of Eq. 5."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"{owner}contrastive_weight (α) must be a number ≥ 0, got {weight!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"{owner}contrastive_temperature (τ) must be a number > 0, got {temperature!r}")
    if negatives not in CONTRASTIVE_NEGATIVES:
        raise ValueError(f"{owner}contrastive_negatives must be `batch` or `own_images`, got {negatives!r}")


DAA_PROJECTIONS = ("linear", "elementwise")  # DAA's W·S (default) or the paper's W ⊙ S


class TIPPoConfig(PretrainedConfig):
    r"""
    Configuration of a [`TIPPoForConditionalGeneration`] (alias `TIPPoForConditionalGeneration`): a frozen Chinese-CLIP encoder φ, two adapters, the visual prototype,
    Dual Alignment Attention (DAA), the Difference Operator (DO) and a language model: T5 (the paper's) or any causal LM.

    Names follow `shared/method/TIPPo.md`.

    Args:
        encoder_config (`ChineseCLIPConfig` or `dict`):
            The frozen multi-modal encoder φ. Its `projection_dim` is d_φ.
        decoder_config (`T5Config`, any causal-LM config, or `dict`):
            The language model: T5 (the default, encoder-decoder: S^F is its encoder's input) or a causal LM that
            `AutoModelForCausalLM` builds (Llama, Qwen2, SmolLM2, …: S^F is the prefix of its `inputs_embeds`, followed
            by the prompt tokens). A `dict` names its kind by `model_type` (default `t5`). Its `hidden_size` is d, the
            width of every TIPPo signal.
        prefix_length (`int`, defaults to 4):
            k: how many decoder tokens one φ vector becomes (S^T, S_i^I ∈ R^{k×d}).
        adapter_hidden_size (`int`, *optional*):
            Hidden width of the two-layer adapters π_T and π_V (ClipCap-style MLP). Defaults to
            `(d_φ + k·d) // 2`.
        max_images (`int`, defaults to 5):
            N_max: the most images one sample may have (ArtMuse: 3–5, COCO-CN: 1).
        use_daa_do (`bool`, defaults to `True`):
            `False` gives the paper's "TIP" ablation: no DAA, no DO, decoder input [S^T; S_1^I; …; S_N^I].
        image_slot_embeddings (`bool`, defaults to `False`):
            Not in the paper. A learned vector per image slot (position 1…N_max), added to that image's tokens in the
            fusion S^F, so the decoder knows which image a token came from and how many images there are. Without
            it the only order signal is T5's relative attention over the prefix. The paper's model is `False`; the
            embedded default turns it on (its references describe the images in order: README).
        daa_projection (`str`, defaults to `"linear"`):
            How DAA's W^TQ, W^PQ, W^TIK, W^PIK and W^V act on a signal (Eq. 1). `linear`: a d×d matrix, S·W (the
            attention's usual projection; a deviation from the paper's text). `elementwise`: the paper as written,
            W ⊙ S, W a trainable k×d array (initialised to ones).
        single_image_prototype (`str`, defaults to `"own"`):
            S^P of a sample with one image. `own` (the paper's mean over the sample's images): S^P = S^I, so S^D is
            π_D's constant bias and DAA's prototype map is trivial. `running_mean`: a running mean of all real image
            signals seen in training (momentum `prototype_momentum`, saved with the model and fixed at inference), so
            a lone image is compared with what images usually look like, as L_C's batch-mean prototype does (§2.2).
        prototype_momentum (`float`, defaults to 0.99):
            Momentum of the `running_mean` prototype: m ← momentum·m + (1 − momentum)·(the batch's mean image signal).
        daa_lambda1 (`float`, defaults to 0.0):
            λ1 of Eq. 2 at construction. SFT sets it every step (`daa_lambda_schedule`: m/M, or a constant); the RL
            trainers keep the starting model's value by default (`hold`) or set m/M of the RL stage every iteration
            (`linear`). The model saves the last value as a buffer and uses it at inference.
        contrastive_weight (`float`, defaults to 1.0):
            α in the loss `forward` returns with `labels`: L_SFT = L_NTP + α·L_C (Eq. 5; paper: 1). 0: L_NTP alone.
            The SFT trainer always overwrites it, τ and the negatives with its own `contrastive_*` settings.
        contrastive_temperature (`float`, defaults to 1.0):
            τ of L_C (paper: 1).
        contrastive_negatives (`str`, defaults to `"batch"`):
            Which image signals L_C's denominator sums over: `batch` (every real image of the batch, the method notes'
            reading) or `own_images` (the sample's own images, Eq. 5 as written).
        freeze_encoder (`bool`, defaults to `True`):
            φ is frozen in the paper. Kept as a switch for experiments.
        encoder_name_or_path, decoder_name_or_path (`str`, *optional*):
            The checkpoints φ and the decoder came from (recorded for model cards; `None` for configs built from
            scratch, such as the tiny preset).
    """

    model_type = "tippo"
    sub_configs = {"encoder_config": ChineseCLIPConfig, "decoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config: ChineseCLIPConfig | dict | None = None,
        decoder_config: PretrainedConfig | dict | None = None,
        prefix_length: int = 4,
        adapter_hidden_size: int | None = None,
        max_images: int = 5,
        use_daa_do: bool = True,
        image_slot_embeddings: bool = False,
        single_image_prototype: str = "own",
        prototype_momentum: float = 0.99,
        daa_projection: str = "linear",
        daa_lambda1: float = 0.0,
        contrastive_weight: float = 1.0,
        contrastive_temperature: float = 1.0,
        contrastive_negatives: str = "batch",
        freeze_encoder: bool = True,
        encoder_name_or_path: str | None = None,
        decoder_name_or_path: str | None = None,
        **kwargs,
    ):
        if encoder_config is None:
            encoder_config = ChineseCLIPConfig()
        elif isinstance(encoder_config, dict):
            encoder_config = ChineseCLIPConfig(**encoder_config)
        if decoder_config is None:
            decoder_config = T5Config()
        elif isinstance(decoder_config, dict):
            decoder_config = dict(decoder_config)
            decoder_config = CONFIG_MAPPING[decoder_config.pop("model_type", "t5")](**decoder_config)
        if decoder_config.is_encoder_decoder and getattr(decoder_config, "decoder_start_token_id", None) is None:
            # T5 starts decoding from the pad token; transformers 5's bare `T5Config()` leaves the field unset.
            decoder_config.decoder_start_token_id = decoder_config.pad_token_id
        self.encoder_config = encoder_config
        self.decoder_config = decoder_config

        for name, value in (("prefix_length", prefix_length), ("max_images", max_images)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TIPPoConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(daa_lambda1, bool) or not isinstance(daa_lambda1, (int, float)) or not 0.0 <= daa_lambda1 <= 1.0:
            raise ValueError(f"TIPPoConfig.daa_lambda1 must lie in [0, 1], got {daa_lambda1!r}")
        self.prefix_length = prefix_length
        self.adapter_hidden_size = (
            adapter_hidden_size or (encoder_config.projection_dim + prefix_length * decoder_config.hidden_size) // 2
        )
        self.max_images = max_images
        self.use_daa_do = use_daa_do
        self.image_slot_embeddings = bool(image_slot_embeddings)
        if single_image_prototype not in ("own", "running_mean"):
            raise ValueError(
                f"TIPPoConfig.single_image_prototype must be `own` or `running_mean`, got {single_image_prototype!r}"
            )
        if not 0.0 <= prototype_momentum < 1.0:
            raise ValueError(f"TIPPoConfig.prototype_momentum must lie in [0, 1), got {prototype_momentum!r}")
        self.single_image_prototype = single_image_prototype
        self.prototype_momentum = float(prototype_momentum)
        if daa_projection not in DAA_PROJECTIONS:
            raise ValueError(
                f"TIPPoConfig.daa_projection must be one of {', '.join(DAA_PROJECTIONS)}, got {daa_projection!r}"
            )
        self.daa_projection = daa_projection
        self.daa_lambda1 = float(daa_lambda1)
        check_contrastive_loss_settings(
            contrastive_weight, contrastive_temperature, contrastive_negatives, "TIPPoConfig."
        )
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_temperature = float(contrastive_temperature)
        self.contrastive_negatives = contrastive_negatives
        self.freeze_encoder = freeze_encoder
        self.encoder_name_or_path = encoder_name_or_path
        self.decoder_name_or_path = decoder_name_or_path

        # generate() and the trainers read these from the top-level config.
        kwargs.setdefault("is_encoder_decoder", decoder_config.is_encoder_decoder)
        kwargs.setdefault("pad_token_id", decoder_config.pad_token_id)
        kwargs.setdefault("eos_token_id", decoder_config.eos_token_id)
        # A causal decoder has no start token: the prompt's last position predicts the first completion token. The pad id
        # stands in for it in T5-style shifted `decoder_input_ids`, whose first column a causal TIPPo model does not read.
        start = (
            decoder_config.decoder_start_token_id if decoder_config.is_encoder_decoder else decoder_config.pad_token_id
        )
        kwargs.setdefault("decoder_start_token_id", start)
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """d: the decoder width, shared by every TIPPo signal."""
        return self.decoder_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.decoder_config.vocab_size

    @property
    def feature_size(self) -> int:
        """d_φ: the width of the frozen encoder's pooled, projected embeddings."""
        return self.encoder_config.projection_dim
