"""`charter run PIPELINE.yaml`: revise -> sample -> label (-> export, -> train) composed in one config file.

    db: cai.duckdb                    # --db overrides it
    defaults:                         # shared by every step; a step may override any of them
      model: hosted_vllm/my-sl-model
      api_base: ${CHARTER_API_BASE:-http://localhost:8000/v1}
      params: {max_tokens: 256}
      concurrency: 16
    steps:
      - revise: {name: sl, prompts: red_team.jsonl, rounds: 4}
      - sample: {name: pairs, from_run: sl, n: 2}
      - label:  {model: text-completion-openai/my-base-model, method: logprobs}
      - export: {dataset: preferences, out: prefs.jsonl}

Each step takes the options of the command of the same name (`charter revise`, `sample`, `label`,
`export`), spelled with underscores. `name` is the step's run name (default: derived from its
options, so running the file again resumes every step). `from_run` names an earlier step (its `name`
or its kind, e.g. `revise`) or any run in the database; a `sample` step with neither `prompts` nor
`from_run` samples the prompts of the last `revise` step before it, a `label` step without
`from_run` labels the pairs of the file's `sample` steps, an `export` without `run` exports the last
matching run (label for preferences, revise for sft).

A `train` step (`kind: sft | reward | ppo | dpo`, `model`, `out`, and the options of `charter train`)
needs charter-trl; `run` defaults to the last revise step (sft) or label step (reward, dpo), and a
ppo step's `reward_model` defaults to the out dir of the reward step before it. So the whole SL -> RL
loop is one file: examples/cai-loop.yaml. An export `out` that exists is not overwritten without
`charter run --force` (or a yes at the terminal).

Strings may use `${VAR}` and `${VAR:-default}` (environment variables). Relative input paths
(`prompts`, `constitution` files, `prompts_dir`) are relative to the pipeline file; outputs (`db`,
export `out`) are relative to the current directory. Any problem with the file is reported as
`FILE: field.path: message (line N)` before anything runs (exit status 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from charter.config import CallConfig, TaskConfig, describe_error
from charter.errors import error_msg, line_of, loc_str
from charter.session import RunSummary
from charter.tasks import LABEL, REVISE, SAMPLE, Task
from charter.tasks.base import run_task


class PipelineError(ValueError):
    """A pipeline file that cannot be read or validated (one line: file, field, line)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def step_model(
    config: type[CallConfig], name: str, doc: str, *, only: tuple[str, ...] | None = None
) -> type[_Strict]:
    """A pipeline step's schema derived from its task's Config: the same fields, help and checks.

    The call options (model, api_base, ...) are optional here: unset, they come from `defaults`.
    `db` and `run_name` are the file's (`db`, the step's `name`); `only` keeps just those fields.
    """
    fields: dict[str, Any] = {}
    for field_name, info in config.model_fields.items():
        if field_name in ("db", "run_name") or (only is not None and field_name not in only):
            continue
        copied = copy(info)
        annotation: Any = info.annotation
        if field_name in config.call_fields:
            copied.default = None
            annotation = annotation | None
        fields[field_name] = (annotation, copied)
    if only is None:
        fields["name"] = (str | None, None)
    return create_model(name, __base__=_Strict, __doc__=doc, __module__=__name__, **fields)


if TYPE_CHECKING:  # built at import time: to the type checker they are any model
    Defaults: TypeAlias = Any
    ReviseStep: TypeAlias = Any
    SampleStep: TypeAlias = Any
    LabelStep: TypeAlias = Any
else:
    Defaults = step_model(
        CallConfig, "Defaults", "Options shared by every step.", only=CallConfig.call_fields
    )
    ReviseStep = step_model(REVISE.config, "ReviseStep", "`charter revise`.")
    SampleStep = step_model(SAMPLE.config, "SampleStep", "`charter sample`.")
    LabelStep = step_model(LABEL.config, "LabelStep", "`charter label`.")
_TASK_STEPS: dict[str, Task] = {"revise": REVISE, "sample": SAMPLE, "label": LABEL}


class ExportStep(_Strict):
    """`charter export`."""

    dataset: str
    out: str
    schema_: str = Field(default="trl", alias="schema")
    format: Literal["jsonl", "parquet"] | None = None
    run: str | None = None
    where: str | None = None

    @model_validator(mode="after")
    def _registered(self) -> ExportStep:
        # The shapes come from the exporter registry (plugins add their own), not from a list here.
        from charter.export import exporter_for

        exporter_for(self.dataset, self.schema_)
        return self


class TrainStep(_Strict):
    """`charter train KIND` (needs charter-trl): `model` is the base model, `out` the directory to write.

    `run` defaults to the last revise step (sft) or label step (reward, dpo); `reward_model` may
    name an earlier reward step (its `name` or `reward`) instead of a directory.
    """

    kind: Literal["sft", "reward", "ppo", "dpo"]
    name: str | None = None
    model: str | None = None
    out: str
    run: str | None = None
    where: str | None = None
    reward_model: str | None = None
    all_rounds: bool = False
    hard_labels: bool | None = None
    eval_prompts: str | None = None
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    seed: int | None = None
    params: dict[str, Any] | None = None


StepKind = Literal["revise", "sample", "label", "export", "train"]
_KINDS: tuple[StepKind, ...] = ("revise", "sample", "label", "export", "train")


class StepEntry(_Strict):
    """One item of `steps`: a mapping with exactly one key, the step's kind."""

    revise: ReviseStep | None = None
    sample: SampleStep | None = None
    label: LabelStep | None = None
    export: ExportStep | None = None
    train: TrainStep | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict) or len(data) != 1:
            raise ValueError("each step is a mapping with one key: revise, sample, label, export or train")
        ((kind, body),) = data.items()
        if kind not in _KINDS:
            raise ValueError(f"unknown step {kind!r}; expected revise, sample, label, export or train")
        if body is None:
            return {kind: {}}
        return data

    @property
    def kind(self) -> StepKind:
        return next(k for k in _KINDS if getattr(self, k) is not None)

    @property
    def body(self) -> Any:
        return getattr(self, self.kind)


class Pipeline(_Strict):
    """A pipeline file."""

    db: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    steps: list[StepEntry] = Field(min_length=1)


# --- reading ---------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (a repeated `model:` must not win silently)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _expand(value: Any, loc: tuple[Any, ...], where: str, node: yaml.Node | None, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    line = line_of(node, loc)
                    at = f" (line {line})" if line else ""
                    raise PipelineError(
                        f"{where}: {loc_str(loc)}: environment variable {name} is not set{at}"
                    )
                return default
            return found

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), where, node, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), where, node, env) for i, v in enumerate(value)]
    return value


def load_pipeline(path: str | Path, env: dict[str, str] | None = None) -> Pipeline:
    """Read and validate a pipeline file; `PipelineError` names the file, field and line."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{where}: cannot read: {exc}") from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise PipelineError(f"{where}: {at}invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: expected a mapping with 'steps' (and optionally 'db', 'defaults')")
    data = _expand(data, (), where, node, dict(os.environ if env is None else env))
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = error_msg(err)
        line = line_of(node, loc)
        at = f" (line {line})" if line else ""
        more = len(exc.errors()) - 1
        extra = f" (+{more} more)" if more > 0 else ""
        raise PipelineError(f"{where}: {loc_str(loc) or 'file'}: {msg}{at}{extra}") from None


# --- running ---------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What one step did: its kind, the run it wrote (or the export's file) and its summary."""

    kind: StepKind
    run_name: str | None
    summary: RunSummary | None = None
    rows: int | None = None
    out: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and (self.summary is None or self.summary.ok)


def _resolve_input(base: Path, value: str | None) -> str | None:
    if value is None or value == "-":
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _resolve_constitution(base: Path, value: str) -> str:
    if value.endswith((".yaml", ".yml", ".json")) or "/" in value or os.sep in value:
        return _resolve_input(base, value) or value
    return value


def _task_config(task: Task, defaults: Any, step: Any, base: Path, where: str, **fields: Any) -> TaskConfig:
    """A step's full task Config: the step's options over `defaults`, paths resolved, `fields` on top.

    Everything is validated by the task's Config, as `charter revise|sample|label` validate.
    """
    values: dict[str, Any] = step.model_dump(exclude={"name"})
    for name in task.config.call_fields:
        if values.get(name) is None:
            values[name] = getattr(defaults, name)
    values["params"] = {**(defaults.params or {}), **(step.params or {})}
    if not values["model"]:
        raise PipelineError(f"{where}.model: no model (set it on the step or under defaults)")
    values["prompts_dir"] = _resolve_input(base, values["prompts_dir"])
    values = {k: v for k, v in values.items() if v is not None or k not in task.config.call_fields}
    values.update(run_name=step.name, **fields)
    try:
        return task.config.model_validate(values)
    except ValidationError as exc:
        raise PipelineError(f"{where}: {describe_error(task.config, exc, lambda name: name)}") from None


def _step_inputs(kind: str, step: Any, base: Path, target: str | Path, **fields: Any) -> dict[str, Any]:
    """The fields a step's task Config gets from the file rather than the step: `db`, resolved paths
    (`prompts`, `constitution`) and, for a sample step with neither, the revise step's prompts."""
    out: dict[str, Any] = {"db": target}
    if kind in ("revise", "sample"):
        out["prompts"] = _resolve_input(base, step.prompts)
    if kind == "sample" and step.prompts is None and step.from_run is None:
        out["from_run"] = "revise"
    if kind in ("revise", "label"):
        out["constitution"] = _resolve_constitution(base, step.constitution)
    return {**out, **fields}


def pick_dir(defaults: Any, step: Any) -> str | None:
    """The step's prompts_dir, else the defaults' (as `_task_config` picks it)."""
    return step.prompts_dir if step.prompts_dir is not None else defaults.prompts_dir


def _check_inputs(pipeline: Pipeline, base: Path, where: str, target: str | Path) -> None:
    """Validate every input before anything runs: prompts files, constitutions, run references."""
    from charter.backends.params import check_params
    from charter.constitution import load_constitution
    from charter.inputs import PromptSource, check_output_path, scan_prompts
    from charter.prompts import PromptError, list_prompts, load_prompt
    from charter.store.store import check_db_path
    from charter.store.where import where_sql

    check_db_path(target)
    seen: set[str] = set()  # step kinds so far
    for i, entry in enumerate(pipeline.steps):
        step = entry.body
        loc = f"{where}: steps[{i}].{entry.kind}"
        task = _TASK_STEPS.get(entry.kind)
        if task is not None:
            check_params({**(pipeline.defaults.params or {}), **(step.params or {})}, option=f"{loc}.params:")
            prompts_dir = _resolve_input(base, pick_dir(pipeline.defaults, step))
            if prompts_dir is not None:
                # Every override in the step's --prompts-dir loads and dry-renders now, so a broken
                # one stops the file before step 1 writes (not when the step that uses it starts).
                for name, path in list_prompts(prompts_dir):
                    if path.parent == Path(prompts_dir):
                        try:
                            load_prompt(name, prompts_dir)
                        except PromptError as exc:
                            raise PipelineError(f"{loc}.prompts_dir: {exc}") from None
        if entry.kind == "label" and step.template is not None:
            load_prompt(step.template, _resolve_input(base, pick_dir(pipeline.defaults, step)))
        if isinstance(step, ExportStep):
            if step.where is not None:
                try:
                    where_sql(step.where)
                except ValueError as exc:
                    raise PipelineError(f"{loc}.where: {exc}") from None
            check_output_path(step.out, [target], option=f"{loc}.out:")
        if entry.kind in ("revise", "sample") and step.prompts is not None:
            if step.prompts == "-":
                raise PipelineError(f"{loc}.prompts: stdin is not available in a pipeline")
            scan_prompts(PromptSource.open(_resolve_input(base, step.prompts) or step.prompts), step.limit)
        if entry.kind in ("revise", "label"):
            load_constitution(_resolve_constitution(base, step.constitution))
        if entry.kind == "sample" and step.prompts is None and step.from_run is None and "revise" not in seen:
            raise PipelineError(f"{loc}: needs prompts or from_run (there is no revise step before it)")
        if task is not None:
            # The whole step through its task's Config now, so cross-option rules (--cot-samples
            # needs --method cot, ...) stop the file before step 1 writes.
            _task_config(
                task, pipeline.defaults, step, base, loc, **_step_inputs(entry.kind, step, base, target)
            )
        seen.add(entry.kind)


def _check_outputs(
    pipeline: Pipeline, where: str, force: bool, confirm: Callable[[str], bool] | None
) -> None:
    """Export files that exist are overwritten only with `force` or a yes from `confirm`; train steps need charter-trl."""
    import importlib.util

    for i, entry in enumerate(pipeline.steps):
        loc = f"{where}: steps[{i}].{entry.kind}"
        if isinstance(entry.body, TrainStep):
            if importlib.util.find_spec("charter_trl") is None:
                raise PipelineError(
                    f"{loc}: train steps need the charter-trl plugin (pip install charter-trl)"
                )
            if not (entry.body.model or pipeline.defaults.model):
                raise PipelineError(f"{loc}.model: no base model (set it on the step or under defaults)")
        if isinstance(entry.body, ExportStep) and Path(entry.body.out).exists() and not force:
            question = f"{entry.body.out} exists; overwrite it?"
            if confirm is None or not confirm(question):
                raise PipelineError(f"{loc}.out: {entry.body.out} exists; pass --force to overwrite it")


def _train(
    entry: TrainStep, defaults: Defaults, target: str | Path, run: str | None, reward: str | None
) -> StepResult:
    """Run one train step through charter-trl (quiet output, log in its out dir)."""
    from charter_trl.output import run_quietly
    from charter_trl.training import TrainingFailed

    model = entry.model or defaults.model
    if not model:
        raise PipelineError("train step: no model (set it on the step or under defaults)")
    kwargs: dict[str, Any] = {
        "db": target,
        "model": model,
        "out": entry.out,
        "run": run,
        "where": entry.where,
        "params": entry.params,
        "max_steps": entry.max_steps,
        "batch_size": entry.batch_size,
        "learning_rate": entry.learning_rate,
        "seed": entry.seed if entry.seed is not None else (defaults.seed or 0),
    }
    if entry.kind == "sft":
        kwargs["all_rounds"] = entry.all_rounds
    if entry.kind == "reward" and entry.hard_labels is not None:
        kwargs["hard_labels"] = entry.hard_labels
    if entry.kind == "ppo":
        kwargs["reward_model"] = reward
        kwargs["eval_prompts"] = entry.eval_prompts
    try:
        metrics = run_quietly(entry.kind, **kwargs)
    except TrainingFailed as exc:
        return StepResult("train", None, out=entry.out, error=str(exc))
    return StepResult("train", str(metrics["training_run_id"]), rows=metrics.get("train_rows"), out=entry.out)


def run_pipeline(
    path: str | Path,
    *,
    db: str | Path | None = None,
    progress: bool = False,
    on_step: Callable[[int, StepResult], None] | None = None,
    env: dict[str, str] | None = None,
    force: bool = False,
    confirm: Callable[[str], bool] | None = None,
) -> list[StepResult]:
    """Run a pipeline file's steps in order; stops after the first step that does not finish.

    `db` overrides the file's `db`. An export `out` that exists is overwritten only with `force`
    or when `confirm(question)` says yes. Returns one `StepResult` per step that ran.
    """
    from charter.export import export

    path = Path(path)
    where = str(path)
    pipeline = load_pipeline(path, env)
    base = path.resolve().parent
    target = db if db is not None else pipeline.db
    if target is None:
        raise PipelineError(f"{where}: db: no database (set db in the file or pass --db)")
    _check_inputs(pipeline, base, where, target)
    _check_outputs(pipeline, where, force, confirm)

    results: list[StepResult] = []
    trained: dict[str, str] = {}  # train step name or kind -> its out dir
    by_name: dict[str, str] = {}  # step name or kind -> run name (latest of that kind)
    sample_runs: list[str] = []

    def ref(value: str) -> str:
        return by_name.get(value, value)

    for i, entry in enumerate(pipeline.steps):
        loc = f"{where}: steps[{i}].{entry.kind}"
        result: StepResult
        task = _TASK_STEPS.get(entry.kind)
        if task is not None:
            step = entry.body
            fields: dict[str, Any] = {}
            if entry.kind == "sample" and step.prompts is None:
                fields["from_run"] = ref(step.from_run) if step.from_run is not None else by_name["revise"]
            if entry.kind == "label":
                if step.from_run is None:
                    fields["from_run"] = list(sample_runs) or None
                else:
                    wanted = [step.from_run] if isinstance(step.from_run, str) else step.from_run
                    fields["from_run"] = [ref(r) for r in wanted]
            config = _task_config(
                task,
                pipeline.defaults,
                step,
                base,
                loc,
                **_step_inputs(entry.kind, step, base, target, **fields),
            )
            summary: RunSummary = run_task(task, config, progress=progress)
            if entry.kind == "sample":
                sample_runs.append(summary.run_name)
            result = StepResult(entry.kind, summary.run_name, summary)  # type: ignore[arg-type]
        elif isinstance(entry.body, TrainStep):
            t = entry.body
            default_run = {"sft": "revise", "reward": "label", "dpo": "label"}.get(t.kind)
            run_ref = ref(t.run) if t.run is not None else by_name.get(default_run or "")
            reward = t.reward_model
            if reward is not None:
                reward = trained.get(reward, reward)
            elif t.kind == "ppo":
                reward = trained.get("reward")
            result = _train(t, pipeline.defaults, target, run_ref, reward)
            trained[t.kind] = t.out
            if t.name:
                trained[t.name] = t.out
        else:
            assert isinstance(entry.body, ExportStep)
            e = entry.body
            run = (
                ref(e.run)
                if e.run is not None
                else by_name.get("label" if e.dataset == "preferences" else "revise")
            )
            count = export(
                target, e.dataset, e.out, schema=e.schema_, format=e.format, run=run, where=e.where
            )
            result = StepResult("export", run, rows=count, out=e.out)
        results.append(result)
        if on_step is not None:
            on_step(i, result)
        if result.run_name is not None and entry.kind not in ("export", "train"):
            by_name[entry.kind] = result.run_name
            body_name = getattr(entry.body, "name", None)
            if body_name:
                by_name[body_name] = result.run_name
        if not result.ok:
            break
    return results


__all__ = [
    "ExportStep",
    "LabelStep",
    "Pipeline",
    "PipelineError",
    "ReviseStep",
    "SampleStep",
    "StepResult",
    "TrainStep",
    "load_pipeline",
    "run_pipeline",
]
