"""Where charter's built-in data (prompt templates, constitutions) lives on disk."""

from __future__ import annotations

from pathlib import Path

DATA_KINDS = ("constitutions", "prompts", "evals")


def builtin_data_dir(kind: str) -> Path:
    """The directory of built-in `kind` data, for `kind` in ("constitutions", "prompts", "evals").

    A wheel carries the repo's top-level `prompts/`, `constitutions/` and `evals/` as `charter/_data/<kind>`
    (pyproject force-include); an editable install reads them straight from the checkout.
    """
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(DATA_KINDS)}")
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "_data" / kind
    if installed.is_dir():
        return installed
    # src/charter/resources.py -> parents[2] is the checkout root.
    checkout = Path(__file__).resolve().parents[2] / kind
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"charter's built-in {kind} directory is missing: looked in {installed} (wheel install) "
        f"and {checkout} (source checkout); reinstall charter"
    )
