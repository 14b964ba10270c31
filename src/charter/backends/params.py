"""The parameter and secret policy: which `--param`s are sent, stored and hashed, and redaction.

A user's `--param`s fall into three groups: request parameters (what to ask: temperature,
max_tokens, extra_body, ...), client options (how to reach the model: api_base, timeout, and
credentials) and charter's own switches. Credentials go to the client and nowhere else: everything
that records a config or a request (`runs.config`, `calls.request`) and the request cache key pass
through `redact`, which replaces every credential-looking value, at any depth, with `REDACTED`.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"

# Parameter names that carry credentials: they go to the client, never into requests we log or hash.
SECRET_PARAMS = frozenset(
    {
        "api_key",
        "headers",
        "extra_headers",
        "authorization",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "azure_ad_token",
        "vertex_credentials",
    }
)
# charter's own switches (how charter sends, not what it asks): never sent, stored or hashed.
CHARTER_PARAMS = frozenset({"charter_fast_path", "router", "endpoint_concurrency"})
# Client options (how to reach the model, not what to ask it): kept out of the cache key.
CLIENT_PARAMS = frozenset({"api_base", "base_url", "api_version", "timeout", "organization"}) | CHARTER_PARAMS

# A name that looks like a credential wherever it appears (a param, a key inside extra_body, a
# URL's query): `api_key`, `x-api-key`, `Authorization`, `session_token`, `client_secret`, ... but
# not `max_tokens` or `top_k`.
_SECRET_NAME = re.compile(
    r"(^|[_\-.])(api[_\-]?key|key|secret|password|passwd|pwd|token|auth|authorization|bearer|"
    r"credentials?|cookie|signature|sig)$",
    re.IGNORECASE,
)
# Containers whose every value is a credential or may be one (HTTP headers).
_SECRET_CONTAINERS = frozenset({"headers", "extra_headers"})
_URL = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)  # a run asks about the same few names on every call
def is_secret_name(name: str) -> bool:
    """True for a parameter, field or query name that carries a credential (case-insensitive)."""
    lowered = name.lower()
    return lowered in SECRET_PARAMS or bool(_SECRET_NAME.search(lowered))


def redact_url(url: str) -> str:
    """`url` without credentials: the userinfo and credential-looking query values replaced."""
    if not _URL.match(url):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED  # unparseable: it may hold anything
    netloc = parts.netloc
    if "@" in netloc:
        if port is not None:
            host = f"{host}:{port}"
        netloc = f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs], safe="<>")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(value: Any) -> Any:
    """A copy of `value` (params, a config, a request) with every credential replaced by `REDACTED`."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = str(key)
            if name.lower() in _SECRET_CONTAINERS and isinstance(item, dict):
                out[key] = {k: REDACTED for k in item}
            elif is_secret_name(name) and item is not None:
                out[key] = REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def _is_client(name: str) -> bool:
    return name in CLIENT_PARAMS or is_secret_name(name)


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split user `--param`s into (request parameters, client options including secrets)."""
    request = {k: v for k, v in params.items() if not _is_client(k)}
    client = {k: v for k, v in params.items() if _is_client(k)}
    return request, client


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """The `--param`s as recorded in `runs.config` (and so in default run names).

    charter's switches change how calls are sent, not what a run is, and credentials are the
    client's: both are left out (a run resumed with another key is the same run); credentials
    nested in the rest (`extra_body={"api_key": ...}`, a URL's `?key=`) are redacted.
    """
    return redact({k: v for k, v in params.items() if k not in CHARTER_PARAMS and not is_secret_name(k)})


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _stop_texts(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


# Parameters charter itself reads: checked up front, so a bad value is exit 2 before a run starts
# (not a failure on every call, or a traceback, after the database is created).
_CHECKS: dict[str, tuple[Any, str]] = {
    "timeout": (_positive_number, "a positive number of seconds"),
    "endpoint_concurrency": (_positive_int, "a positive integer"),
    "max_tokens": (_positive_int, "a positive integer"),
    "n": (_positive_int, "a positive integer"),
    "stop": (_stop_texts, "a string or a list of strings"),
}


def check_params(params: dict[str, Any], option: str = "--param") -> None:
    """Raise `ValueError` naming the parameter when a value charter reads has the wrong type."""
    for name, value in params.items():
        check = _CHECKS.get(name)
        if check is not None and not check[0](value):
            raise ValueError(f"{option} {name}={json.dumps(redact(value), default=str)}: must be {check[1]}")
