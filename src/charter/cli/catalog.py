"""`charter constitutions`, `charter prompts` and `charter plugins`: what is available."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from charter.cli import common


def register(app: typer.Typer) -> None:
    """Add the catalog commands to the app."""
    constitutions = typer.Typer(help="Constitutions: lists of principles.", no_args_is_help=True)
    prompts = typer.Typer(help="Prompt templates: typed Jinja files.", no_args_is_help=True)
    app.add_typer(constitutions, name="constitutions")
    app.add_typer(prompts, name="prompts")

    @constitutions.command("list")
    def constitutions_list() -> None:
        """Every constitution visible from here, with its principle count."""
        from charter.constitution import list_constitutions, load_constitution

        for name, path in list_constitutions():
            c = load_constitution(path)
            kinds = []
            if c.critique_principles:
                kinds.append(f"{len(c.critique_principles)} critique/revision")
            if c.feedback_principles:
                kinds.append(f"{len(c.feedback_principles)} feedback")
            typer.echo(
                f"{name:<16} {', '.join(kinds):<40} {c.description.splitlines()[0] if c.description else ''}"
            )

    @constitutions.command("show")
    def constitutions_show(name: str = typer.Argument(..., help="Name or path.")) -> None:
        """Print a constitution as YAML."""
        from charter.constitution import load_constitution

        typer.echo(load_constitution(name).to_yaml(), nl=False)

    @prompts.command("list")
    def prompts_list(prompts_dir: str | None = common.PromptsDirOpt) -> None:
        """Every prompt template, its mode and where it comes from."""
        from charter.prompts import list_prompts, load_prompt

        for name, _ in list_prompts(prompts_dir):
            t = load_prompt(name, prompts_dir)
            typer.echo(f"{name:<24} {t.mode:<10} {t.description}")

    @prompts.command("show")
    def prompts_show(name: str, prompts_dir: str | None = common.PromptsDirOpt) -> None:
        """A template's typed inputs, output parser and source."""
        from charter.prompts import load_prompt

        t = load_prompt(name, prompts_dir)
        typer.echo(f"# {t.name} ({t.mode}) from {t.path}")
        typer.echo(f"# {t.description}")
        for field, type_expr in t.input_types.items():
            typer.echo(f"# input {field}: {type_expr}")
        typer.echo(f"# output: {t.output}")
        if t.stop:
            typer.echo(f"# stop: {json.dumps(t.stop)}")
        typer.echo(t.source)

    @prompts.command("render")
    def prompts_render(
        name: str,
        vars_file: Path = typer.Option(..., "--vars-file", help="JSON object with the template's inputs."),
        prompts_dir: str | None = common.PromptsDirOpt,
    ) -> None:
        """Print exactly the rendered prompt (a chat template prints its messages as JSON)."""
        from charter.prompts import load_prompt

        try:
            values = json.loads(vars_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise common.UsageError(f"{vars_file}: no such file") from None
        except json.JSONDecodeError as exc:
            raise common.UsageError(f"{vars_file}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(values, dict):
            raise common.UsageError(f"{vars_file}: expected a JSON object of inputs")
        rendered = load_prompt(name, prompts_dir).render(**values)
        typer.echo(rendered.to_display(), nl=False)

    @app.command("plugins")
    def plugins_cmd() -> None:
        """Installed plugins and what each registers."""
        from charter.plugins import plugin_infos

        for info in plugin_infos():
            where = f" [{info.distribution}]" if info.distribution else ""
            typer.echo(f"{info.name}{where}: {info.module}")
            for item in info.registers:
                typer.echo(f"  - {item}")
