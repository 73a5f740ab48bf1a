"""Image-grounded reward plug-in: R = cos(φ(y), mean_i φ(I_i)) with the frozen encoder φ of a TIPPo model.

The class lives in the package (`tippo_rl.rewards.image_grounded`, where the demo's scene verifier builds on it); this
file keeps the plug-in spec working:

    reward_funcs: [literal, semantic, rewards/image_grounded.py:ImageGroundedReward]
    reward_init_kwargs:
      rewards/image_grounded.py:ImageGroundedReward: {model_name_or_path: outputs/demo_sft}
"""

from tippo_rl.rewards.image_grounded import ImageGroundedReward


__all__ = ["ImageGroundedReward"]
