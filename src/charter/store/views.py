"""The contract's user-facing views over the tables (recreated on every open, so they can evolve)."""

from __future__ import annotations

import duckdb

VIEWS: dict[str, str] = {}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every registered view."""
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
