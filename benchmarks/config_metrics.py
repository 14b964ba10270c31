"""Structure numbers for issue #12's note, read from the source with `ast` (nothing is imported).

    python benchmarks/config_metrics.py [SRC_DIR ...]     # default: src/charter of this checkout

For each source tree it prints:
- where each `charter label` option is declared (a function parameter, a class field, a CLI flag
  literal) and where a rule about it is checked (a comparison raising an error naming the flag);
- the parameter counts of `session._drive`, `session.run_chain` and `rl.label`.
Import cycles and modules over 400 lines: `python tools/layout_report.py --git-ref main`.
Run it on the tree before a change and after it (e.g. `git worktree add /tmp/before main`), side by side.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

# Spelled out, not read from charter.tasks.LabelConfig: the script measures trees from before the
# configs existed.
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
    print(f"== {src}")
    for module, function in (
        ("charter.session", "_drive"),
        ("charter.session", "run_chain"),
        ("charter.rl", "label"),
    ):
        print(f"  params of {module}.{function}: {params_of(files, module, function)}")
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
