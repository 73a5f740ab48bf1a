"""The miniature every recipe runs on without a download: the scene generator of the embedded default dataset
(`scenes`) and the tiny preset's φ, a Chinese-CLIP pretrained CLIP-style on the generator's own pairs
(`tiny_encoder`). What users import for their own data lives in the package root."""

from .scenes import make_demo_dataset, scene_field_accuracy
from .tiny_encoder import TinyEncoderRecipe, tiny_encoder_folder


__all__ = ["TinyEncoderRecipe", "make_demo_dataset", "scene_field_accuracy", "tiny_encoder_folder"]
