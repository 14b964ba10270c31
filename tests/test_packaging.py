"""Packaging: the wheel carries prompts and constitutions, an install finds them, and `import charter` is light."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from charter_testkit import REPO, subprocess_env

from charter.resources import builtin_data_dir

PROMPT_FILES = sorted(p.name for p in (REPO / "prompts").glob("*.jinja"))
CONSTITUTION_FILES = sorted(p.name for p in (REPO / "constitutions").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # With the build backend installed (the dev extra) the build needs nothing else; without it, pip
    # fetches hatchling into an isolated environment from the configured package index.
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)]
    if importlib.util.find_spec("hatchling"):
        command.insert(4, "--no-build-isolation")
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("charter-*.whl")
    return path


def test_the_wheel_carries_prompts_constitutions_and_the_entry_points(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert PROMPT_FILES and CONSTITUTION_FILES
    assert {f"charter/_data/prompts/{n}" for n in PROMPT_FILES} <= names
    assert {f"charter/_data/constitutions/{n}" for n in CONSTITUTION_FILES} <= names
    assert {"charter/__init__.py", "charter/__main__.py"} <= names
    # The fake server is a test helper of its own distribution (plugins/charter-testing).
    assert not any(n.startswith(("charter/testing/", "charter_testing/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[charter]\ncore = charter.default_plugins" in text
    assert "charter = charter.cli:main" in text
    assert not any(n.startswith(("tests/", "charter/tests/")) for n in names)


def test_an_installed_wheel_finds_its_data(wheel, tmp_path):
    # A pure-Python wheel unpacked onto the path is what pip installs; it must not need the checkout.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import json, charter.resources as r; from charter.prompts import list_prompts;"
        "from charter.constitution import list_constitutions;"
        "print(json.dumps([str(r.builtin_data_dir('prompts')), [n for n, _ in list_prompts()],"
        " [n for n, _ in list_constitutions()], r.__file__]))"
    )
    env = subprocess_env(PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data_dir, prompts, constitutions, module = json.loads(out.stdout)
    assert Path(module).is_relative_to(site)
    assert Path(data_dir) == site / "charter" / "_data" / "prompts"
    assert set(prompts) >= {n.removesuffix(".jinja") for n in PROMPT_FILES}
    assert set(constitutions) >= {n.removesuffix(".yaml") for n in CONSTITUTION_FILES}


def test_an_editable_install_reads_the_checkout():
    assert builtin_data_dir("prompts") == REPO / "prompts"
    assert builtin_data_dir("constitutions") == REPO / "constitutions"
    with pytest.raises(ValueError, match="unknown data kind"):
        builtin_data_dir("models")


def test_import_charter_is_fast_and_does_not_import_litellm():
    # Fast is checked by what gets imported, not by a clock (timed tests flake on a busy machine):
    # bare `import charter` loads none of its heavy dependencies, and the CLI modules no litellm/torch.
    code = (
        "import json, sys; import charter;"
        "bare = sorted(m for m in ('duckdb', 'pydantic', 'jinja2', 'litellm', 'pyarrow') if m in sys.modules);"
        "import charter.cli, charter.sl, charter.steps, charter.export, charter.store;"
        "print(json.dumps([bare, sorted(m for m in ('litellm', 'torch', 'transformers', 'openai') if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    bare, heavy = json.loads(out.stdout)
    assert heavy == []
    assert bare == []
