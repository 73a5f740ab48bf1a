from .sft_config import TIPPoSFTConfig
from .sft_trainer import TIPPoSFTTrainer

__all__ = ["TIPPoSFTConfig", "TIPPoSFTTrainer"]
