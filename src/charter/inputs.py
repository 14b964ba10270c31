"""Reading prompts files: .jsonl, .txt, .csv, .parquet or `-` (stdin), streamed.

Each file is read twice: `scan_prompts` validates everything first (so bad input writes nothing
and exits 2 with file, line and field), then `iter_prompts` streams the records into the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from charter.records import Message, PromptRecord

SUFFIXES = (".jsonl", ".txt", ".csv", ".parquet")


class InputError(ValueError):
    """Bad input; the message names the file, the line and the field."""


def check_output_path(out: str | Path, inputs: Iterable[str | Path], option: str = "--out") -> None:
    """Refuse an output that is a directory or one of the inputs (same path, link or inode)."""
    target = Path(out)
    if target.is_dir():
        raise InputError(f"{option} {target}: is a directory; give a file name")
    if not target.exists():
        return
    for item in inputs:
        source = Path(item)
        if source.exists() and (source.resolve() == target.resolve() or source.samefile(target)):
            raise InputError(f"{option} {target}: is the input {source}; writing it would destroy it")


T = TypeVar("T")


def started(items: Iterator[T]) -> Iterator[T]:
    """Run a generator up to its first item now, so its errors come before the caller writes anything."""
    try:
        first = next(items)
    except StopIteration:
        return iter(())
    return itertools.chain([first], items)


@dataclass
class PromptSource:
    """A prompts file (or stdin, read into memory once) that can be scanned and then streamed."""

    path: str
    _stdin_text: str | None = None

    @classmethod
    def open(cls, path: str | Path) -> PromptSource:
        """Check the file exists and has a known format."""
        text = str(path)
        if text == "-":
            return cls("-", sys.stdin.read())
        p = Path(text)
        if not p.is_file():
            raise InputError(f"{text}: no such file")
        if p.suffix.lower() not in SUFFIXES:
            raise InputError(f"{text}: unknown prompts format {p.suffix!r}; use {', '.join(SUFFIXES)} or -")
        return cls(text)

    def records(self) -> Iterator[PromptRecord]:
        """Stream the prompts, in file order."""
        if self.path == "-":
            yield from _from_stdin(self._stdin_text or "")
            return
        suffix = Path(self.path).suffix.lower()
        reader = {".jsonl": _from_jsonl, ".txt": _from_txt, ".csv": _from_csv, ".parquet": _from_parquet}[
            suffix
        ]
        yield from reader(self.path)


@dataclass
class PromptScan:
    """What validating a prompts file found."""

    count: int
    content_hash: str


def scan_prompts(
    source: PromptSource, limit: int | None = None, owns: Callable[[str], bool] | None = None
) -> PromptScan:
    """Validate every prompt (raising `InputError` at the first bad one); count and hash them.

    The hash covers the first `limit` prompts; with `owns` (a shard's test) only the prompts it
    owns among them are counted, so a shard needs no second pass over the file for its total.
    """
    digest = hashlib.sha256()
    seen: dict[str, str] = {}
    count = scanned = 0
    for record in dedup(source.records(), seen_contents=seen, source=source.path):
        if limit is not None and scanned >= limit:
            break
        scanned += 1
        digest.update(record.prompt_id.encode())
        if owns is None or owns(record.prompt_id):
            count += 1
    if not scanned:
        # An empty file (or an empty pipe) is a mistake, not an empty job that "succeeds".
        where = "<stdin>" if source.path == "-" else source.path
        raise InputError(f"{where}: no prompts (the input is empty)")
    return PromptScan(count=count, content_hash=digest.hexdigest()[:16])


def iter_prompts(source: PromptSource, limit: int | None = None) -> Iterator[PromptRecord]:
    """Stream validated, de-duplicated prompts (call `scan_prompts` first for clean errors)."""
    for i, record in enumerate(dedup(source.records(), seen_contents={}, source=source.path)):
        if limit is not None and i >= limit:
            return
        yield record


def dedup(
    records: Iterable[PromptRecord], *, seen_contents: dict[str, str], source: str
) -> Iterator[PromptRecord]:
    """Drop exact repeats; the same id used for two different prompts is an error."""
    for record in records:
        content = PromptRecord.stable_id(record.messages)
        previous = seen_contents.get(record.prompt_id)
        if previous is not None:
            if previous != content:
                raise InputError(
                    f"{source}: line {record.source_line}: id: {record.prompt_id!r} is used for two different prompts"
                )
            continue
        seen_contents[record.prompt_id] = content
        yield record


def _record(messages: list[Message], given_id: Any, where: str, line: int) -> PromptRecord:
    if not messages or messages[-1].role != "user":
        raise InputError(f"{where}: line {line}: messages: the conversation must end with a user turn")
    if given_id is not None and not isinstance(given_id, (str, int)):
        raise InputError(f"{where}: line {line}: id: must be a string or an integer")
    prompt_id = (
        str(given_id) if given_id is not None and str(given_id) != "" else PromptRecord.stable_id(messages)
    )
    return PromptRecord(prompt_id=prompt_id, messages=messages, source_line=line)


def _from_object(obj: Any, where: str, line: int) -> PromptRecord:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: line {line}: expected a JSON object with a 'prompt' or 'messages' field")
    if "messages" in obj:
        raw = obj["messages"]
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except (json.JSONDecodeError, RecursionError):
                raise InputError(f"{where}: line {line}: messages: not a JSON list") from None
        if not isinstance(raw, list):
            raise InputError(f"{where}: line {line}: messages: must be a list of {{role, content}}")
        messages = []
        for index, item in enumerate(raw):
            try:
                messages.append(Message.model_validate(item))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = "".join(f".{p}" for p in err["loc"])
                raise InputError(f"{where}: line {line}: messages[{index}]{loc}: {err['msg']}") from None
    elif "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: line {line}: prompt: must be a non-empty string")
        messages = [Message(role="user", content=prompt)]
    else:
        raise InputError(f"{where}: line {line}: missing field 'prompt' (or 'messages')")
    return _record(messages, obj.get("id"), where, line)


def _from_jsonl_lines(lines: Iterable[str], where: str) -> Iterator[PromptRecord]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: line {number}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise InputError(f"{where}: line {number}: invalid JSON: nested too deeply") from None
        yield _from_object(obj, where, number)


def _from_jsonl(path: str) -> Iterator[PromptRecord]:
    with open(path, encoding="utf-8") as f:
        yield from _from_jsonl_lines(f, path)


def _from_txt_lines(lines: Iterable[str], where: str) -> Iterator[PromptRecord]:
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield _record([Message(role="user", content=text)], None, where, number)


def _from_txt(path: str) -> Iterator[PromptRecord]:
    with open(path, encoding="utf-8") as f:
        yield from _from_txt_lines(f, path)


# Python's csv module refuses fields over 128 KiB by default; a long document is a fair prompt.
CSV_FIELD_LIMIT = 16 * 1024 * 1024


def _from_csv(path: str) -> Iterator[PromptRecord]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            yield from _csv_records(reader, path)
        except csv.Error as exc:
            raise InputError(f"{path}: line {reader.line_num + 1}: not valid CSV: {exc}") from None


def _csv_records(reader: csv.DictReader[str], path: str) -> Iterator[PromptRecord]:
    if not reader.fieldnames or ("prompt" not in reader.fieldnames and "messages" not in reader.fieldnames):
        raise InputError(f"{path}: line 1: missing column 'prompt'")
    for row in reader:
        # reader.line_num counts physical lines, so multi-line quoted prompts report correctly.
        obj = {k: v for k, v in row.items() if k in ("prompt", "messages", "id") and v not in (None, "")}
        if "prompt" not in obj and "messages" not in obj:
            raise InputError(f"{path}: line {reader.line_num}: prompt: must be a non-empty string")
        yield _from_object(obj, path, reader.line_num)


def _from_parquet(path: str) -> Iterator[PromptRecord]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable parquet file: {exc}") from None
    names = set(file.schema_arrow.names)
    if "prompt" not in names and "messages" not in names:
        raise InputError(f"{path}: missing column 'prompt'")
    columns = [c for c in ("prompt", "messages", "id") if c in names]
    row_number = 0
    for batch in file.iter_batches(batch_size=2048, columns=columns):
        for obj in batch.to_pylist():
            row_number += 1
            clean = {k: v for k, v in obj.items() if v is not None}
            yield _from_object(clean, path, row_number)


def _from_stdin(text: str) -> Iterator[PromptRecord]:
    stripped = text.lstrip()
    lines = io.StringIO(text)
    if stripped.startswith("{"):
        yield from _from_jsonl_lines(lines, "<stdin>")
    else:
        yield from _from_txt_lines(lines, "<stdin>")
