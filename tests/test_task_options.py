"""The options of `charter revise|sample|label` are derived from each task's Config: they must stay
what users type (names, flags, metavars, defaults, ranges), the pipeline and the Python API must
validate with the same rules, and the commands are importable functions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer.main

from charter.cli import app

EXPECTED = Path(__file__).parent / "data" / "task_cli_options.json"
COMMANDS = ("revise", "sample", "label")
METHODS = "cot, logprobs (the installed label methods)"  # no plugin adds one in these tests


def describe(name: str) -> list[dict[str, object]]:
    """Each parameter of `charter NAME` as click sees it (what --help and parsing are made of)."""
    group = typer.main.get_command(app)  # typer's own (vendored) click group
    command = group.commands[name]  # type: ignore[attr-defined]
    out = []
    for p in command.params:
        item: dict[str, object] = {
            "name": p.name,
            "opts": list(p.opts),
            "secondary": list(getattr(p, "secondary_opts", [])),
            "required": p.required,
            "multiple": p.multiple,
            "default": None if callable(p.default) else json.loads(json.dumps(p.default, default=str)),
            "type": str(p.type_descriptor.annotation),  # type: ignore[attr-defined]
            "min": getattr(p, "min", None),
            "max": getattr(p, "max", None),
            "is_flag": getattr(p, "is_flag", None),
            "metavar": p.metavar,
            "help": getattr(p, "help", None),
        }
        out.append(item)
    return out


@pytest.mark.parametrize("name", COMMANDS)
def test_derived_options_are_the_ones_users_type(name):
    # The expectation was written from the hand-declared options before they were derived (main,
    # with r2's addition to the --method help).
    expected = json.loads(EXPECTED.read_text())[name]
    assert describe(name) == expected


def test_bad_value_is_one_line_naming_the_option(cli, tmp_path):
    db = tmp_path / "x.duckdb"
    for args, message in [
        (["--method", "vibes"], f"--method 'vibes': expected one of {METHODS}"),
        (["--clamp", "0.9,0.1"], "--clamp '0.9,0.1': need 0 <= low <= high <= 1"),
        (["--cot-samples", "3"], "--cot-samples samples chains of thought: it needs --method cot"),
        (["--param", "nokey"], "--param 'nokey': expected key=value"),
    ]:
        result = cli("label", "--db", str(db), "-m", "openai/x", *args)
        assert result.code == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [f"charter: error: {message}"]
    assert not db.exists()  # nothing written


def test_api_and_pipeline_validate_with_the_commands_rules(tmp_path):
    from charter import rl
    from charter.pipeline import PipelineError, run_pipeline

    with pytest.raises(ValueError, match=r"^--cot-samples samples chains of thought: it needs --method cot$"):
        rl.label(db=tmp_path / "x.duckdb", model="openai/x", cot_samples=2)
    with pytest.raises(ValueError, match=f"^--method 'vibes': expected one of {re.escape(METHODS)}$"):
        rl.label(db=tmp_path / "x.duckdb", model="openai/x", method="vibes")  # type: ignore[arg-type]
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "db: out.duckdb\ndefaults: {model: openai/x}\nsteps:\n  - label: {method: logprobs, cot_samples: 3}\n"
    )
    with pytest.raises(PipelineError, match=r"steps\[0\]\.label: --cot-samples samples chains of thought"):
        run_pipeline(pipeline)
    pipeline.write_text(
        "db: out.duckdb\ndefaults: {model: openai/x}\nsteps:\n  - label:\n      method: vibes\n"
    )
    with pytest.raises(
        PipelineError,
        match=re.escape(f"steps[0].label.method: --method 'vibes': expected one of {METHODS} (line 5)"),
    ):
        run_pipeline(pipeline)
    assert not (tmp_path / "out.duckdb").exists() and not Path("out.duckdb").exists()


def test_commands_are_importable_functions(tmp_path):
    from charter.cli.common import UsageError
    from charter.cli.revise import revise_cmd
    from charter.cli.rl import label_cmd, sample_cmd

    assert callable(revise_cmd) and callable(sample_cmd)
    with pytest.raises(UsageError, match="give exactly one of --prompts PROMPTS or --from-run NAME"):
        sample_cmd(db=tmp_path / "x.duckdb", model="openai/x")
    with pytest.raises(UsageError, match="--mode 'banana': expected chat or completion"):
        label_cmd(db=tmp_path / "x.duckdb", model="openai/x", mode="banana")
