"""The fake server's batch API: ``/v1/files`` and ``/v1/batches``, as OpenAI serves them.

Mounted by :class:`charter_testing.fake_openai.FakeOpenAIServer` (``server.batches``)::

    POST /v1/files                  upload a JSONL file (multipart, purpose=batch)
    GET  /v1/files/{id}             the file object
    GET  /v1/files/{id}/content     the file's bytes (inputs, outputs and error files)
    POST /v1/batches                create a batch from an uploaded file (status "validating")
    GET  /v1/batches/{id}           the batch; each look moves it on one status:
                                    validating -> in_progress -> finalizing -> completed
    GET  /v1/batches                list (newest first), as OpenAI pages them
    POST /v1/batches/{id}/cancel    cancel it

Each line of a batch is answered, when the batch completes, by the server's own chat/completions
code and responder, so a batch answers exactly what the online endpoint would. Faults for tests:
:meth:`FakeBatchAPI.hold` keeps batches in progress until :meth:`release`; :meth:`fail_lines`
answers the next lines with an error status (they go to the error file, like OpenAI's);
:meth:`expire_next` lets the next batch run only some lines and then expire (the rest are
``batch_expired`` errors). Every line of every created batch is counted (:attr:`lines_submitted`,
:attr:`submitted_ids`), which is how tests prove no request was submitted twice.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

from aiohttp import web

__all__ = ["ENDPOINTS", "FakeBatchAPI"]

#: Batch endpoints served, and the server method that answers each line.
ENDPOINTS = {"/v1/chat/completions": "_chat", "/v1/completions": "_completion"}
_STEPS = ("validating", "in_progress", "finalizing", "completed")
_DONE = frozenset({"completed", "failed", "expired", "cancelled"})


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": {"message": message, "type": "invalid_request_error", "param": None}}, status)


class FakeBatchAPI:
    """Files and batches held in memory; answers lines through ``server`` (a FakeOpenAIServer)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, Any]] = {}
        self._contents: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._held = False
        self._fail: list[int] = []  # statuses for the next lines run
        self._expire: list[int] = []  # for the next batches: lines run before it expires
        #: custom_ids of every line of every batch created, in order (duplicates stay).
        self.submitted_ids: list[str] = []

    # ----------------------------------------------------------------- test controls
    @property
    def lines_submitted(self) -> int:
        """Requests submitted in batches since start."""
        with self._lock:
            return len(self.submitted_ids)

    @property
    def batches_created(self) -> int:
        """Batches created since start (failed validation included)."""
        with self._lock:
            return len(self._batches)

    def hold(self) -> None:
        """Keep every batch at ``in_progress`` (looks do not move it on) until :meth:`release`."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        """Let held batches move on again."""
        with self._lock:
            self._held = False

    def fail_lines(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` lines run with HTTP ``status`` (an error-file line each)."""
        with self._lock:
            self._fail.extend([status] * count)

    def expire_next(self, run_lines: int = 0) -> None:
        """The next batch created runs only its first ``run_lines`` lines, then expires."""
        with self._lock:
            self._expire.append(run_lines)

    # ----------------------------------------------------------------- HTTP
    async def handle(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """Answer one ``/files`` or ``/batches`` request (``path`` without the ``/v1`` prefix)."""
        parts = [p for p in path.split("/") if p]
        method = request.method
        if parts == ["files"] and method == "POST":
            return await self._upload(request)
        if len(parts) == 2 and parts[0] == "files" and method == "GET":
            with self._lock:
                meta = self._files.get(parts[1])
            return _json(meta) if meta else _error(404, f"No such File object: {parts[1]}")
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and method == "GET":
            with self._lock:
                data = self._contents.get(parts[1])
            if data is None:
                return _error(404, f"No such File object: {parts[1]}")
            return web.Response(body=data, content_type="application/octet-stream")
        if parts == ["batches"] and method == "POST":
            try:
                body = json.loads(await request.read())
            except ValueError:
                return _error(400, "request body must be JSON")
            return self._create(body if isinstance(body, dict) else {})
        if parts == ["batches"] and method == "GET":
            with self._lock:
                listed = [_public(b) for b in reversed(self._batches.values())]
            return _json({"object": "list", "data": listed, "has_more": False})
        if len(parts) == 2 and parts[0] == "batches" and method == "GET":
            return self._look(parts[1])
        if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel" and method == "POST":
            with self._lock:
                batch = self._batches.get(parts[1])
                if batch is not None and batch["status"] not in _DONE:
                    batch.update(status="cancelled", cancelled_at=int(time.time()))
            return _json(batch) if batch else _error(404, f"No such Batch object: {parts[1]}")
        return _error(404, f"no route for {method} {request.path}")

    async def _upload(self, request: web.BaseRequest) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return _error(400, "upload a file as multipart/form-data")
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch" or not isinstance(upload, web.FileField):
            return _error(400, "a batch input needs purpose=batch and a file part")
        data = upload.file.read()
        meta = self._add_file(data, str(getattr(upload, "filename", "input.jsonl")), "batch")
        return _json(meta)

    def _add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-fake{next(self._ids)}"
            meta = {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
            }
            self._files[file_id] = meta
            self._contents[file_id] = data
        return meta

    def _create(self, body: dict[str, Any]) -> web.Response:
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            return _error(400, f"endpoint must be one of {sorted(ENDPOINTS)}")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'")
        file_id = str(body.get("input_file_id"))
        with self._lock:
            data = self._contents.get(file_id)
        if data is None:
            return _error(400, f"No such File object: {file_id}")
        now = int(time.time())
        lines, errors = self._parse_input(data, str(endpoint))
        with self._lock:
            batch_id = f"batch_fake{next(self._ids)}"
            batch: dict[str, Any] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": endpoint,
                "errors": None,
                "input_file_id": file_id,
                "completion_window": "24h",
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "expires_at": now + 86400,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            if errors:
                batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            else:
                self.submitted_ids.extend(line["custom_id"] for line in lines)
                batch["_lines"] = lines
                batch["_expire"] = self._expire.pop(0) if self._expire else None
            self._batches[batch_id] = batch
        return _json(_public(batch))

    @staticmethod
    def _parse_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The lines of an input file, or the validation errors OpenAI would report."""
        lines: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append({"code": "invalid_json", "message": "not JSON", "line": number})
                continue
            problem = None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                problem = "missing custom_id"
            elif line["custom_id"] in seen:
                problem = f"duplicate custom_id {line['custom_id']!r}"
            elif line.get("method") != "POST" or line.get("url") != endpoint:
                problem = f"method must be POST and url {endpoint}"
            elif not isinstance(line.get("body"), dict):
                problem = "missing body"
            if problem:
                errors.append({"code": "invalid_request", "message": problem, "line": number})
                continue
            seen.add(line["custom_id"])
            lines.append(line)
        if not lines and not errors:
            errors.append({"code": "empty_file", "message": "the input file has no requests", "line": None})
        return lines, errors

    def _look(self, batch_id: str) -> web.Response:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return _error(404, f"No such Batch object: {batch_id}")
            status = batch["status"]
            if status not in _DONE and not (self._held and status == "in_progress"):
                following = _STEPS[_STEPS.index(status) + 1]
                if following == "in_progress":
                    batch["in_progress_at"] = int(time.time())
                if following == "completed":
                    self._finish(batch)
                else:
                    batch["status"] = following
            return _json(_public(batch))

    def _finish(self, batch: dict[str, Any]) -> None:
        """Run the batch's lines (under the lock), write its output and error files."""
        lines: list[dict[str, Any]] = batch.pop("_lines")
        expire = batch.pop("_expire")
        out: list[str] = []
        err: list[str] = []
        for i, line in enumerate(lines):
            custom_id = line["custom_id"]
            if expire is not None and i >= expire:
                err.append(
                    json.dumps(
                        {
                            "id": f"batch_req_{custom_id}",
                            "custom_id": custom_id,
                            "response": None,
                            "error": {
                                "code": "batch_expired",
                                "message": "This request could not be executed before the completion "
                                "window expired.",
                            },
                        }
                    )
                )
                continue
            status, body = self._answer(batch["endpoint"], line["body"])
            record = json.dumps(
                {
                    "id": f"batch_req_{custom_id}",
                    "custom_id": custom_id,
                    "response": {"status_code": status, "request_id": f"req_{custom_id}", "body": body},
                    "error": None,
                }
            )
            (out if status == 200 else err).append(record)
        now = int(time.time())
        counts = {"total": len(lines), "completed": len(out), "failed": len(err)}
        batch.update(request_counts=counts, finalizing_at=now)
        if expire is not None:
            batch.update(status="expired", expired_at=now)
        else:
            batch.update(status="completed", completed_at=now)
        self._lock.release()  # _add_file takes the lock itself
        try:
            if out:
                batch["output_file_id"] = self._add_file(
                    "".join(r + "\n" for r in out).encode(), "batch_output.jsonl", "batch_output"
                )["id"]
            if err:
                batch["error_file_id"] = self._add_file(
                    "".join(r + "\n" for r in err).encode(), "batch_errors.jsonl", "batch_output"
                )["id"]
        finally:
            self._lock.acquire()

    def _answer(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One line's (status, body), from the server's own endpoint code."""
        from charter_testing.fake_openai import _BadRequest

        if self._fail:
            status = self._fail.pop(0)
            return status, {"error": {"message": f"injected line failure ({status})", "type": "server_error"}}
        try:
            return 200, getattr(self.server, ENDPOINTS[endpoint])(body)
        except _BadRequest as exc:
            return 400, {"error": {"message": str(exc), "type": "invalid_request_error"}}
        except Exception as exc:
            return 500, {"error": {"message": f"responder failed: {exc!r}", "type": "server_error"}}


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}
