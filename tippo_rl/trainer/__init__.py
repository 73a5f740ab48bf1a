from .polishppo_config import PolishPPOConfig
from .polishppo_trainer import PolishPPOTrainer
from .ppo_config import PPOConfig
from .ppo_trainer import PPOTrainer
from .sft_config import TIPPoSFTConfig
from .sft_trainer import TIPPoSFTTrainer


__all__ = ["PPOConfig", "PPOTrainer", "PolishPPOConfig", "PolishPPOTrainer", "TIPPoSFTConfig", "TIPPoSFTTrainer"]
