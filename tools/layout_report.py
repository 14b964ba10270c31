"""Import cycles and long modules in a charter source tree, read with `ast` (nothing is imported).

    python tools/layout_report.py                 # this checkout's src/charter
    python tools/layout_report.py --git-ref main  # and another commit's, side by side

An import cycle is a strongly connected group of two or more `charter` modules that import each other,
counted twice: through module-level imports only, and through every import (function-level, lazy ones
too: they still tie the modules together). A long module has more than --max-lines lines.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.Module, name: str, is_package: bool, top_level_only: bool) -> set[str]:
    found: set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph(src: Path, top_level_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = _imports(tree, name, path.name == "__init__.py", top_level_only)
        # `from charter.x import y` names module charter.x (or charter.x.y when y is a module).
        # An import of a parent package (`from charter.cli import common` inside charter.cli.rl) is the
        # package's own __init__, which Python runs first anyway: not a dependency between modules.
        graph[name] = {t for t in targets if t in files and t != name and not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def report(src: Path, max_lines: int) -> dict[str, object]:
    """Cycles (module-level, all imports) and modules over `max_lines` lines under `src/charter`."""
    long = sorted(
        (
            (len(p.read_text(encoding="utf-8").splitlines()), str(p.relative_to(src)))
            for p in (src / "charter").rglob("*.py")
        ),
        reverse=True,
    )
    return {
        "modules": sum(1 for _ in (src / "charter").rglob("*.py")),
        "cycles_top_level": _cycles(_graph(src, True)),
        "cycles_all_imports": _cycles(_graph(src, False)),
        "over_max": [(n, p) for n, p in long if n > max_lines],
    }


def _checkout(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-ref", help="another commit to compare with (e.g. main)")
    parser.add_argument("--max-lines", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        columns = {}
        if args.git_ref:
            columns[args.git_ref] = report(_checkout(args.git_ref, Path(tmp)), args.max_lines)
        columns["this checkout"] = report(ROOT / "src", args.max_lines)
    for label, r in columns.items():
        print(f"== {label}: {r['modules']} modules in src/charter")
        for kind in ("cycles_top_level", "cycles_all_imports"):
            cycles = r[kind]
            assert isinstance(cycles, list)
            print(f"  import cycles ({kind.removeprefix('cycles_').replace('_', ' ')}): {len(cycles)}")
            for group in cycles:
                print("    " + " <-> ".join(group))
        over = r["over_max"]
        assert isinstance(over, list)
        print(f"  modules over {args.max_lines} lines: {len(over)}")
        for n, p in over:
            print(f"    {n:5d} {p}")


if __name__ == "__main__":
    main()
