"""Supervised fine-tuning on SL-CAI revisions (TRL's SFTTrainer)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from .common import (
    DEFAULT_CHAT_TEMPLATE,
    Conversation,
    as_conversation,
    build_config,
    chat_ids,
    finish_metrics,
    load_model,
    load_tokenizer,
    log_summary,
    save_trained,
    seed_everything,
    validate_extra,
)
from .options import SFTOptions

__all__ = ["SFTOptions", "normalize_sft_rows", "train_sft"]

# How many rows to render when checking that a template keeps the prompt a token prefix of the full
# conversation; templates either do this or they don't, so a sample is enough.
_PREFIX_CHECK_ROWS = 32


def normalize_sft_rows(rows: Iterable[Mapping[str, Any]]) -> list[Conversation]:
    """Rows with `messages` (a list or its JSON text), or `prompt` + `completion`, -> conversations."""
    conversations: list[Conversation] = []
    for i, row in enumerate(rows):
        if "messages" in row and row["messages"] is not None:
            messages = as_conversation(row["messages"], "user", what=f"row {i} messages")
        elif "prompt" in row and "completion" in row:
            messages = as_conversation(row["prompt"], "user", what=f"row {i} prompt") + as_conversation(
                row["completion"], "assistant", what=f"row {i} completion"
            )
        else:
            raise ValueError(f"row {i}: expected a 'messages' field (or 'prompt' and 'completion')")
        if not messages:
            raise ValueError(f"row {i}: empty conversation")
        conversations.append(messages)
    return conversations


def _supports_assistant_masks(tokenizer: PreTrainedTokenizerBase) -> bool:
    # TRL's assistant_only_loss needs {% generation %} markers; it swaps in a marked-up copy for the
    # templates it knows (Qwen, Llama 3, Gemma, Phi-3, ...) and raises ValueError for the rest.
    template = tokenizer.chat_template
    if not isinstance(template, str):
        return False
    if has_generation_markers(template):
        return True
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return False
    return True


def _prefix_preserving(tokenizer: PreTrainedTokenizerBase, conversations: list[Conversation]) -> bool:
    for messages in conversations[:_PREFIX_CHECK_ROWS]:
        prompt_ids = chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
        full_ids = chat_ids(tokenizer, messages)
        if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
            return False
    return True


def _choose_loss(
    requested: str, tokenizer: PreTrainedTokenizerBase, conversations: list[Conversation]
) -> tuple[str, str | None]:
    """Pick the loss mode and, when it is a fallback, say why."""
    ends_with_assistant = all(len(m) >= 2 and m[-1]["role"] == "assistant" for m in conversations)
    if requested == "full":
        return "full", None
    if requested == "assistant_only":
        if not _supports_assistant_masks(tokenizer):
            raise ValueError(
                "loss='assistant_only' needs a chat template with {% generation %} markers (or one TRL can "
                "patch); this tokenizer's has none: use loss='last_turn' or 'full'"
            )
        return "assistant_only", None
    if requested == "last_turn":
        if not ends_with_assistant:
            raise ValueError("loss='last_turn' needs every conversation to end with an assistant turn")
        return "last_turn", None
    if requested != "auto":
        raise ValueError(f"unknown SFT loss mode {requested!r}; use auto, assistant_only, last_turn or full")
    if _supports_assistant_masks(tokenizer):
        return "assistant_only", None
    if not ends_with_assistant:
        return "full", (
            "chat template has no {% generation %} markers and not every row ends with an assistant turn: "
            "trained on all tokens"
        )
    if not _prefix_preserving(tokenizer, conversations):
        return "full", (
            "chat template has no {% generation %} markers and does not render the prompt as a prefix of "
            "the conversation: trained on all tokens"
        )
    return "last_turn", (
        "chat template has no {% generation %} markers: loss on the final assistant turn of each row only"
    )


def _dataset(conversations: list[Conversation], mode: str) -> Dataset:
    if mode == "last_turn":
        # TRL's prompt/completion format masks the prompt (completion_only_loss) with any template.
        return Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in conversations])
    return Dataset.from_list([{"messages": m} for m in conversations])


def train_sft(
    rows: Iterable[Mapping[str, Any]],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: SFTOptions | None = None,
    *,
    mix_rows: Iterable[Mapping[str, Any]] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Fine-tune `model` (a path or hub id) on chat rows and write model + tokenizer to `out_dir`.

    `rows` are `{"messages": [{role, content}, ...]}` (the `sft_examples` view or the trl export).
    `mix_rows` (e.g. the user's own chat data, same shape) are added and shuffled in with the seed.
    `callbacks` are passed to the TRL trainer (e.g. to record the start of training).
    Returns JSON-safe metrics: `final_loss`, `train_rows`, `loss_mode` (and `loss_note` when the
    tokenizer forced a fallback), `steps`, ...
    """
    options = config or SFTOptions()
    validate_extra(SFTConfig, options.extra)  # fail before any loading or writing
    started = time.perf_counter()
    seed_everything(options.seed)

    conversations = normalize_sft_rows(rows)
    mixed = normalize_sft_rows(mix_rows) if mix_rows is not None else []
    if not conversations and not mixed:
        raise ValueError("no SFT rows to train on")
    all_rows = conversations + mixed
    random.Random(options.seed).shuffle(all_rows)

    tokenizer = load_tokenizer(model, trust_remote_code=options.trust_remote_code)
    default_template = tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    requested = options.loss
    if options.extra.get("assistant_only_loss"):
        requested = "assistant_only"
    mode, note = _choose_loss(requested, tokenizer, all_rows)

    trl_fields: dict[str, Any] = {"max_length": options.max_length}
    if mode == "assistant_only":
        trl_fields["assistant_only_loss"] = True
    elif mode == "last_turn":
        trl_fields["completion_only_loss"] = True
    else:
        trl_fields["assistant_only_loss"] = False
    args, resolved = build_config(SFTConfig, options, out_dir, **trl_fields)
    if mode == "last_turn" and args.completion_only_loss is False:  # the user switched it off via extra
        mode, note = "full", "completion_only_loss=False was set: trained on all tokens"

    policy = load_model(model, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
    trainer = SFTTrainer(
        model=policy,
        args=args,
        train_dataset=_dataset(all_rows, mode),
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
    )
    result = trainer.train()
    save_trained(trainer, out_dir)

    metrics: dict[str, Any] = {
        "kind": "sft",
        "train_rows": len(conversations),
        "mix_rows": len(mixed),
        "loss_mode": mode,
        "loss_note": note,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        **log_summary(trainer.state.log_history),
    }
    return finish_metrics(
        metrics, trainer, result, resolved, default_template=default_template, started=started
    )
