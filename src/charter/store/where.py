"""`--where EXPR`: a user's SQL filter, checked to be one expression before it joins a query.

`charter export`, `charter train` and pipeline export steps append the filter to their own
`SELECT ... WHERE`. Pasted in as text, `true); COPY ... TO 'file'; SELECT (1` would be three
statements and `1) UNION SELECT ... (1` a different query. So the expression is tokenized with
DuckDB's own tokenizer (string literals and quoted names stay opaque): its parentheses must balance
without ever closing one it did not open, and it may hold no `;` and no comment; then DuckDB's
parser must read `SELECT * FROM t WHERE (EXPR)` as exactly one SELECT. The query still runs on a
read-only, engine-locked connection (`open_read_only`), so even an expression that got past this
could not write.
"""

from __future__ import annotations

import duckdb


def where_sql(where: str) -> str:
    """`(where)` ready to append after `AND`; `ValueError` naming `--where` if it is not one expression."""
    text = where.strip()
    if not text:
        raise ValueError("--where '': expected an SQL expression, e.g. \"principle = 'harmless'\"")
    try:
        tokens = duckdb.tokenize(text)
    except Exception as exc:
        raise ValueError(f"--where {where!r}: {_first_line(exc)}") from None
    depth = 0
    for index, (start, kind) in enumerate(tokens):
        end = tokens[index + 1][0] if index + 1 < len(tokens) else len(text)
        if kind == duckdb.token_type.comment:
            raise ValueError(f"--where {where!r}: comments are not allowed in a filter expression")
        if kind != duckdb.token_type.operator:
            continue
        for char in text[start:end]:
            if char == ";":
                raise ValueError(f"--where {where!r}: must be one expression (no ';')")
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth < 0:
                raise ValueError(f"--where {where!r}: unbalanced ')'")
    if depth:
        raise ValueError(f"--where {where!r}: unbalanced '('")
    wrapped = f"({text})"
    try:
        statements = duckdb.extract_statements(f"SELECT * FROM t WHERE {wrapped}")
    except duckdb.Error as exc:
        raise ValueError(f"--where {where!r}: {_first_line(exc)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError(f"--where {where!r}: must be one expression")
    return wrapped


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
