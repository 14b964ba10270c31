"""Typed Jinja prompt templates: a `.jinja` file with YAML front matter naming its inputs and output.

    ---
    description: Ask for a critique of the latest response under one principle.
    mode: chat                       # chat (renders messages) | completion (renders one string)
    inputs:                          # name: type; checked with a generated pydantic model
      conversation: list[Message]
      critique_request: str
      few_shot: list[list[Message]] | None
    output: critique                 # a registered output parser (text, critique, ...)
    stop: ["\\n\\nHuman:"]           # optional stop sequences sent with the request
    ---
    {% call message("user") %}{{ critique_request }}{% endcall %}

Chat templates mark each message with `{% call message(role) %}...{% endcall %}`. The body is the
text after the front matter with one trailing newline removed (files end with a newline; the
rendered prompt must not), so completion templates render byte for byte what they say.
Every template is rendered in Jinja's sandbox with `StrictUndefined`: a missing input is an error,
never an empty string.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateError, UndefinedError, nodes
from jinja2 import meta as jinja_meta
from jinja2.visitor import NodeTransformer
from pydantic import BaseModel, ValidationError, create_model

from charter.records import Critique, Message
from charter.sandbox import BoundedEnvironment, render_bounded

PROMPT_SUFFIX = ".jinja"
_ROLE_MARK = "\x1echarter-role:"
_END_MARK = "\x1echarter-end\x1e"


class PromptError(ValueError):
    """A bad template file or bad inputs; the message names the file and the field."""


class TextOutput(BaseModel):
    """The plain text a model returned, stripped of surrounding whitespace."""

    text: str


Parser = Callable[[str], BaseModel]
_PARSERS: dict[str, Parser] = {}


def register_parser(name: str) -> Callable[[Parser], Parser]:
    """Register an output parser by name, for use in a template's `output:` field."""

    def decorate(func: Parser) -> Parser:
        _PARSERS[name] = func
        return func

    return decorate


def get_parser(name: str) -> Parser:
    """The output parser registered as `name`."""
    try:
        return _PARSERS[name]
    except KeyError:
        raise PromptError(f"unknown output parser {name!r}; known: {', '.join(sorted(_PARSERS))}") from None


@register_parser("text")
def parse_text(text: str) -> TextOutput:
    """Any text is valid; surrounding whitespace is dropped."""
    return TextOutput(text=text.strip())


_VERDICT = re.compile(
    r"^\s*\**verdict\**\s*:\s*\**\s*(revise|no[ _-]?change)\b.*$", re.IGNORECASE | re.MULTILINE
)


@register_parser("critique")
def parse_critique(text: str) -> Critique:
    """A critique, with the typed no-change outcome read from its `Verdict:` line.

    The chat critique prompt asks the model to end with `Verdict: revise` or `Verdict: no change`.
    Without such a line (the paper's completion format has none) the paper's behaviour applies:
    always revise. The verdict line itself is not part of the stored critique text.
    """
    matches = list(_VERDICT.finditer(text))
    if not matches:
        return Critique(text=text.strip(), needs_revision=True)
    last = matches[-1]
    needs_revision = last.group(1).lower() == "revise"
    body = (text[: last.start()] + text[last.end() :]).strip()
    return Critique(text=body, needs_revision=needs_revision)


_SIMPLE_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "dict": dict[str, Any],
    "any": Any,
    "Any": Any,
    "Message": Message,
}


def parse_type(expr: str) -> tuple[Any, bool]:
    """Turn a front-matter type such as `list[Message] | None` into (python type, optional?)."""
    expr = expr.strip()
    optional = False
    if expr.endswith("| None"):
        optional, expr = True, expr[: -len("| None")].strip()
    match = re.fullmatch(r"list\[(.+)\]", expr)
    if match:
        inner, _ = parse_type(match.group(1))
        return list[inner], optional  # type: ignore[valid-type]
    if expr not in _SIMPLE_TYPES:
        raise ValueError(f"unknown type {expr!r} (use str, int, float, bool, dict, any, Message, list[...])")
    return _SIMPLE_TYPES[expr], optional


@dataclass
class RenderedPrompt:
    """A rendered template: `messages` in chat mode, `text` in completion mode."""

    mode: Literal["chat", "completion"]
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    stop: list[str] = field(default_factory=list)

    def to_display(self) -> str:
        """What `charter prompts render` prints: the text exactly, or the messages as JSON."""
        if self.mode == "completion":
            return self.text or ""
        return json.dumps(self.messages, ensure_ascii=False, indent=2)


_ROLES = ("system", "user", "assistant")


def _message_open(role: str) -> str:
    if role not in _ROLES:
        raise TemplateError(f"message role must be system, user or assistant, not {role!r}")
    return f"{_ROLE_MARK}{role}\x1e"


def _message_marker(role: str, caller: Callable[[], str]) -> str:
    return f"{_message_open(role)}{caller()}{_END_MARK}"


_OPEN = "__charter_message_open"
# Names a call block's body may mean differently once it is no longer a macro of its own.
_MACRO_NAMES = frozenset({"caller", "varargs", "kwargs"})


class _InlineMessages(NodeTransformer):
    """Compile `{% call message(role) %}BODY{% endcall %}` to the marker, BODY and the end marker
    written in place, BODY in a scope of its own (what it sets stays inside, as in a call block).

    The output is the same string; what goes is the caller macro built and the two sandboxed calls
    made per message (a few-shot label prompt has eleven messages, and it is rendered per pair).
    A constant role is checked here and written as text; any other is checked as it renders.
    """

    def visit_CallBlock(self, node: nodes.CallBlock) -> Any:
        self.generic_visit(node)
        call = node.call
        if not (
            isinstance(call.node, nodes.Name)
            and call.node.name == "message"
            and len(call.args) == 1
            and not call.kwargs
            and call.dyn_args is None
            and call.dyn_kwargs is None
            and not node.args
            and not node.defaults
            and not any(n.name in _MACRO_NAMES for n in node.find_all(nodes.Name))
        ):
            return node
        role = call.args[0]
        lineno = node.lineno
        if isinstance(role, nodes.Const) and role.value in _ROLES:
            opening: nodes.Expr = nodes.TemplateData(_message_open(role.value), lineno=lineno)
        else:
            opening = nodes.Call(nodes.Name(_OPEN, "load"), [role], [], None, None, lineno=lineno)
        return [
            nodes.Output([opening], lineno=lineno),
            nodes.Scope(node.body, lineno=lineno),
            nodes.Output([nodes.TemplateData(_END_MARK, lineno=lineno)], lineno=lineno),
        ]


def _inline_messages(tree: nodes.Template, inputs: dict[str, str]) -> nodes.Template:
    """`tree` with its message blocks inlined, unless the template gives `message` a meaning of its
    own (an input, a variable, a macro, an import by that name): then `message` is called as written."""
    bound = set(inputs) | {n.name for n in tree.find_all(nodes.Name) if n.ctx != "load"}
    bound |= {m.name for m in tree.find_all(nodes.Macro)} | {i.target for i in tree.find_all(nodes.Import)}
    bound |= {n if isinstance(n, str) else n[1] for i in tree.find_all(nodes.FromImport) for n in i.names}
    if "message" in bound:
        return tree
    result = _InlineMessages().visit(tree)
    assert isinstance(result, nodes.Template)
    return result


# Bounded: a template cannot spend unbounded time, iterations, memory or output (charter.sandbox).
_ENV = BoundedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
_ENV.globals["message"] = _message_marker
_ENV.globals[_OPEN] = _message_open
_ENV.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)


def _split_messages(rendered: str) -> list[dict[str, str]]:
    messages = []
    for chunk in rendered.split(_ROLE_MARK)[1:]:
        role, _, rest = chunk.partition("\x1e")
        content, _, _ = rest.partition(_END_MARK)
        messages.append({"role": role, "content": content.strip()})
    return messages


class PromptTemplate:
    """A prompt loaded from a `.jinja` file: typed inputs, a mode, an output parser, stop texts."""

    def __init__(self, name: str, source: str, path: Path | None = None) -> None:
        self.name = name
        self.path = path
        where = str(path) if path else name
        if not source.startswith("---\n"):
            raise PromptError(f"{where}: line 1: a template starts with '---' front matter")
        try:
            header, body = source[4:].split("\n---\n", 1)
        except ValueError:
            raise PromptError(f"{where}: front matter is not closed by a '---' line") from None
        try:
            meta = yaml.safe_load(header) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", 0) + 2
            raise PromptError(f"{where}: line {line}: front matter is not valid YAML") from None
        self.source = body[:-1] if body.endswith("\n") else body
        if not isinstance(meta, dict):
            raise PromptError(f"{where}: front matter must be a mapping (description, mode, inputs, ...)")
        self.description: str = str(meta.get("description", ""))
        self.mode: Literal["chat", "completion"] = meta.get("mode", "chat")
        if self.mode not in ("chat", "completion"):
            raise PromptError(f"{where}: mode: must be chat or completion, not {self.mode!r}")
        self.output: str = str(meta.get("output", "text"))
        stop = meta.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise PromptError(f"{where}: stop: must be a string or a list of non-empty strings, not {stop!r}")
        self.stop: list[str] = stop
        inputs = meta.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise PromptError(f"{where}: inputs: must be a mapping of name: type")
        self.input_types: dict[str, str] = {str(k): str(v) for k, v in inputs.items()}
        fields: dict[str, Any] = {}
        for field_name, type_expr in self.input_types.items():
            try:
                py_type, optional = parse_type(type_expr)
            except ValueError as exc:
                raise PromptError(f"{where}: inputs.{field_name}: {exc}") from None
            fields[field_name] = (py_type | None, None) if optional else (py_type, ...)
        self.input_model: type[BaseModel] = create_model(f"{_camel(name)}Inputs", **fields)
        try:
            parsed = _ENV.parse(self.source)
            self._template = _ENV.from_string(_inline_messages(parsed, self.input_types))
            # Jinja keeps a template's globals as a ChainMap over the environment's and, per render,
            # copies them into the context and a set of their names by walking it in Python (7 % of a
            # few-shot label render). _ENV's globals are fixed once this module is imported: one dict.
            self._template.globals = dict(self._template.globals)
        except TemplateError as exc:
            # Jinja counts lines from the body; the user's editor counts them from the top of the file.
            line = (getattr(exc, "lineno", None) or 1) + header.count("\n") + 3
            raise PromptError(f"{where}: line {line}: {exc}") from None
        # StrictUndefined would only fail at render time, halfway through a run: name an undeclared
        # variable now, while loading, so a broken template is bad input before anything is written.
        undeclared = jinja_meta.find_undeclared_variables(parsed) - set(self.input_types) - set(_ENV.globals)
        if undeclared:
            raise PromptError(
                f"{where}: uses {', '.join(repr(v) for v in sorted(undeclared))}, which is not among its "
                f"inputs ({', '.join(self.input_types) or 'none declared'}); declare it under 'inputs:'"
            )

    def validate_inputs(self, values: dict[str, Any]) -> BaseModel:
        """Check inputs against the declared types; the error names the template and field."""
        try:
            return self.input_model.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise PromptError(f"prompt {self.name}: input {loc}: {err['msg']}") from None

    def render(self, **values: Any) -> RenderedPrompt:
        """Validate the inputs and render: messages in chat mode, one exact string in completion mode."""
        model = self.validate_inputs(values)
        context = {k: _plain(getattr(model, k)) for k in self.input_types}
        try:
            rendered = render_bounded(self._template, context)
        except TemplateError as exc:
            raise PromptError(f"prompt {self.name} ({self.path or 'inline'}): {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            # Template code is user code: `{{ 'a' + 1 }}` is a bad template, not a crash.
            raise PromptError(
                f"prompt {self.name} ({self.path or 'inline'}): {type(exc).__name__}: {exc}"
            ) from None
        if self.mode == "completion":
            return RenderedPrompt(mode="completion", text=rendered, stop=list(self.stop))
        messages = _split_messages(rendered)
        if not messages:
            raise PromptError(f"prompt {self.name}: a chat template must produce messages via message(role)")
        return RenderedPrompt(mode="chat", messages=messages, stop=list(self.stop))

    def check(self) -> None:
        """Check what loading cannot: the output parser exists, and a render with sample inputs of
        the declared types finishes within the bounds and (chat) produces messages.

        A missing key in sample data (a `dict` input has no keys to sample) is not an error here;
        anything else the template does wrong with well-typed inputs is, before any run starts.
        """
        where = str(self.path) if self.path else self.name
        if self.output not in _PARSERS:
            raise PromptError(
                f"{where}: output: unknown output parser {self.output!r}; known: {', '.join(sorted(_PARSERS))}"
            )
        samples = {name: _sample(type_expr) for name, type_expr in self.input_types.items()}
        try:
            self.render(**samples)
        except PromptError as exc:
            if isinstance(exc.__context__, UndefinedError):
                return
            message = str(exc).removeprefix(f"prompt {self.name} ({self.path or 'inline'}): ")
            raise PromptError(f"{where}: rendering with sample inputs: {message}") from None

    def parse(self, text: str) -> BaseModel:
        """Parse a model's answer with this template's output parser."""
        return get_parser(self.output)(text)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_SAMPLES: dict[str, Any] = {
    "str": "sample text",
    "int": 1,
    "float": 0.5,
    "bool": True,
    "dict": {},
    "any": "sample",
    "Any": "sample",
    "Message": {"role": "user", "content": "sample text"},
}


def _sample(expr: str) -> Any:
    """A value of a front-matter type for a dry render: one element for a list, never None."""
    expr = expr.strip().removesuffix("| None").strip()
    match = re.fullmatch(r"list\[(.+)\]", expr)
    if match:
        return [_sample(match.group(1))]
    return _SAMPLES.get(expr)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def prompt_dirs(prompts_dir: str | Path | None = None) -> list[Path]:
    """Where templates are looked up, first match wins: --prompts-dir, CHARTER_PROMPTS_PATH, plugins, built-in."""
    from charter.plugins import extra_dirs
    from charter.resources import builtin_data_dir

    dirs: list[Path] = []
    if prompts_dir:
        dirs.append(Path(prompts_dir))
    env = os.environ.get("CHARTER_PROMPTS_PATH")
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    dirs.extend(extra_dirs("prompts"))
    dirs.append(builtin_data_dir("prompts"))
    return dirs


_LOADED: dict[tuple[str, int, int], PromptTemplate] = {}


def load_prompt(name: str, prompts_dir: str | Path | None = None) -> PromptTemplate:
    """The template called `name` (file `<name>.jinja`), honouring user overrides."""
    for directory in prompt_dirs(prompts_dir):
        path = directory / f"{name}{PROMPT_SUFFIX}"
        if path.is_file():
            # Parsing and compiling costs milliseconds and runs are checked up front, then per step:
            # reuse a template while its file is unchanged (templates are immutable once built).
            stat = path.stat()
            key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
            template = _LOADED.get(key)
            if template is None:
                template = PromptTemplate(name, path.read_text(encoding="utf-8"), path)
                template.check()  # a bad override is bad input before a run, not on its first item
                _LOADED[key] = template
            return template
    known = ", ".join(n for n, _ in list_prompts(prompts_dir))
    raise PromptError(f"no prompt named {name!r}; known: {known}")


def list_prompts(prompts_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Every template name visible from here, with the file that wins for it."""
    found: dict[str, Path] = {}
    for directory in prompt_dirs(prompts_dir):
        if directory.is_dir():
            for path in sorted(directory.glob(f"*{PROMPT_SUFFIX}")):
                found.setdefault(path.name[: -len(PROMPT_SUFFIX)], path)
    return sorted(found.items())
