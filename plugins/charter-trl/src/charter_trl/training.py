"""`run_training`: train from a charter database and record the run, what `charter train` calls.

    from charter_trl import run_training
    result = run_training("sft", db="cai.duckdb", model="Qwen/Qwen2.5-0.5B", out="ckpt/sl-cai", max_steps=100)
    result["training_run_id"], result["final_loss"]

The order of work is what makes bad input cheap and harmless:
1. options, rows (read-only, connection closed again), models and `--param` keys are all checked
   before anything is written: a `ValueError` (exit 2 in the CLI) leaves no `training_runs` row and
   no output directory;
2. the `training_runs` row is inserted with status 'running' when training actually begins (from a
   trainer callback), by the main process only, so it works unchanged under `accelerate launch`;
3. at the end the main process sets 'done' (or 'failed') with the metrics, and PPO adds its
   before/after `policy_samples`. A failure after training started raises `TrainingFailed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from charter.store.store import StoreError
from charter.trainers import TrainerSpec, get_trainer

from .data import (
    Selection,
    TrainingRecord,
    last_user_text,
    read_hh_file,
    read_mix_file,
    read_preferences,
    read_prompt_rows,
    read_sft,
)
from .options import DPOOptions, OnlineOptions, PPOOptions, TrainOptions

__all__ = ["TrainingFailed", "build_options", "run_training"]

# Written next to the trained model: the training_runs record (without PPO's samples).
RECORD_FILE = "charter_training_run.json"

# Metrics that go to other columns or tables rather than `training_runs.metrics`.
_NOT_METRICS = ("trl_config", "samples_before", "samples_after")


class TrainingFailed(RuntimeError):
    """Training started (a 'running' row exists, now marked 'failed') and then raised."""


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def build_options(
    kind: str, options: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None
) -> TrainOptions:
    """The options object for `kind` from keyword options and `--param key=value` pairs.

    `options` must name fields of the kind's options class (`None` values keep the default).
    Each `params` key that is such a field sets it (e.g. `kl_coef`, `eval_count`, `loss`); any other
    key goes to `extra`, i.e. the TRL config, where an unknown name is an error naming it.
    """
    cls = get_trainer(kind).options
    names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key == "extra":
            extra.update(value or {})
        elif key not in names:
            raise ValueError(f"unknown option {key!r} for charter train {kind}")
        elif value is not None:
            values[key] = value
    for key, value in (params or {}).items():
        if key in names:
            values[key] = value
        else:
            extra[key] = value
    has_extra = any(f.name == "extra" for f in dataclasses.fields(cls))
    if extra and not has_extra:
        raise ValueError(f"unknown option {next(iter(extra))!r} for charter train {kind}")
    try:
        built = cls(**values, extra=extra) if has_extra else cls(**values)
    except TypeError as exc:  # pragma: no cover - names are checked above
        raise ValueError(f"bad options for charter train {kind}: {exc}") from None
    _check_option_values(kind, built)
    return built


def _check_option_values(kind: str, options: Any) -> None:
    if not isinstance(options, TrainOptions):
        return  # a third party's options: its trainer checks them
    if options.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_steps is not None and options.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {options.max_steps}")
    if options.learning_rate is not None and not options.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {options.learning_rate}")


def _validate_trl_fields(spec: TrainerSpec, options: Any) -> None:
    """An unknown `--param` key fails here, before any model is loaded."""
    from .common import validate_extra

    if spec.library_config is not None:
        validate_extra(spec.library_config(), options.extra)


def check_counts(
    kind: str,
    options: TrainOptions,
    rows: list[dict[str, Any]],
    *,
    mix_rows: list[dict[str, Any]] | None = None,
    eval_prompts: list[Any] | None = None,
    source: str = "the database",
) -> None:
    """Fail on too few rows for `kind` now, not after the models have loaded (the trainers check again)."""
    hint = {
        "sft_examples": "charter revise",
        "revisions": "charter revise",
        "prompts": "charter revise or sample",
    }
    if not rows and not mix_rows:
        first = hint.get(source, "charter sample and charter label")
        raise ValueError(
            f"no rows to train {kind} on: {source} has none for this selection (run {first} first)"
        )
    if isinstance(options, DPOOptions):
        kept = sum(1 for r in rows if float(r.get("chosen_prob") or 0) >= options.min_chosen_prob)
        if not kept:
            raise ValueError(f"no pairs left with chosen_prob >= {options.min_chosen_prob}")
    if isinstance(options, PPOOptions):
        from .ppo import _split_eval

        train = rows if eval_prompts is not None else _split_eval(rows, options)[0]  # type: ignore[arg-type]
        local_batch = options.batch_size * options.gradient_accumulation_steps
        if local_batch > len(train):
            raise ValueError(
                f"PPO needs at least batch_size x gradient_accumulation_steps = {local_batch} training prompts, "
                f"got {len(train)}; lower --batch-size"
            )
    if isinstance(options, OnlineOptions):
        from .online import check_groups

        check_groups(kind, options)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def resolve_model(name: str | os.PathLike[str]) -> str:
    """A model directory (made absolute) or hub id; a `local/` prefix (charter's model string) is dropped.

    A `.gguf` file (a path, or `<ns>/<repo>/<file>.gguf` in the HF cache) becomes the directory of its
    dequantized checkpoint, converted once (`charter_transformers.gguf`); a bad one is a `ValueError`.
    """
    text = str(name)
    if text.startswith("local/") and not Path(text).exists():
        text = text.removeprefix("local/")
    if not text:
        raise ValueError("--model: empty model name")
    from charter_transformers.gguf import dequantized_dir, is_gguf_name

    if is_gguf_name(text):
        return str(dequantized_dir(text))
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def _check_model(name: str, *, flag: str = "--model", trust_remote_code: bool = False) -> Any:
    """Load the tokenizer and config (cheap) so a missing model fails before anything is written."""
    from transformers import AutoConfig

    from .common import ModelLoadError, _load_error, load_tokenizer

    try:
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        try:
            AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise _load_error("model", name, exc) from None
    except ModelLoadError as exc:
        raise ModelLoadError(f"{flag} {name}: {exc}") from None
    return tokenizer


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Whether this process writes to the database (always, unless launched on several processes)."""
    if _world_size() > 1:
        from accelerate import PartialState

        return bool(PartialState().is_main_process)
    return True


def _barrier() -> None:
    if _world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


class _RecordStart(TrainerCallback):
    """Inserts the 'running' row when training begins (main process only)."""

    def __init__(self, record: TrainingRecord) -> None:
        self.record = record
        self.began = False

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.began = True
        if state.is_world_process_zero:
            self.record.start()


# --------------------------------------------------------------------------------------------------
# Data for each kind
# --------------------------------------------------------------------------------------------------


def _prompt_rows_from(value: Any) -> list[dict[str, Any]]:
    """Eval prompts: a prompts file (any format `charter revise` reads) or rows/conversations."""
    if isinstance(value, str | os.PathLike):
        from charter.inputs import PromptSource, iter_prompts, scan_prompts
        from charter.records import messages_to_dicts

        source = PromptSource.open(value if isinstance(value, str) else Path(value))
        scan_prompts(source)  # validate everything first
        return [
            {"prompt_id": p.prompt_id, "messages": messages_to_dicts(p.messages)}
            for p in iter_prompts(source)
        ]
    return list(value)


def _stable_id(messages: Any) -> str:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _policy_samples(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for stage in ("before", "after"):
        for sample in metrics.get(f"samples_{stage}") or []:
            prompt = sample["prompt"]
            rows.append(
                {
                    "stage": stage,
                    "prompt_id": sample.get("prompt_id") or _stable_id(prompt),
                    "prompt": last_user_text(prompt) if isinstance(prompt, list) else str(prompt),
                    "response": sample["response"],
                    "reward": sample.get("reward"),
                }
            )
    return rows


def _tell(line: str) -> None:
    """One line on stderr about what the run reads (main process only: once under accelerate)."""
    if is_main_process():
        from .output import terminal

        print(line, file=terminal(), flush=True)


def _remove_if_new_and_empty(out: Path, existed: bool) -> None:
    if existed:
        return
    with contextlib.suppress(OSError):
        out.rmdir()  # only ever an empty directory a trainer created before failing


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------


def _takers(attribute: str, value: str) -> str:
    """`charter train a and b`: the installed trainers whose `attribute` has `value`."""
    from charter.plugins import get_trainers

    kinds = [
        k
        for k, t in get_trainers().items()
        if value == getattr(t, attribute) or value in getattr(t, attribute)
    ]
    return "charter train " + " and ".join(kinds)


def run_training(
    kind: str,
    *,
    db: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    run: str | None = None,
    where: str | None = None,
    params: Mapping[str, Any] | None = None,
    all_rounds: bool | None = None,
    final_only: bool = False,
    mix: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None = None,
    reward_model: str | os.PathLike[str] | None = None,
    prompts_from_run: str | None = None,
    eval_prompts: str | os.PathLike[str] | Iterable[Any] | None = None,
    judge: Any = None,
    callbacks: Sequence[TrainerCallback] = (),
    **options: Any,
) -> dict[str, Any]:
    """Train `kind` (`sft`, `reward`, `ppo`, `dpo`) on rows of `db`, write `out`, record the run.

    - `sft` reads every round's revision (the paper's choice; rounds that kept the previous text
      count once) or, with `final_only=True`, `sft_examples` (final revisions); `all_rounds=True` is
      the default spelled out; `mix` adds a user's own chat data (a `.jsonl` of `{"messages": [...]}` or rows).
    - `reward` and `dpo` read `preference_pairs` (`reward` trains on the soft labels `chosen_prob`
      unless `hard_labels=True`), the labels of one label run: the one `run` names, else the latest.
    - `ppo` reads prompts from the `prompts` table (`prompts_from_run` is another name for `run`)
      and needs `reward_model` (a directory from `reward`); `eval_prompts` (a prompts file or rows)
      replaces the held-out slice used for the reward before/after comparison.
    - `grpo` and `rloo` read prompts as `ppo` does, rewarded by `reward_model` or by `judge` (a
      `charter_trl.judge.JudgeSettings`: the online constitutional judge, its calls stored in `db`).

    `run` keeps rows of one run (name or id), `where` adds an SQL condition on the source's columns.
    `options` are fields of the kind's options class (`max_steps`, `batch_size`, `learning_rate`,
    `seed`, `hard_labels`, `kl_coef`, ...); `params` are `--param` pairs (options fields or any TRL
    config field). `callbacks` go to the TRL trainer (e.g. `charter_trl.output.ProgressLines`).
    Returns the trainer's metrics plus `training_run_id`, `out_dir` and `status`.

    Raises `ValueError` for bad input, before anything is written, and `TrainingFailed` when
    training itself fails (the run is then recorded as 'failed').
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    spec = get_trainer(kind)
    opts = build_options(kind, options, params)
    if prompts_from_run is not None:
        if spec.source != "prompts":
            raise ValueError(f"--prompts-from-run applies to {_takers('source', 'prompts')} only")
        if run is not None and run != prompts_from_run:
            raise ValueError("give --run or --prompts-from-run, not both")
        run = prompts_from_run
    given = {  # input: (given?, how the error names it)
        "reward_model": (reward_model is not None, "--reward-model applies"),
        "all_rounds": (all_rounds is not None or final_only, "--all-rounds and --final-only apply"),
        "mix": (mix is not None, "--mix applies"),
        "eval_prompts": (eval_prompts is not None, "eval prompts apply"),
        "judge": (judge is not None, "--judge-model applies"),
    }
    for name, (present, flag) in given.items():
        if present and name not in spec.inputs:
            raise ValueError(f"{flag} to {_takers('inputs', name)} only")
    if "judge" in spec.inputs and (reward_model is None) == (judge is None):
        raise ValueError(
            f"charter train {kind} needs --reward-model DIR (from charter train reward) or --judge-model "
            "MODEL (the online constitutional judge), one of them"
        )
    elif "reward_model" in spec.inputs and "judge" not in spec.inputs and reward_model is None:
        raise ValueError(f"charter train {kind} needs --reward-model DIR (a model from charter train reward)")
    if final_only and all_rounds:
        raise ValueError("give --final-only or --all-rounds, not both")
    all_rounds = not final_only

    db_path = Path(db)
    if not db_path.exists():
        raise ValueError(f"--db {db}: no such database")
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    selection = Selection(run=run, where=where)

    # 1. Read everything the run needs; the read-only connection is closed again before training.
    mix_rows: list[dict[str, Any]] | None = None
    held_out: list[Any] | None = None
    label_run = None
    notes: dict[str, Any] = {}  # what the data selection decided, told on stderr and kept in config
    source = spec.source
    if spec.read_rows is not None:
        rows, notes = spec.read_rows(db_path, selection)
    elif source in ("revisions", "sft_examples"):
        rows, duplicates = read_sft(db_path, selection, all_rounds=all_rounds)
        notes["duplicate_rounds_dropped"] = duplicates
        source = "revisions" if all_rounds else "sft_examples"
    elif source == "preference_pairs":
        rows, label_run = read_preferences(db_path, selection)
        notes["label_run"] = label_run.name
    else:
        rows = read_prompt_rows(db_path, selection)
    if mix is not None:  # SFT: chat data; preferences: human comparisons in the HH-RLHF layout
        read_mix = read_hh_file if source == "preference_pairs" else read_mix_file
        mix_rows = read_mix(mix) if isinstance(mix, str | os.PathLike) else [dict(r) for r in mix]
    if eval_prompts is not None:
        held_out = _prompt_rows_from(eval_prompts)
        if not held_out:
            raise ValueError("no eval prompts")
    _barrier()  # every process has read before the main one opens the file for writing
    check_counts(kind, opts, rows, mix_rows=mix_rows, eval_prompts=held_out, source=source)

    # 2. Check the models and the TRL fields (still nothing written).
    _validate_trl_fields(spec, opts)
    model_name = resolve_model(model)
    tokenizer = _check_model(model_name, trust_remote_code=getattr(opts, "trust_remote_code", False))
    reward_dir: str | None = None
    if judge is not None:
        from .judge import as_settings

        judge = as_settings(judge)
        judge.check()
    if reward_model is not None:
        reward_dir = resolve_model(reward_model)
        reward_tokenizer = _check_model(reward_dir, flag="--reward-model")
        from .common import same_vocabulary

        # GRPO/RLOO pass text to the reward model (its own tokenizer); only PPO passes token ids.
        if kind == "ppo" and not same_vocabulary(reward_tokenizer, tokenizer):
            raise ValueError(
                f"--reward-model {reward_dir}: its tokenizer differs from the policy's ({model_name}); PPO "
                "scores token ids directly, so train the reward model from the same base model"
            )

    config: dict[str, Any] = {
        "kind": kind,
        "db": str(db_path.resolve()),
        "source": source,
        "run": run,
        "where": where,
        "options": opts.to_dict() if hasattr(opts, "to_dict") else dataclasses.asdict(opts),
    }
    config.update(notes)
    # What was read, told once the input has passed every check (a bad input prints its error only).
    if label_run is not None:
        _tell(label_run.note())
    if source == "preference_pairs" and mix_rows is not None:
        share = len(mix_rows) / (len(rows) + len(mix_rows))
        _tell(
            f"reward: {len(rows)} AI-labeled pairs + {len(mix_rows)} human pairs from --mix ({share:.0%} human)"
        )
        config.update(mix=str(mix) if isinstance(mix, str | os.PathLike) else None, mix_rows=len(mix_rows))
    if source in ("revisions", "sft_examples"):
        _tell(
            f"sft: {len(rows)} examples from every round's revision ({notes['duplicate_rounds_dropped']} "
            "unchanged rounds dropped as duplicates); --final-only for the final revisions only"
            if all_rounds
            else f"sft: {len(rows)} final revisions (sft_examples)"
        )
        config.update(all_rounds=all_rounds, mix=str(mix) if isinstance(mix, str | os.PathLike) else None)
        config["mix_rows"] = len(mix_rows) if mix_rows is not None else 0
    if "reward_model" in spec.inputs:
        config.update(
            reward_model=reward_dir,
            judge=judge.public() if judge is not None else None,
            eval_prompts=str(eval_prompts) if isinstance(eval_prompts, str | os.PathLike) else None,
        )
    record = TrainingRecord(
        db=db_path,
        kind=kind,
        base_model=model_name,
        out_dir=str(out_path.resolve()),
        train_rows=len(rows),
        config=config,
    )
    started = _RecordStart(record)
    main = is_main_process()
    existed = out_path.exists()
    t0 = time.perf_counter()

    # 3. Train.
    try:
        inputs = {
            "mix": mix_rows,
            "reward_model": reward_dir,
            "eval_prompts": held_out,
            "judge": judge,
            "db": db_path,  # where the judge stores its calls
        }
        metrics = spec.train(
            rows,
            model_name,
            out_path,
            opts,
            callbacks=[started, *callbacks],
            **{k: v for k, v in inputs.items() if k in spec.inputs or (k == "db" and "judge" in spec.inputs)},
        )
    except BaseException as exc:
        if not started.began:
            _remove_if_new_and_empty(out_path, existed)
            raise
        message = (str(exc).strip().splitlines() or [""])[0]
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        if main:
            status_metrics = {"error": error, "runtime_s": round(time.perf_counter() - t0, 3)}
            record.finish("failed", status_metrics)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise TrainingFailed(f"charter train {kind} failed: {error}") from exc

    # 4. Record the result.
    config["trl_config"] = metrics.get("trl_config")
    stored = {k: v for k, v in metrics.items() if k not in _NOT_METRICS}
    if main:
        train_rows = int(metrics.get("train_rows") or len(rows))
        # The record also travels with the model, so a checkpoint says where it came from.
        (out_path / RECORD_FILE).write_text(
            json.dumps(
                {
                    "training_run_id": record.run_id,
                    "kind": kind,
                    "base_model": model_name,
                    "train_rows": train_rows,
                    "config": config,
                    "metrics": stored,
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
        try:
            if not record.started:  # a trainer with nothing to do never calls on_train_begin
                record.start()
            record.finish("done", stored, train_rows=train_rows, policy_samples=_policy_samples(metrics))
        except StoreError as exc:
            raise TrainingFailed(
                f"trained and saved {out_path}, but could not record the run in {db_path}: {exc} "
                f"(the record is in {out_path / RECORD_FILE})"
            ) from exc
    return {**metrics, "training_run_id": record.run_id, "out_dir": str(out_path), "status": "done"}
