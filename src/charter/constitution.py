"""Constitutions: the principles that steer critique/revision (SL-CAI) and AI feedback (RL-CAI).

A constitution is a list of named principles. A principle carries a critique request and a revision
request (for the SL-CAI critique -> revision loop), a feedback principle (for the RL-CAI comparison),
or both. The text is stored *bare*: the completion-mode framing of the paper ("\\n\\nCritiqueRequest:
... \\n\\nCritique:", "\\n... Options:") belongs to the prompt templates, not to the principle.

Besides charter's own YAML, `load_constitution` reads the JSON shapes published with Bai et al. 2022
(CritiqueRevisionInstructions.json, RLMadisonInstructions.json) and Hugging Face's llm-swarm
constitutions, so those files can be used as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from charter.errors import error_msg, line_of, loc_str
from charter.records import Message
from charter.resources import builtin_data_dir

__all__ = [
    "CONSTITUTIONS_PATH_ENV",
    "Constitution",
    "ConstitutionError",
    "FewShot",
    "MCExample",
    "Principle",
    "list_constitutions",
    "load_constitution",
]

CONSTITUTIONS_PATH_ENV = "CHARTER_CONSTITUTIONS_PATH"
_SUFFIXES = (".yaml", ".yml", ".json")

# The paper's completion-mode framing, stripped on import so only the principle text remains.
_CRITIQUE_PREFIX = "\n\nCritiqueRequest: "
_CRITIQUE_SUFFIX = "\n\nCritique:"
_REVISION_PREFIX = "\n\nRevisionRequest: "
_REVISION_SUFFIX = "\n\nRevision:"
_FEEDBACK_PREFIX = "\n"
_FEEDBACK_SUFFIX = " Options:"


class ConstitutionError(ValueError):
    """A constitution that cannot be found, parsed or validated.

    The message is one line and always starts with the file (or the requested name), then the field
    path or line, e.g. ``constitutions/x.yaml: principles[3].critique: field required (line 12)``.
    """

    def __init__(self, source: str | Path, message: str) -> None:
        self.source = str(source)
        self.detail = " ".join(message.splitlines())
        super().__init__(f"{self.source}: {self.detail}")


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelled "critque:" must not silently drop a principle's text.
    model_config = ConfigDict(extra="forbid")


class Principle(_Strict):
    """One constitutional principle: a critique/revision pair, a feedback text, or both."""

    name: str = Field(min_length=1)
    critique: str | None = None
    revision: str | None = None
    feedback: str | None = None

    @field_validator("name", "critique", "revision", "feedback")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _has_usable_text(self) -> Principle:
        if (self.critique is None) != (self.revision is None):
            missing = "revision" if self.revision is None else "critique"
            raise ValueError(f"critique and revision come as a pair; {missing} is missing")
        if self.critique is None and self.feedback is None:
            raise ValueError("needs critique and revision, or feedback (or all three)")
        return self


class MCExample(_Strict):
    """A multiple-choice few-shot example for AI feedback: a conversation and its better/worse reply."""

    conversation: str  # the paper's "\n\nHuman: ...\n\nAssistant:" prompt text
    chosen: str
    rejected: str


class FewShot(_Strict):
    """Few-shot material that goes with a constitution, in the forms the prompt templates take."""

    completion: list[str] = Field(default_factory=list)
    chat: list[list[Message]] = Field(default_factory=list)
    multiple_choice: list[MCExample] = Field(default_factory=list)
    chain_of_thought: list[str] = Field(default_factory=list)


class Constitution(_Strict):
    """A named set of principles with attribution and optional few-shot examples."""

    name: str = Field(min_length=1)
    description: str = ""
    source: str = ""
    license: str | None = None
    principles: list[Principle] = Field(min_length=1)
    few_shot: FewShot = Field(default_factory=FewShot)

    @field_validator("principles")
    @classmethod
    def _unique_names(cls, principles: list[Principle]) -> list[Principle]:
        positions: dict[str, list[int]] = {}
        for i, principle in enumerate(principles):
            positions.setdefault(principle.name, []).append(i)
        duplicates = [
            f"{name!r} at " + " and ".join(f"[{i}]" for i in where)
            for name, where in positions.items()
            if len(where) > 1
        ]
        if duplicates:
            raise ValueError(f"duplicate principle name {'; '.join(duplicates)}")
        return principles

    def content_hash(self) -> str:
        """sha256 hex of a canonical JSON dump: the same constitution hashes the same everywhere."""
        blob = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def sample(
        self,
        rng: random.Random,
        k: int = 1,
        *,
        kind: Literal["critique", "feedback"] | None = None,
    ) -> list[Principle]:
        """Draw `k` principles uniformly *with* replacement, as the paper does, using only `rng`.

        `kind` restricts the draw to principles usable for critique/revision or for feedback.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        # Only the pool asked for is built: the labeler draws per pair, thousands of times a run.
        if kind is None:
            pool = self.principles
        elif kind == "critique":
            pool = self.critique_principles
        elif kind == "feedback":
            pool = self.feedback_principles
        else:
            raise KeyError(kind)
        if not pool:
            raise ValueError(f"constitution {self.name!r} has no {kind} principles to sample")
        return [pool[rng.randrange(len(pool))] for _ in range(k)]

    def get(self, name: str) -> Principle:
        """The principle called `name`; KeyError naming the available ones otherwise."""
        for principle in self.principles:
            if principle.name == name:
                return principle
        available = ", ".join(p.name for p in self.principles)
        raise KeyError(f"constitution {self.name!r} has no principle {name!r}; available: {available}")

    @property
    def names(self) -> list[str]:
        """Principle names, in order."""
        return [p.name for p in self.principles]

    @property
    def critique_principles(self) -> list[Principle]:
        """Principles with a critique/revision pair (usable for SL-CAI)."""
        return [p for p in self.principles if p.critique is not None]

    @property
    def feedback_principles(self) -> list[Principle]:
        """Principles with a feedback text (usable for RL-CAI labeling)."""
        return [p for p in self.principles if p.feedback is not None]

    def to_yaml(self) -> str:
        """charter YAML that `load_constitution` reads back to an equal constitution."""
        data = self.model_dump(mode="json", exclude_none=True)
        # Leave out what the loader defaults anyway, so hand-written and generated files look alike.
        data["few_shot"] = {kind: items for kind, items in data["few_shot"].items() if items}
        if not data["few_shot"]:
            del data["few_shot"]
        # No line wrapping: one principle per line keeps the files greppable for the paper's text.
        return yaml.dump(
            data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=1_000_000, indent=2
        )


# --- YAML ------------------------------------------------------------------------------------------


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as `|` block scalars so transcripts stay readable in the file."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML falls back to a quoted style by itself when a block scalar could not hold the text
    # exactly (e.g. a line with trailing spaces), so asking for "|" never loses characters.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


# The C parser is ~10x faster on our 16-principle files; fall back to pure Python without libyaml.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one silently."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable mapping key", key_node.start_mark
            ) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(path: Path, error: yaml.YAMLError) -> ConstitutionError:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        # The context often points where the trouble started (e.g. an unclosed quote's opening line).
        if error.problem and error.context and error.context_mark is not None:
            problem += f" ({error.context} at line {error.context_mark.line + 1})"
        return ConstitutionError(path, f"{where}invalid YAML: {problem}")
    return ConstitutionError(path, f"invalid YAML: {error}")


def _parse_yaml(path: Path, text: str) -> tuple[Any, yaml.Node | None]:
    """The document's data and its node tree (kept to point validation errors at a line)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        raise _yaml_error(path, error) from None
    finally:
        loader.dispose()
    return data, node


# --- validation errors -----------------------------------------------------------------------------


def _validation_error(path: Path, error: ValidationError, node: yaml.Node | None) -> ConstitutionError:
    parts = []
    errors = error.errors(include_url=False)
    for item in errors[:3]:
        loc = tuple(item["loc"])
        msg = error_msg(item)
        text = f"{loc_str(loc)}: {msg}" if loc else msg
        line = line_of(node, loc)
        parts.append(f"{text} (line {line})" if line is not None else text)
    if len(errors) > 3:
        parts.append(f"(+{len(errors) - 3} more)")
    return ConstitutionError(path, "; ".join(parts))


# --- the JSON shapes published with the paper and by Hugging Face -----------------------------------


def _unframe(path: Path, field: str, text: Any, prefix: str, suffix: str) -> str:
    if not (isinstance(text, str) and text.startswith(prefix) and text.endswith(suffix)):
        raise ConstitutionError(path, f"{field}: expected a string framed as {prefix + '...' + suffix!r}")
    bare = text[len(prefix) : len(text) - len(suffix)]
    if not bare.strip():
        raise ConstitutionError(path, f"{field}: empty principle text")
    return bare


def _from_anthropic_sl(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """{"harmful0": {"prompt": ["\\n\\nCritiqueRequest: ..."], "edit_request": "..."}, ...}"""
    principles = []
    for name, entry in data.items():
        prompts = entry.get("prompt")
        if not isinstance(prompts, list) or len(prompts) != 1:
            raise ConstitutionError(path, f"{name}.prompt: expected a list with exactly one critique request")
        critique = _unframe(path, f"{name}.prompt[0]", prompts[0], _CRITIQUE_PREFIX, _CRITIQUE_SUFFIX)
        revision = _unframe(
            path, f"{name}.edit_request", entry.get("edit_request"), _REVISION_PREFIX, _REVISION_SUFFIX
        )
        principles.append({"name": name, "critique": critique, "revision": revision})
    return {
        "name": path.stem,
        "description": f"Critique/revision principles imported from {path.name} (Anthropic SL-CAI format).",
        "principles": principles,
    }


def _from_anthropic_rl(path: Path, data: list[Any]) -> dict[str, Any]:
    """["\\n<principle> Options:", ...]"""
    principles = [
        {
            "name": f"feedback{i}",
            "feedback": _unframe(path, f"[{i}]", text, _FEEDBACK_PREFIX, _FEEDBACK_SUFFIX),
        }
        for i, text in enumerate(data)
    ]
    return {
        "name": path.stem,
        "description": f"Feedback principles imported from {path.name} (Anthropic RL-CAI format).",
        "principles": principles,
    }


def _from_hf(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """{"constitutions": [{"critic": ..., "revision": ...}], "system_chat": [[{role, content}]]}"""
    entries = data["constitutions"]
    if not isinstance(entries, list):
        raise ConstitutionError(path, "constitutions: expected a list of {critic, revision} objects")
    principles = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "critic" not in entry or "revision" not in entry:
            raise ConstitutionError(path, f"constitutions[{i}]: expected an object with critic and revision")
        principles.append(
            {"name": f"{path.stem}-{i}", "critique": entry["critic"], "revision": entry["revision"]}
        )
    return {
        "name": path.stem,
        "description": f"Chat constitution imported from {path.name} (Hugging Face llm-swarm format).",
        "principles": principles,
        "few_shot": {"chat": data.get("system_chat", [])},
    }


def _normalize(path: Path, data: Any) -> dict[str, Any]:
    """Recognise the document's shape and turn it into charter's constitution fields."""
    if isinstance(data, dict) and "principles" in data:
        return data
    if isinstance(data, dict) and "constitutions" in data:
        return _from_hf(path, data)
    if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
        return _from_anthropic_rl(path, data)
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, dict) and "prompt" in v and "edit_request" in v for v in data.values())
    ):
        return _from_anthropic_sl(path, data)
    if data is None:
        raise ConstitutionError(path, "empty file")
    raise ConstitutionError(
        path,
        "unrecognised format: expected charter YAML (a mapping with 'principles'), Anthropic "
        "CritiqueRevisionInstructions/RLMadisonInstructions JSON, or llm-swarm JSON ('constitutions')",
    )


# --- loading ---------------------------------------------------------------------------------------


def _load_file(path: Path) -> Constitution:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConstitutionError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConstitutionError(path, f"cannot read: {error}") from None
    node: yaml.Node | None = None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConstitutionError(
                path, f"line {error.lineno}, column {error.colno}: JSON syntax error: {error.msg}"
            ) from None
    else:
        data, node = _parse_yaml(path, text)
    fields = _normalize(path, data)
    try:
        # Line numbers only make sense for charter YAML, where `fields` is the parsed document.
        return Constitution.model_validate(fields)
    except ValidationError as error:
        raise _validation_error(path, error, node if fields is data else None) from None


def _search_dirs(search_path: list[Path] | None) -> list[Path]:
    dirs = [Path(p) for p in search_path or []]
    env = os.environ.get(CONSTITUTIONS_PATH_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    # Plugins' directories (the register_constitution_dirs hook), as prompts.prompt_dirs does.
    from charter.plugins import extra_dirs

    dirs += extra_dirs("constitutions")
    dirs.append(builtin_data_dir("constitutions"))
    return dirs


def list_constitutions(search_path: list[Path] | None = None) -> list[tuple[str, Path]]:
    """(name, path) of every `<name>.yaml` on the search path, sorted by name.

    The search order is `search_path`, then `$CHARTER_CONSTITUTIONS_PATH`, then plugins' directories,
    then the built-ins; an
    earlier directory shadows a later one with the same name.
    """
    found: dict[str, Path] = {}
    for directory in _search_dirs(search_path):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            if path.is_file():
                found.setdefault(path.stem, path)
    return sorted(found.items())


def load_constitution(name_or_path: str | Path, search_path: list[Path] | None = None) -> Constitution:
    """Load a constitution by file path (.yaml/.yml/.json) or by name from the search path.

    Raises ConstitutionError (a ValueError) with the file and field/line for any problem.
    """
    if isinstance(name_or_path, Path) or name_or_path.endswith(_SUFFIXES):
        return _load_file(Path(name_or_path))
    name = name_or_path
    for directory in _search_dirs(search_path):
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return _load_file(candidate)
    available = ", ".join(n for n, _ in list_constitutions(search_path)) or "(none)"
    raise ConstitutionError(name, f"no constitution named {name!r}; available: {available}")
