"""The Jinja sandbox templates render in, with bounds on time, work and size.

Jinja's own sandbox stops templates from reaching Python internals, but not from burning CPU or
memory: `range(100000)` nested twice is 10^10 iterations, and a list or string that doubles in a
loop fills memory in thirty steps. A template is user input (`--prompts-dir`, plugins), and one
render runs per item, in whatever thread the runner uses, so the bounds cannot rely on signals.
Instead the compiled template checks itself:

- every `{% for %}` iterates through `_bounded`, which counts iterations against `MAX_ITERATIONS`
  and looks at the clock every few hundred against `MAX_SECONDS` (work without output is caught);
- `range` is capped at `MAX_RANGE` items; `*`, `**`, `+` and `~` refuse results over `MAX_SIZE`;
  calls, macro calls and filters check the clock, and refuse an integer argument over `MAX_SIZE`
  (`'x'|center(10**9)`);
- output is generated in chunks and stops at `MAX_OUTPUT` characters.

Any bound crossed raises `RenderLimitError` (a Jinja `TemplateError`) naming the limit.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.runtime import Macro
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_RANGE = 10_000
MAX_ITERATIONS = 1_000_000
MAX_SIZE = 1_000_000
MAX_OUTPUT = 4_000_000
MAX_SECONDS = 10.0

# What `a.b` finds on a plain dict as an attribute (its methods); any other name is a key lookup.
_DICT_ATTRIBUTES = frozenset(dir(dict))

_LOOP = "__charter_bounded_loop"
_CONCAT = "__charter_bounded_concat"
_CLOCK_EVERY = 256


class RenderLimitError(TemplateError):
    """A template went past one of the render bounds (time, iterations, size, output)."""


class _Budget:
    """The bounds of one render: a deadline and an iteration count."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_SECONDS
        self.iterations = 0

    def tick(self, count: int = 1) -> None:
        self.iterations += count
        if self.iterations > MAX_ITERATIONS:
            raise RenderLimitError(f"template loops ran more than {MAX_ITERATIONS:,} iterations")
        if count > 1 or self.iterations % _CLOCK_EVERY == 0:
            self.check_clock()

    def check_clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitError(f"template took longer than {MAX_SECONDS:g} s to render")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "charter_render_budget", default=None
)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # rendered outside `render_bounded` (e.g. a plain Template.render)
        budget = _Budget()
        _BUDGET.set(budget)
    return budget


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set)) else 0


def _check_size(value: Any, what: str) -> Any:
    if _size(value) > MAX_SIZE:
        raise RenderLimitError(f"{what} would be longer than {MAX_SIZE:,}")
    return value


def _check_args(args: Iterable[Any], what: str) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_SIZE:
            raise RenderLimitError(f"{what}: argument {arg} is over the template limit {MAX_SIZE:,}")


def _bounded_loop(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.tick()
        yield item


def _bounded_concat(*parts: Any) -> str:
    total = sum(len(str(p)) for p in parts)
    if total > MAX_SIZE:
        raise RenderLimitError(f"a '~' concatenation would be longer than {MAX_SIZE:,}")
    return "".join(str(p) for p in parts)


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise RenderLimitError(f"range() of {len(rng):,} items is over the template limit {MAX_RANGE:,}")
    return rng


def _bounded_filter(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _budget().check_clock()
        _check_args([*args[1:], *kwargs.values()], f"filter {name}")
        return _check_size(func(*args, **kwargs), f"the result of filter {name}")

    return wrapper


class _Rewriter(NodeTransformer):
    """Route every loop's iterable and every `~` through the bounded helpers."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name(_LOOP, "load"), [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.Name(_CONCAT, "load"), list(node.nodes), [], None, None, lineno=node.lineno)


class BoundedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox plus the bounds above."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _safe_range
        self.globals[_LOOP] = _bounded_loop
        self.globals[_CONCAT] = _bounded_concat
        self.filters = {name: _bounded_filter(f, name) for name, f in self.filters.items()}

    def _generate(self, source: Any, name: Any, filename: Any, defer_init: bool = False) -> str:
        if isinstance(source, nodes.Template):
            source = _Rewriter().visit(source)
        return super()._generate(source, name, filename, defer_init=defer_init)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`a.b`: on a plain dict a name that is not one of its methods is the key, looked up directly.

        The same answer as Jinja's (which tries the attribute first and falls back to the key), without
        raising and catching an AttributeError: `m.role` on every message of every render adds up.
        """
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """`*`, `**` and `+` with their result's size checked before it is built."""
        _budget().check_clock()
        if (
            operator == "**"
            and isinstance(right, (int, float))
            and abs(right) > 64
            and isinstance(left, (int, float))
            and abs(left) > 1
        ):
            raise RenderLimitError(f"{left} ** {right} is over the template limit")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _size(seq) and isinstance(times, int) and _size(seq) * times > MAX_SIZE:
                    raise RenderLimitError(f"a '*' result would be longer than {MAX_SIZE:,}")
        if operator == "+" and _size(left) + _size(right) > MAX_SIZE:
            raise RenderLimitError(f"a '+' result would be longer than {MAX_SIZE:,}")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Calls (methods, macros, globals) check the clock and refuse huge integer arguments."""
        if __obj is _bounded_loop and len(args) == 1:
            # The rewriter's own wrapper of every loop: it ticks the budget itself. (Inside another
            # loop Jinja adds `_loop_vars`, which only a context-taking function would use.)
            return _bounded_loop(args[0])
        _budget().check_clock()
        if __obj not in (_bounded_concat, _safe_range):
            name = getattr(__obj, "__name__", None) or getattr(__obj, "name", None) or "a function"
            _check_args([*args, *kwargs.values()], f"call of {name}")
        if type(__obj) is Macro:
            # A template's own macro: the sandbox allows every one and Jinja injects nothing into it,
            # so its generic call path (three layers of checks, 40 % of a few-shot label render) is
            # skipped. The same result as `Context.call`, StopIteration included.
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            try:
                if not kwargs and _plain_macro(__obj, len(args)):
                    # Every argument given by position, nothing else the macro takes: what
                    # `Macro.__call__` would pass its function is `args` as they are.
                    result = __obj._func(*args)
                else:
                    result = __obj(*args, **kwargs)
            except StopIteration:
                return __context.environment.undefined(
                    "value was undefined because a callable raised a StopIteration exception"
                )
            return _check_size(result, "a call's result")
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")


def _plain_macro(macro: Macro, count: int) -> bool:
    """`count` positional arguments are all `macro` takes: no caller, varargs or kwargs, no
    autoescaping of its result, not async (fields of Jinja 3's Macro, as `Macro.__call__` reads them)."""
    return (
        macro._argument_count == count
        and not (macro.caller or macro.catch_kwargs or macro.catch_varargs)
        and macro._default_autoescape is False
        and not macro._environment.is_async
    )


def render_bounded(template: Any, context: dict[str, Any]) -> str:
    """Render `template` within the bounds: a fresh budget, output collected up to `MAX_OUTPUT`."""
    token = _BUDGET.set(_Budget())
    try:
        chunks: list[str] = []
        length = 0
        for chunk in template.generate(**context):
            length += len(chunk)
            if length > MAX_OUTPUT:
                raise RenderLimitError(f"template output is longer than {MAX_OUTPUT:,} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except RecursionError:
        raise RenderLimitError("template recursion is too deep") from None
    finally:
        _BUDGET.reset(token)
