"""Structure numbers for issue #12's note, read from the source with `ast` (nothing is imported).

    python benchmarks/config_metrics.py [SRC_DIR ...]     # default: src/charter of this checkout

For each source tree it prints:
- where each `charter label` option is declared (a function parameter, a class field, a CLI flag
  literal) and where a rule about it is checked (a comparison raising an error naming the flag);
- the parameter counts of `session._drive`, `session.run_chain` and `rl.label`;
- modules over 400 lines, and the import cycles among charter modules (strongly connected groups of
  the module-level import graph; imports inside functions are listed separately, since they are the
  usual way of breaking a cycle at import time).
Run it on the tree before a change and after it (e.g. `git worktree add /tmp/before main`), side by side.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

LABEL_OPTIONS = (
    "constitution",
    "method",
    "ensemble",
    "swap",
    "clamp",
    "few_shot",
    "votes",
    "max_parse_retries",
    "top_logprobs",
    "min_option_mass",
    "cot_samples",
    "mode",
    "template",
    "from_run",
    "max_flagged",
)


def modules(src: Path) -> dict[str, Path]:
    """charter module name -> file."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(tree: ast.Module, name: str, known: set[str], top_only: bool) -> set[str]:
    found: set[str] = set()
    package = name if name.endswith("__init__") else name.rpartition(".")[0]
    nodes = tree.body if top_only else list(ast.walk(tree))
    for node in nodes:
        if top_only and isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports do not run
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # `import charter.x.y` runs charter/x/__init__.py too; a package's own __init__ importing its
    # submodules is not a cycle users can hit, so edges into a parent package are left out.
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def declarations(files: dict[str, Path]) -> dict[str, list[str]]:
    """label option -> the places it is declared or checked."""
    places: dict[str, list[str]] = defaultdict(list)
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        short = name.removeprefix("charter.")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = {a.arg for a in node.args.args + node.args.kwonlyargs}
                # a function with most of the label options is a place that declares them
                if len(args & set(LABEL_OPTIONS)) >= 8:
                    for opt in LABEL_OPTIONS:
                        if opt in args:
                            places[opt].append(f"{short}.{node.name}() parameter")
            if isinstance(node, ast.ClassDef):
                fields = {
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                }
                if len(fields & set(LABEL_OPTIONS)) >= 8:
                    for opt in LABEL_OPTIONS:
                        if opt in fields:
                            places[opt].append(f"{short}.{node.name} field")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for opt in LABEL_OPTIONS:
                    flag = "--" + opt.replace("_", "-")
                    text = node.value
                    if text == flag or text.startswith(flag + "/"):
                        places[opt].append(f"{short}: CLI flag {flag!r}")
            if isinstance(node, ast.Raise):
                text = ast.unparse(node)
                for opt in LABEL_OPTIONS:
                    if "--" + opt.replace("_", "-") + " " in text:
                        places[opt].append(f"{short}: check raising on --{opt.replace('_', '-')}")
    return places


def params_of(files: dict[str, Path], module: str, function: str) -> int | None:
    path = files.get(module)
    if path is None:
        return None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            a = node.args
            return len(a.posonlyargs + a.args + a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    return None


def report(src: Path) -> None:
    files = modules(src)
    known = set(files)
    trees = {m: ast.parse(p.read_text()) for m, p in files.items()}
    top = _package_edges({m: _imports(t, m, known, True) for m, t in trees.items()})
    every = _package_edges({m: _imports(t, m, known, False) for m, t in trees.items()})
    print(f"== {src}")
    for module, function in (
        ("charter.session", "_drive"),
        ("charter.session", "run_chain"),
        ("charter.rl", "label"),
    ):
        print(f"  params of {module}.{function}: {params_of(files, module, function)}")
    big = sorted((len(p.read_text().splitlines()), m) for m, p in files.items())
    print("  modules over 400 lines: " + ", ".join(f"{m} ({n})" for n, m in big if n > 400))
    top_cycles = cycles(top)
    print(f"  import cycles (module-level imports): {len(top_cycles)}")
    for group in top_cycles:
        print("    " + " <-> ".join(group))
    all_cycles = cycles(every)
    print(f"  import cycles (counting imports inside functions): {len(all_cycles)}")
    for group in all_cycles:
        print(f"    {len(group)} modules: " + ", ".join(group))
    places = declarations(files)
    print("  label option: places declared or checked")
    for opt in LABEL_OPTIONS:
        where = places.get(opt, [])
        print(f"    {opt}: {len(where)}: " + "; ".join(sorted(set(where))))


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]] or [Path(__file__).resolve().parent.parent / "src" / "charter"]
    for root in roots:
        report(root)


if __name__ == "__main__":
    main()
