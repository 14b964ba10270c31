"""charter-trl: SFT, reward-model, PPO and DPO trainers for charter data."""
