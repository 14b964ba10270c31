"""Directories that plugins register through hooks are searched like the built-in ones."""

from __future__ import annotations

from pathlib import Path

from charter.constitution import list_constitutions, load_constitution
from charter.hookspecs import hookimpl
from charter.plugins import plugin_manager, register_plugin


def test_a_plugin_constitution_dir_is_searched(tmp_path: Path) -> None:
    (tmp_path / "plugin-kindness.yaml").write_text(
        "name: plugin-kindness\nprinciples:\n  - name: kind\n    feedback: Please choose the kinder response.\n",
        encoding="utf-8",
    )

    class DirsPlugin:
        @hookimpl
        def register_constitution_dirs(self) -> list[Path]:
            return [tmp_path]

    plugin = DirsPlugin()
    register_plugin(plugin, name="test-dirs")
    try:
        assert (
            load_constitution("plugin-kindness").principles[0].feedback
            == "Please choose the kinder response."
        )
        assert "plugin-kindness" in dict(list_constitutions())
    finally:
        plugin_manager().unregister(plugin)
    assert "plugin-kindness" not in dict(list_constitutions())
