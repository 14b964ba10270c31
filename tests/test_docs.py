"""The docs match the code: the README's table of tables and views lists every column of the schema,
and help texts show no Python type names (issue 16 item 5)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from charter_testkit import REPO, run_cli

from charter.store.store import Store

_ROW = re.compile(r"^\| `(?P<name>\w+)` \| [^|]+ \| (?P<columns>[^|]+) \|$", re.MULTILINE)


def readme_tables() -> dict[str, list[str]]:
    """The README's table of tables and views: name -> documented columns, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## SQL over what it generated") :]
    section = section[: section.index("\n## ", 3)]
    return {m["name"]: [c.strip() for c in m["columns"].split(",")] for m in _ROW.finditer(section)}


def schema_tables(tmp_path: Path) -> dict[str, list[str]]:
    """Every table and view of a new database, with its columns in order."""
    with Store(tmp_path / "schema.duckdb") as store:
        names = [r[0] for r in store.query("SELECT table_name FROM information_schema.tables ORDER BY 1")]
        return {
            n: [d[0] for d in store.con.execute(f'SELECT * FROM "{n}" LIMIT 0').description or []]
            for n in names
            if n != "schema_version"
        }


def test_readme_lists_every_table_and_column_of_the_schema(tmp_path: Path) -> None:
    documented = readme_tables()
    actual = schema_tables(tmp_path)
    fixes = [
        f"| `{name}` | ... | {', '.join(cols)} |"
        for name, cols in sorted(actual.items())
        if documented.get(name) != cols
    ]
    assert not fixes, (
        "README.md's table of tables and views is out of date; the rows should read:\n" + "\n".join(fixes)
    )
    assert sorted(documented) == sorted(actual), "README documents relations the schema does not have"


COMMANDS = [
    ["revise"],
    ["sample"],
    ["label"],
    ["run"],
    ["runs"],
    ["sql"],
    ["export"],
    ["merge"],
    ["train", "sft"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help_shows_no_python_type_names_for_options(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.code == 0, result.stderr
    options = result.stdout[result.stdout.index("Options:") :]  # typer always types an argument
    leaked = re.findall(r"\b(?:list|dict|tuple)\[\w+\]", options)
    assert not leaked, f"charter {' '.join(command)} --help shows {leaked}"
