"""Plumbing shared by the charter trainers: TRL config building, model loading and saving, row shapes."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .options import TrainOptions

Message = dict[str, str]
Conversation = list[Message]
ConfigT = TypeVar("ConfigT")

# The Human:/Assistant: layout of Bai et al. (2022), for tokenizers without a chat template. The
# assistant turn ends with EOS so a trained model learns to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + message['content'] + eos_token }}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded from the given path or hub id (one-line message)."""


def hub_offline() -> bool:
    """Whether Hugging Face Hub downloads are disabled (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from charter_transformers.loading import offline
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or offline()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices), so runs with the same seed match."""
    transformers.set_seed(seed)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def inference_device() -> torch.device:
    """The device accelerate would train on, for our own no-grad passes (scoring, sampling)."""
    from accelerate import PartialState

    return PartialState().device


def _load_error(kind: str, name: str, exc: Exception) -> ModelLoadError:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if Path(name).expanduser().exists():
        why = f"{name!r} exists but has no loadable {kind}: {first_line}"
    elif hub_offline():
        why = (
            f"{name!r} is not a local directory and is not in the Hugging Face cache "
            "(HF_HUB_OFFLINE=1 is set, so nothing was downloaded)"
        )
    else:
        why = (
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"(HF_HUB_OFFLINE is not set): {first_line}"
        )
    return ModelLoadError(f"cannot load {kind}: {why}")


def load_tokenizer(
    name: str | os.PathLike[str], *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it can pad (falling back to EOS, the usual convention)."""
    name = str(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error("tokenizer", name, exc) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"cannot use tokenizer {name!r}: it has neither a pad token nor an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        # Base (pretrained) models ship no chat template, but charter's rows are chat messages: use the
        # paper's Human/Assistant format. It is saved with the trained model, so later stages agree.
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def _resolve_dtype(dtype: str | None) -> torch.dtype | str:
    if dtype is None:
        # Transformers 5 loads in the checkpoint's dtype; training wants fp32 master weights (mixed
        # precision, if any, comes from bf16/fp16 in the TRL config), as TRL itself does.
        return torch.float32
    if dtype == "auto":
        return "auto"
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
    return resolved


def load_model(
    name: str | os.PathLike[str],
    model_class: Any = AutoModelForCausalLM,
    *,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """`model_class.from_pretrained(name)` with a one-line `ModelLoadError` when it is missing."""
    name = str(name)
    try:
        return model_class.from_pretrained(
            name, dtype=_resolve_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise _load_error("model", name, exc) from None


def load_reward_model(
    name: str | os.PathLike[str], *, dtype: str | None = None, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A sequence-classification model with one output (the reward), from a causal LM or a reward model."""
    from transformers import AutoModelForSequenceClassification

    try:
        # Loading a causal LM into a classification head is expected to leave `score` fresh and `lm_head`
        # unused; TRL's context manager silences exactly those two warnings.
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # pragma: no cover - private helper; only cosmetic
        from contextlib import nullcontext as suppress_seqcls_warning  # type: ignore[assignment]

    with suppress_seqcls_warning():
        return load_model(
            name,
            AutoModelForSequenceClassification,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            num_labels=1,
        )


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: Conversation, **kwargs: Any) -> list[int]:
    """Token ids of `messages` rendered with the chat template (handles both return shapes)."""
    encoded: Any = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    if isinstance(encoded, Mapping):  # BatchEncoding, or return_dict=True
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]


def unwrap(trainer: Any) -> PreTrainedModel:
    """The trained model without accelerate/DDP wrappers."""
    return cast(PreTrainedModel, trainer.accelerator.unwrap_model(trainer.model))


def save_trained(trainer: Any, out_dir: str | os.PathLike[str]) -> Path:
    """Write the trained model and its tokenizer so `from_pretrained(out_dir)` loads both.

    Goes through `Trainer.save_model`, which writes from the main process only and gathers
    FSDP/DeepSpeed shards, so the same code is right under `accelerate launch`.
    """
    out = Path(out_dir)
    trainer.save_model(str(out))
    trainer.accelerator.wait_for_everyone()
    return out


# The pad token TRL's own PPO example adds (examples/scripts/ppo/ppo.py).
PAD_TOKEN = "[PAD]"


def add_pad_token(tokenizer: PreTrainedTokenizerBase, models: Sequence[PreTrainedModel]) -> bool:
    """Give `tokenizer` a pad token distinct from EOS (resizing each model's embeddings to match).

    PPOTrainer derives attention masks as `ids != pad_token_id` and ends each response at its first
    pad, and a sequence-classification model reads its score at the last non-pad token. With the
    usual fallback pad = EOS, every end-of-turn EOS is masked out: the reward model would be read
    at the token before the final EOS in training and at the EOS in PPO. The reward trainer and PPO
    both add this token, so the two read the same position. Returns whether a token was added.
    """
    eos = {tokenizer.eos_token_id, *(i for m in models for i in _eos_ids(m, tokenizer))}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in eos:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    pad_id = tokenizer.pad_token_id
    for model in models:
        fit_embeddings(model, tokenizer)
        generation = getattr(model, "generation_config", None)  # a reward model has none
        if generation is not None:
            generation.pad_token_id = pad_id
    return True


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers map the same tokens to the same ids, leaving charter's pad token aside
    (the reward trainer adds it; PPO adds the same one to the policy at the same id)."""

    def base(t: PreTrainedTokenizerBase) -> dict[str, int]:
        return {k: v for k, v in t.get_vocab().items() if k != PAD_TOKEN}

    return base(a) == base(b)


def fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow `model`'s embeddings to cover `tokenizer` (an added pad token) and give it the pad id."""
    rows = int(cast(Any, model.get_input_embeddings()).weight.shape[0])
    if rows < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    generation = getattr(model, "generation_config", None)
    configured = (
        getattr(generation, "eos_token_id", None) if generation is not None else model.config.eos_token_id
    )
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# --------------------------------------------------------------------------------------------------
# TRL config building
# --------------------------------------------------------------------------------------------------


def config_fields(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class) if f.init}


def validate_extra(config_class: type, extra: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the first key of `extra` that `config_class` does not have."""
    known = config_fields(config_class)
    for key in extra:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {config_class.__name__} field {key!r} (from --param/extra){hint}")


def _checkpointing_field(known: set[str]) -> str:
    # Transformers 5 renamed gradient_checkpointing to activation_checkpointing and warns on the old
    # name; TRL's configs still default the old one to True, so set whichever name is current.
    return "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"


def build_config(
    config_class: type[ConfigT],
    options: TrainOptions,
    out_dir: str | os.PathLike[str],
    **trainer_fields: Any,
) -> tuple[ConfigT, dict[str, Any]]:
    """Build a TRL config from shared options, trainer-specific fields, then `options.extra` on top.

    Returns the config and the JSON-safe dict of fields we set (for storing with the run).
    """
    validate_extra(config_class, options.extra)
    known = config_fields(config_class)
    fields: dict[str, Any] = {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": options.batch_size,
        "gradient_accumulation_steps": options.gradient_accumulation_steps,
        "num_train_epochs": options.num_train_epochs,
        "max_steps": options.max_steps if options.max_steps is not None else -1,
        "seed": options.seed,
        "data_seed": options.seed,
        "logging_steps": options.logging_steps,
        "report_to": [],
        "save_strategy": "no",
    }
    if options.learning_rate is not None:
        fields["learning_rate"] = options.learning_rate
    if "trust_remote_code" in known:
        fields["trust_remote_code"] = options.trust_remote_code
    fields.update(trainer_fields)

    extra = dict(options.extra)
    # Precision: explicit choices win; otherwise mixed precision only on CUDA. TRL defaults bf16 to
    # True, which fails or crawls on CPU, so it is always set explicitly.
    bf16 = extra.pop("bf16", options.bf16)
    fp16 = extra.pop("fp16", options.fp16)
    if bf16 is None and fp16 is None:
        if cuda_available():
            bf16 = torch.cuda.is_bf16_supported()
            fp16 = not bf16
        else:
            bf16 = fp16 = False
    fields["bf16"] = bool(bf16)
    fields["fp16"] = bool(fp16) if fp16 is not None else False

    # Activation checkpointing: off on CPU (only costs time on tiny models); TRL's default (on) on GPU.
    ckpt = _checkpointing_field(known)
    user_ckpt = [
        extra.pop(name) for name in ("gradient_checkpointing", "activation_checkpointing") if name in extra
    ]
    fields[ckpt] = bool(user_ckpt[-1]) if user_ckpt else cuda_available()

    fields.update(extra)
    fields = {k: v for k, v in fields.items() if k in known}
    return config_class(**fields), to_jsonable(fields)


# --------------------------------------------------------------------------------------------------
# Row shapes
# --------------------------------------------------------------------------------------------------


def as_conversation(value: Any, default_role: str, *, what: str) -> Conversation:
    """Coerce a message list (or its JSON text, or a bare string as one `default_role` turn)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = [{"role": default_role, "content": value}]
        else:
            value = [{"role": default_role, "content": value}]
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ValueError(f"{what}: expected a list of {{role, content}} messages, got {type(value).__name__}")
    messages: Conversation = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"{what}: message {i} is not a {{role, content}} mapping")
        messages.append({"role": str(message["role"]), "content": str(message["content"])})
    return messages


def normalize_pairs(pairs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of `preference_pairs`/the trl export -> `{prompt, chosen, rejected: messages, chosen_prob}`.

    A missing `chosen_prob` means a hard label (1.0).
    """
    out: list[dict[str, Any]] = []
    for i, pair in enumerate(pairs):
        for key in ("prompt", "chosen", "rejected"):
            if key not in pair:
                raise ValueError(f"pair {i}: missing field {key!r}")
        prob = pair.get("chosen_prob")
        prob = 1.0 if prob is None else float(prob)
        if not 0.0 <= prob <= 1.0 or math.isnan(prob):
            raise ValueError(f"pair {i}: chosen_prob must be in [0, 1], got {prob}")
        out.append(
            {
                "prompt": as_conversation(pair["prompt"], "user", what=f"pair {i} prompt"),
                "chosen": as_conversation(pair["chosen"], "assistant", what=f"pair {i} chosen"),
                "rejected": as_conversation(pair["rejected"], "assistant", what=f"pair {i} rejected"),
                "chosen_prob": prob,
            }
        )
    if not out:
        raise ValueError("no preference pairs to train on")
    return out


def to_jsonable(value: Any) -> Any:
    """Make a value safe for json.dumps (metrics and configs go into the database as JSON)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return to_jsonable(value.item())
    if hasattr(value, "value") and isinstance(value.value, str):  # enums such as IntervalStrategy
        return value.value
    return str(value)


def log_summary(log_history: list[dict[str, Any]], key: str = "loss") -> dict[str, Any]:
    """First/final value of a logged training metric plus the whole curve."""
    curve = [float(entry[key]) for entry in log_history if key in entry]
    return {
        "first_loss": curve[0] if curve else None,
        "final_loss": curve[-1] if curve else None,
        "loss_history": curve,
    }


def last_logged(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The last logged value of a training metric, or None if it was never logged."""
    values = [float(entry[key]) for entry in log_history if key in entry]
    return values[-1] if values else None


def precision_name(config: Any) -> str:
    return "bf16" if getattr(config, "bf16", False) else "fp16" if getattr(config, "fp16", False) else "fp32"


def finish_metrics(
    metrics: dict[str, Any],
    trainer: Any,
    result: Any,
    resolved: dict[str, Any],
    *,
    default_template: bool,
    started: float,
) -> dict[str, Any]:
    """Add what every Trainer-based run reports (template, precision, device, runtime, config) and
    fall back to the trainer's mean loss when no loss was logged; returns the JSON-safe metrics."""
    metrics.update(
        {
            "chat_template": "charter-default" if default_template else "tokenizer",
            "precision": precision_name(trainer.args),
            "device": str(trainer.args.device),
            "runtime_s": round(time.perf_counter() - started, 3),
            "trl_config": resolved,
        }
    )
    if metrics.get("final_loss") is None:
        metrics["final_loss"] = result.training_loss
    return cast(dict[str, Any], to_jsonable(metrics))
