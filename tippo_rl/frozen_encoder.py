"""φ: the frozen multi-modal encoder TIPPo reads its inputs through (Chinese-CLIP's two towers and projections).

TIPPo trains nothing here (`freeze_encoder`, the paper's setting); `TIPPoForConditionalGeneration.encode_frozen_features`
calls it, and the feature cache stores what it returns.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ChineseCLIPConfig
from transformers.models.chinese_clip.modeling_chinese_clip import ChineseCLIPTextModel, ChineseCLIPVisionModel


class TIPPoFrozenEncoder(nn.Module):
    """φ: Chinese-CLIP's two towers and projections, as in `ChineseCLIPModel` (same parameter names).

    `ChineseCLIPModel.logit_scale` is left out: TIPPo never uses it, and DeepSpeed cannot partition a
    0-dimensional parameter.
    """

    def __init__(self, config: ChineseCLIPConfig):
        super().__init__()
        self.text_model = ChineseCLIPTextModel(config.text_config, add_pooling_layer=False)
        self.vision_model = ChineseCLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """φ(T): `(batch, L)` token ids → `(batch, d_φ)`, exactly `ChineseCLIPModel.get_text_features`."""
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_projection(hidden[:, 0, :])

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """φ(I): `(n, 3, H, W)` → `(n, d_φ)`, exactly `ChineseCLIPModel.get_image_features`."""
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)
