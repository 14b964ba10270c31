"""What a person sees while training: one line per logging step, the libraries' chatter in a log file.

TRL's trainers print raw metric dicts to stdout, tqdm bars and deprecation warnings to stderr;
`quiet(log)` sends all of that to `log`, and `ProgressLines` prints `step 10/40  loss 0.693 ...`
to the terminal's stderr instead. Used by `charter train` and `charter demo`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

# The stderr in force before `quiet` redirected it, innermost last: where charter's own lines go.
_TERMINALS: list[TextIO] = []


def terminal() -> TextIO:
    """The stream for charter's own lines (what a run reads, warnings): stderr, even inside `quiet`."""
    return _TERMINALS[-1] if _TERMINALS else sys.stderr


@contextlib.contextmanager
def quiet(log: TextIO) -> Iterator[None]:
    """Send the libraries' output (progress bars, training logs, warnings) to the log file."""
    import logging

    root = logging.getLogger()
    handler = logging.StreamHandler(log)
    saved_level = root.level
    root.addHandler(handler)
    try:
        import transformers

        transformers.utils.logging.disable_default_handler()
        transformers.utils.logging.add_handler(handler)
    except ImportError:  # pragma: no cover
        transformers = None  # type: ignore[assignment]
    _TERMINALS.append(sys.stderr)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        _TERMINALS.pop()
        log.flush()
        root.removeHandler(handler)
        root.setLevel(saved_level)
        if transformers is not None:
            transformers.utils.logging.remove_handler(handler)
            transformers.utils.logging.enable_default_handler()


# Metrics worth a glance while training, in this order (TRL's names for SFT/reward/DPO and PPO).
_SHOWN = (
    "loss",
    "eval_loss",
    "eval_accuracy",
    "rewards/accuracies",
    "rewards/margins",
    "objective/scores",
    "objective/kl",
    "loss/policy_avg",
)


def format_log(state: TrainerState, logs: dict[str, Any]) -> str | None:
    """`step 10/40  loss 0.6931  eval_accuracy 0.75` for one `on_log` call (None when nothing to show)."""
    shown = [f"{k} {v:.4g}" for k in _SHOWN if isinstance(v := logs.get(k), int | float)]
    if not shown:
        return None
    total = f"/{state.max_steps}" if state.max_steps else ""
    return f"  step {state.global_step}{total}  " + "  ".join(shown)


class ProgressLines(TrainerCallback):
    """Prints one line per logging step (main process only) through `echo`, e.g. the real stderr."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        stream = sys.stderr  # taken now: inside `quiet`, sys.stderr is the log file
        self.echo = echo or (lambda line: print(line, file=stream, flush=True))
        self.lines = 0

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        line = format_log(state, logs)
        if line is not None:
            self.lines += 1
            self.echo(line)


# The libraries' output of one training run, kept next to the trained model.
LOG_FILE = "charter-train.log"


def run_quietly(kind: str, **kwargs: Any) -> dict[str, Any]:
    """`run_training(kind, **kwargs)` with step lines on stderr and the libraries' output in OUT/charter-train.log.

    The log is a temporary file until OUT exists, so bad input that fails before training leaves no
    directory behind (and no log: the error says it all). The metrics gain `log` (where it is kept);
    a `TrainingFailed` error gets it as its `log` attribute.
    """
    from .training import TrainingFailed, run_training

    out = Path(kwargs["out"])
    with tempfile.NamedTemporaryFile("w", prefix="charter-train-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        callbacks = [*kwargs.pop("callbacks", ()), ProgressLines()]
        try:
            with quiet(log):  # type: ignore[arg-type]  # a text file, whatever its wrapper
                metrics = run_training(kind, callbacks=callbacks, **kwargs)
        except TrainingFailed as exc:
            import traceback

            traceback.print_exception(exc.__cause__ or exc, file=log)
            log.flush()
            exc.log = str(_keep_log(log_path, out))  # type: ignore[attr-defined]
            raise
        except BaseException:
            log_path.unlink(missing_ok=True)
            raise
    return {**metrics, "log": str(_keep_log(log_path, out))}


def _keep_log(log_path: Path, out: Path) -> Path:
    """Move the run's log into OUT when OUT exists (else leave it where it is); returns where it is."""
    if not out.is_dir():
        return log_path
    target = out / LOG_FILE
    try:
        shutil.move(str(log_path), target)
    except OSError:
        return log_path
    return target
