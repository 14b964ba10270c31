"""Plain-dataclass options for the charter trainers.

Kept free of torch/TRL imports so a CLI can build and validate options (and store them as JSON) without
paying the multi-second import of the training stack. Every option here maps onto a field of the
matching TRL config; anything else TRL offers goes through `extra` (what `--param key=value` fills).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SFTLossMode = Literal["auto", "assistant_only", "last_turn", "full"]


@dataclass
class TrainOptions:
    """Options every trainer shares.

    `None` means "TRL's default for this trainer" (e.g. each trainer has its own default learning rate).
    `bf16`/`fp16` left at `None` pick bf16 (or fp16 on GPUs without bf16) when CUDA is available and
    plain fp32 otherwise. `extra` sets any field of the TRL config by name and wins over everything
    else; an unknown name raises a ValueError naming it.
    """

    max_steps: int | None = None
    num_train_epochs: float = 1.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    seed: int = 0
    max_length: int | None = 1024
    logging_steps: float = 10
    bf16: bool | None = None
    fp16: bool | None = None
    # dtype the weights are loaded in; None keeps fp32 master weights (mixed precision is bf16/fp16).
    dtype: str | None = None
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the options (what a caller stores as a run's config)."""
        return asdict(self)


@dataclass
class SFTOptions(TrainOptions):
    """Options for `train_sft`.

    `loss` chooses which tokens are trained:
    - `"auto"`: assistant turns only when the chat template supports TRL's `assistant_only_loss`
      (`{% generation %}` markers, or a template TRL knows how to patch); otherwise the final assistant
      turn of each conversation (prompt/completion split) when every row ends with one and the template
      renders the prompt as a prefix of the full conversation; otherwise every token.
    - `"assistant_only"`, `"last_turn"`, `"full"`: force one of those (error if impossible).
    """

    loss: SFTLossMode = "auto"


@dataclass
class RewardOptions(TrainOptions):
    """Options for `train_reward` (the paper's preference model).

    By default the loss is soft-label cross-entropy against `chosen_prob`; `hard_labels=True` uses
    TRL's standard Bradley-Terry loss (`-log sigmoid(r_chosen - r_rejected)`). `eval_fraction` of the
    pairs (at least one when there are >= 5) is held out for accuracy and calibration metrics.
    """

    hard_labels: bool = False
    eval_fraction: float = 0.1
    calibration_bins: int = 10
    eval_batch_size: int = 16


@dataclass
class PPOOptions(TrainOptions):
    """Options for `train_ppo`.

    `total_episodes` is the number of prompts rolled out; when unset it comes from `max_steps`
    (updates x rollout batch) or else `num_train_epochs` passes over the training prompts.
    `eval_count` prompts are held out (when there are enough) to compare the reward model's score of
    the policy's responses before and after training; `eval_temperature=0` means greedy decoding.

    The defaults follow the paper's RL-CAI setup (`PAPER_PPO`): rollouts sampled at temperature 1.0,
    responses up to 256 tokens, and a penalty of 1.0 on the score of a response that never ends (no
    EOS within `response_length`). Training with other values warns once (see `paper_deviations`).
    """

    kl_coef: float = 0.05
    response_length: int = 256
    total_episodes: int | None = None
    num_ppo_epochs: int = 4
    num_mini_batches: int = 1
    temperature: float = 1.0
    missing_eos_penalty: float | None = 1.0
    max_prompt_length: int | None = 512
    eval_count: int = 8
    eval_temperature: float = 0.0
    eval_batch_size: int = 8


# The paper's PPO settings charter checks against: (value, how a setting may differ and still match).
PAPER_PPO: dict[str, tuple[float, str]] = {
    "temperature": (1.0, "=="),  # rollouts sampled from the policy as it is
    "response_length": (256, ">="),  # long enough for real answers
    "missing_eos_penalty": (1.0, "=="),  # a response that never ends is penalised
}


def paper_deviations(options: PPOOptions) -> dict[str, dict[str, Any]]:
    """The PPO settings in `options` that differ from the paper's: `{name: {"value", "paper"}}`."""
    out: dict[str, dict[str, Any]] = {}
    for name, (paper, rule) in PAPER_PPO.items():
        value = getattr(options, name)
        matches = value is not None and (value >= paper if rule == ">=" else value == paper)
        if not matches:
            out[name] = {"value": value, "paper": f">= {paper}" if rule == ">=" else paper}
    return out


@dataclass
class DPOOptions(TrainOptions):
    """Options for `train_dpo`. Pairs with `chosen_prob < min_chosen_prob` are dropped (0.5 keeps all)."""

    beta: float = 0.1
    min_chosen_prob: float = 0.5


@dataclass
class OnlineOptions(TrainOptions):
    """Options GRPO and RLOO share (`train_grpo`, `train_rloo`): online RL on the database's prompts.

    Each step samples `num_generations` completions per prompt (so `batch_size`, which counts
    completions, must be a multiple of it) and scores them with the reward: the reward model's score,
    or the constitutional judge's soft label (P of that completion winning its comparisons). Up to
    `eval_count` prompts are held out and answered (`eval_temperature=0`: greedy) before and after
    training; the reward model scores both answers, the judge compares them head to head.
    `max_prompt_length` truncates those eval prompts from the left (GRPO/RLOO keep whole prompts).
    """

    num_generations: int = 4
    max_completion_length: int = 256
    temperature: float = 1.0
    max_prompt_length: int | None = 512
    eval_count: int = 8
    eval_temperature: float = 0.0
    eval_batch_size: int = 8


@dataclass
class GRPOOptions(OnlineOptions):
    """Options for `train_grpo` (TRL's GRPOTrainer; `--param beta=...` adds a KL penalty)."""


@dataclass
class RLOOOptions(OnlineOptions):
    """Options for `train_rloo` (TRL's RLOOTrainer: REINFORCE with a leave-one-out baseline)."""
