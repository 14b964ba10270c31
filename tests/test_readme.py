"""The README's Python examples run as written (in order, sharing one namespace, in a scratch dir)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import duckdb
import pytest

from charter.plugins import plugin_manager, unregister_plugin

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_readme_python_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) >= 4
    # A real module, as a script has one: @dataclass looks its class's module up in sys.modules.
    module = types.ModuleType("readme")
    monkeypatch.setitem(sys.modules, "readme", module)
    namespace = module.__dict__
    before = set(plugin_manager().get_plugins())
    try:
        for number, block in enumerate(blocks, start=1):
            try:
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - the message is the point
                raise AssertionError(f"README python block {number} failed: {exc!r}\n{block}") from exc
    finally:  # the README's plugins are for this test only
        for plugin in set(plugin_manager().get_plugins()) - before:
            unregister_plugin(plugin)
    out = capsys.readouterr().out
    # The tour's claims hold: prompts were revised, pairs labeled, and the plugin backend answered.
    assert "prompts revised;" in out
    assert "prompts revised by the plugin" in out
    assert re.search(r"\b([1-9]\d*) pairs labeled by letter; \1 rows in OpenAI's format", out), out
    (first, *_) = [json.loads(line) for line in Path("openai.jsonl").read_text(encoding="utf-8").splitlines()]
    assert first["preferred_output"][0]["role"] == "assistant" and first["input"]["messages"]
    con = duckdb.connect("cai.duckdb", read_only=True)
    try:
        assert con.execute("select count(*) from sft_examples").fetchone()[0] > 0  # type: ignore[index]
        assert con.execute("select count(*) from preference_pairs").fetchone()[0] > 0  # type: ignore[index]
    finally:
        con.close()
    assert Path("prefs.jsonl").stat().st_size > 0
    shout = duckdb.connect("shout.duckdb", read_only=True)
    try:
        revision = shout.execute("select revision from revisions limit 1").fetchone()[0]  # type: ignore[index]
        assert revision == revision.upper()
    finally:
        shout.close()
