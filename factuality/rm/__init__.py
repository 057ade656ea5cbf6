"""The reward model below the train_rm stage: preference pairs and probes, the frozen base's features,
the head and its training loop, metrics, the report, checkpoints and `load_reward_model`.

    from factuality.rm import load_reward_model
    rm = load_reward_model("checkpoints/rm/best")
    rm.score(prompts, responses)          # list[float], penalised rewards
"""
from .model import RewardModel, load_reward_model

__all__ = ["RewardModel", "load_reward_model"]
