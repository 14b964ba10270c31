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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from charter.errors import error_msg, line_of, loc_str
from charter.runner import RunnerOptions
from charter.session import RunSummary


class PipelineError(ValueError):
    """A pipeline file that cannot be read or validated (one line: file, field, line)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CallOptions(_Strict):
    """How a step reaches its model; unset fields fall back to `defaults`."""

    model: str | None = None
    api_base: str | None = None
    params: dict[str, Any] | None = None
    concurrency: int | None = Field(default=None, ge=1)
    max_retries: int | None = Field(default=None, ge=0)
    rpm: float | None = Field(default=None, gt=0)
    batch: bool | None = None  # through the provider's batch API, like --batch
    seed: int | None = None
    prompts_dir: str | None = None


class Defaults(CallOptions):
    """Options shared by every step."""


class ReviseStep(CallOptions):
    """`charter revise`."""

    name: str | None = None
    prompts: str
    constitution: str = "anthropic-sl"
    rounds: int = Field(default=4, ge=0)
    mode: Literal["chat", "completion"] = "chat"
    few_shot: bool = True
    limit: int | None = Field(default=None, ge=1)


class SampleStep(CallOptions):
    """`charter sample`."""

    name: str | None = None
    prompts: str | None = None
    from_run: str | None = None
    n: int = Field(default=2, ge=2)
    temperature: float | None = Field(default=1.0, ge=0)
    pairs: str | int = "all"
    system: str | None = None
    mode: Literal["chat", "completion"] = "chat"
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> SampleStep:
        if self.prompts is not None and self.from_run is not None:
            raise ValueError("give prompts or from_run, not both")
        return self

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: str | int) -> str | int:
        from charter.steps.rl import parse_pair_strategy

        return parse_pair_strategy(value)


class LabelStep(CallOptions):
    """`charter label`."""

    name: str | None = None
    constitution: str = "anthropic-rl"
    method: Literal["logprobs", "cot"] = "logprobs"
    ensemble: int = Field(default=1, ge=1)
    swap: bool = False
    clamp: tuple[float, float] | None = None
    few_shot: bool = True
    votes: int = Field(default=1, ge=1)
    max_parse_retries: int = Field(default=2, ge=0)
    top_logprobs: int | None = Field(default=None, ge=1)
    min_option_mass: float = Field(default=0.5, ge=0, le=1)
    cot_samples: int = Field(default=1, ge=1)
    mode: Literal["chat", "completion"] | None = None
    template: str | None = None
    from_run: str | list[str] | None = None
    limit: int | None = Field(default=None, ge=1)
    max_flagged: float = Field(default=0.5, ge=0, le=1)

    @field_validator("clamp", mode="before")
    @classmethod
    def _clamp(cls, value: Any) -> Any:
        if isinstance(value, str):
            from charter.cli.common import parse_clamp

            return parse_clamp(value)
        return value

    @field_validator("clamp")
    @classmethod
    def _clamp_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] <= value[1] <= 1:
            raise ValueError("need 0 <= low <= high <= 1")
        return value


class ExportStep(_Strict):
    """`charter export`."""

    dataset: Literal["sft", "preferences"]
    out: str
    schema_: Literal["trl", "hf-cai"] = Field(default="trl", alias="schema")
    format: Literal["jsonl", "parquet"] | None = None
    run: str | None = None
    where: str | None = None


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


def _call_kwargs(defaults: Defaults, step: CallOptions, base: Path, where: str) -> dict[str, Any]:
    def pick(name: str) -> Any:
        value = getattr(step, name)
        return getattr(defaults, name) if value is None else value

    model = pick("model")
    if not model:
        raise PipelineError(f"{where}.model: no model (set it on the step or under defaults)")
    params = {**(defaults.params or {}), **(step.params or {})}
    return {
        "model": model,
        "api_base": pick("api_base"),
        "params": params,
        "options": RunnerOptions(
            concurrency=pick("concurrency") or 16,
            max_retries=6 if pick("max_retries") is None else pick("max_retries"),
            requests_per_minute=pick("rpm"),
            batch=bool(pick("batch")),
        ),
        "seed": pick("seed") or 0,
        "prompts_dir": _resolve_input(base, pick("prompts_dir")),
    }


def pick_dir(defaults: Defaults, step: CallOptions) -> str | None:
    """The step's prompts_dir, else the defaults' (as `_call_kwargs` picks it)."""
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
        if isinstance(step, CallOptions):
            kwargs = _call_kwargs(pipeline.defaults, step, base, loc)
            check_params(kwargs["params"], option=f"{loc}.params:")
            if kwargs["prompts_dir"] is not None:
                # Every override in the step's --prompts-dir loads and dry-renders now, so a broken
                # one stops the file before step 1 writes (not when the step that uses it starts).
                for name, path in list_prompts(kwargs["prompts_dir"]):
                    if path.parent == Path(kwargs["prompts_dir"]):
                        try:
                            load_prompt(name, kwargs["prompts_dir"])
                        except PromptError as exc:
                            raise PipelineError(f"{loc}.prompts_dir: {exc}") from None
        if isinstance(step, LabelStep) and step.template is not None:
            load_prompt(step.template, _resolve_input(base, pick_dir(pipeline.defaults, step)))
        if isinstance(step, ExportStep):
            if step.where is not None:
                try:
                    where_sql(step.where)
                except ValueError as exc:
                    raise PipelineError(f"{loc}.where: {exc}") from None
            check_output_path(step.out, [target], option=f"{loc}.out:")
        if isinstance(step, (ReviseStep, SampleStep)) and step.prompts is not None:
            if step.prompts == "-":
                raise PipelineError(f"{loc}.prompts: stdin is not available in a pipeline")
            scan_prompts(PromptSource.open(_resolve_input(base, step.prompts) or step.prompts), step.limit)
        if isinstance(step, (ReviseStep, LabelStep)):
            load_constitution(_resolve_constitution(base, step.constitution))
        if (
            isinstance(step, SampleStep)
            and step.prompts is None
            and step.from_run is None
            and "revise" not in seen
        ):
            raise PipelineError(f"{loc}: needs prompts or from_run (there is no revise step before it)")
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
    from charter import rl, sl
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

    def common(step: ReviseStep | SampleStep | LabelStep, loc: str) -> dict[str, Any]:
        """The arguments every model step's run takes: database, call options, mode, limit, name."""
        return {
            "db": target,
            "mode": step.mode,
            "limit": step.limit,
            "run_name": step.name,
            "progress": progress,
            **_call_kwargs(pipeline.defaults, step, base, loc),
        }

    for i, entry in enumerate(pipeline.steps):
        loc = f"{where}: steps[{i}].{entry.kind}"
        result: StepResult
        if isinstance(entry.body, ReviseStep):
            s = entry.body
            summary: RunSummary = sl.revise(
                _resolve_input(base, s.prompts) or s.prompts,
                constitution=_resolve_constitution(base, s.constitution),
                rounds=s.rounds,
                few_shot=s.few_shot,
                **common(s, loc),
            )
            result = StepResult("revise", summary.run_name, summary)
        elif isinstance(entry.body, SampleStep):
            s2 = entry.body
            from_run = None
            if s2.prompts is None:
                from_run = ref(s2.from_run) if s2.from_run is not None else by_name["revise"]
            summary = rl.sample(
                _resolve_input(base, s2.prompts),
                from_run=from_run,
                n=s2.n,
                temperature=s2.temperature,
                pairs=s2.pairs,
                system=s2.system,
                **common(s2, loc),
            )
            sample_runs.append(summary.run_name)
            result = StepResult("sample", summary.run_name, summary)
        elif isinstance(entry.body, LabelStep):
            s3 = entry.body
            if s3.from_run is None:
                runs: list[str] | None = list(sample_runs) or None
            else:
                wanted = [s3.from_run] if isinstance(s3.from_run, str) else s3.from_run
                runs = [ref(r) for r in wanted]
            summary = rl.label(
                constitution=_resolve_constitution(base, s3.constitution),
                method=s3.method,
                ensemble=s3.ensemble,
                swap=s3.swap,
                clamp=s3.clamp,
                few_shot=s3.few_shot,
                votes=s3.votes,
                max_parse_retries=s3.max_parse_retries,
                top_logprobs=s3.top_logprobs,
                min_option_mass=s3.min_option_mass,
                cot_samples=s3.cot_samples,
                template=s3.template,
                from_run=runs,
                max_flagged=s3.max_flagged,
                **common(s3, loc),
            )
            result = StepResult("label", summary.run_name, summary)
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
