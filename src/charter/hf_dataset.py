"""`charter export DB --format hf --out DIR`: the data as people load it, a Hugging Face dataset.

The directory holds one parquet file per split of HuggingFaceH4/cai-conversation-harmless
(`train_sft`, `test_sft`, `train_prefs`, `test_prefs`, with its hf-cai columns; each file name
carries a hash of its content) and a dataset card
(`README.md`: the splits in its YAML header, so `datasets.load_dataset(DIR)` returns a DatasetDict,
then the constitution and its hash, the models, the counts and the command). That is the layout the
Hub serves, so `--push-to-hub REPO` uploads the directory as it is.

The split is seeded and made by prompt, not by row: every row of one conversation (its SFT rounds
and its preference pairs) lands in the same split, so no test prompt was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train_sft", "test_sft", "train_prefs", "test_prefs")
CARD = "README.md"


class HubError(RuntimeError):
    """The Hub refused or failed an upload (exit status 1: the local dataset is written)."""


@dataclass
class HFExport:
    """What `export_hf` wrote."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pushed_to: str | None = None


def in_test_split(conversation: Any, seed: int, test_fraction: float) -> bool:
    """Whether a conversation belongs to the test split: a seeded hash, the same for every row of it."""
    blob = json.dumps([seed, conversation], sort_keys=True, ensure_ascii=False)
    bucket = int(hashlib.sha256(blob.encode()).hexdigest()[:12], 16) / float(16**12)
    return bucket < test_fraction


def _conversation_key(row: dict[str, Any]) -> Any:
    # hf-cai rows carry the conversation as `messages`/`chosen` (ending with the assistant turn).
    messages = row.get("chosen") or row.get("messages") or []
    return [m for m in messages[:-1]] if messages else row.get("prompt")


def _collect(
    db: str | Path,
    dataset: str,
    run: str | None,
    where: str | None,
    final_only: bool,
    echo: Callable[[str], None],
) -> tuple[list[dict[str, Any]], str | None]:
    from charter.export import export_rows

    try:
        kwargs: dict[str, Any] = {"run": run, "where": where, "echo": echo}
        if dataset == "sft":
            kwargs["final_only"] = final_only
        return list(export_rows(db, dataset, "hf-cai", **kwargs)), None
    except ValueError as exc:
        return [], str(exc)


def _write_split(pq: Any, pa: Any, rows: list[dict[str, Any]], schema: Any, data: Path, split: str) -> str:
    """Write one split's parquet file; returns its name, which carries a hash of its content.

    `datasets` caches a local dataset under a hash of its data file *names*: a re-export to the
    same directory with unchanged names would load the old rows from that cache.
    """
    table = pa.Table.from_pylist(rows, schema=schema) if schema is not None else pa.Table.from_pylist(rows)
    tmp = data / f"{split}.parquet.tmp"
    pq.write_table(table, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:12]
    name = f"{split}-{digest}.parquet"
    tmp.replace(data / name)
    return name


def _card(
    db: str | Path,
    counts: dict[str, int],
    files: dict[str, str],
    provenance: dict[str, Any],
    command: str,
    seed: int,
    fraction: float,
) -> str:
    from charter import __version__

    splits = [s for s in SPLITS if s in counts]
    header = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        header += [f"  - split: {split}", f"    path: data/{files[split]}"]
    header += ["tags:", "- constitutional-ai", "- rlaif", "- charter", "---", ""]
    lines = [
        f"# Constitutional AI data from {Path(db).name}",
        "",
        f"Made with charter {__version__} (Constitutional AI, Bai et al. 2022) from the DuckDB file `{db}`:",
        "",
        f"    {command}",
        "",
        "The columns are those of HuggingFaceH4/cai-conversation-harmless (`init_prompt`, `init_response`, "
        "`critic_prompt`, `critic_response`, `revision_prompt`, `revision_response`, `prompt`, `messages`, "
        "`chosen`, `rejected`).",
        f"The split is by conversation, seeded (seed {seed}, test fraction {fraction}): every row of one "
        "conversation is in the same split.",
        "",
        "## Splits",
        "",
        "| split | rows |",
        "| --- | --- |",
        *(f"| {s} | {counts[s]} |" for s in splits),
        "",
        "## Constitutions",
        "",
    ]
    constitutions = provenance["constitutions"] or [("(none recorded)", "", "")]
    lines += ["| run | constitution | sha256 |", "| --- | --- | --- |"]
    lines += [f"| {run} | {name} | `{digest}` |" for run, name, digest in constitutions]
    lines += ["", "## Models", "", "| run | command | model |", "| --- | --- | --- |"]
    lines += [f"| {run} | {cmd} | {model} |" for run, cmd, model in provenance["models"]]
    return "\n".join(header + lines) + "\n"


def _provenance(db: str | Path) -> dict[str, Any]:
    """Which constitutions (with hashes) and models the runs in `db` used, from runs.config."""
    from charter.store.store import open_read_only

    con = open_read_only(db)
    try:
        rows = con.execute("SELECT name, command, config FROM runs ORDER BY started_at").fetchall()
    finally:
        con.close()
    constitutions, models = [], []
    for name, command, raw in rows:
        try:
            config = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        except ValueError:
            config = {}
        if config.get("constitution"):
            constitutions.append((name, config["constitution"], config.get("constitution_hash", "")))
        if config.get("model"):
            models.append((name, command, config["model"]))
    return {"constitutions": constitutions, "models": models}


def check_hub_token(token: str | None) -> str:
    """The token an upload would use (the argument, HF_TOKEN, or a saved login), or a ValueError."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            "--push-to-hub: the Hub is switched off (HF_HUB_OFFLINE is set); nothing was written"
        )
    found = token or get_token()
    if not found:
        raise ValueError(
            "--push-to-hub needs a Hugging Face token: set HF_TOKEN (or run `hf auth login`); "
            "nothing was written"
        )
    return found


def push(out: Path, repo: str, token: str, private: bool = False) -> str:
    """Create the dataset repo (if needed) and upload the directory; returns the repo's URL."""
    from huggingface_hub import HfApi

    # HF_ENDPOINT is read here, not at import, so a test (or a mirror) set after import is honoured.
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=out, repo_type="dataset", commit_message="charter export")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HubError(f"push to {repo} failed: {type(exc).__name__}: {first[:300]}") from None
    return str(url)


def export_hf(
    db: str | Path,
    out: str | Path,
    *,
    run: str | None = None,
    where: str | None = None,
    final_only: bool = False,
    test_fraction: float = 0.1,
    seed: int = 0,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool = False,
    echo: Callable[[str], None] | None = None,
    command: str | None = None,
) -> HFExport:
    """Write the four cai-conversation-harmless splits and a dataset card to the directory `out`.

    Raises ValueError (bad input, nothing written) when neither SFT rows nor preference pairs match,
    and HubError when `push_to_hub` fails after the directory was written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    say = echo or (lambda _: None)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"--test-fraction {test_fraction}: expected a number in [0, 1)")
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {target}: exists and is not a directory (--format hf writes a directory)")
    if target.exists() and any(target.iterdir()) and not (target / CARD).is_file():
        raise ValueError(
            f"--out {target}: a non-empty directory that is not a charter dataset; give a new one"
        )
    hub_token = check_hub_token(token) if push_to_hub else None
    result = HFExport(out=target)
    sft, sft_error = _collect(db, "sft", run, where, final_only, say)
    prefs, prefs_error = _collect(db, "preferences", run, where, False, say)
    if not sft and not prefs:
        raise ValueError(
            f"nothing to export from {db}: {sft_error or 'no SFT rows'}; {prefs_error or 'no pairs'}"
        )
    parts: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for kind, rows in (("sft", sft), ("prefs", prefs)):
        for row in rows:
            split = "test" if in_test_split(_conversation_key(row), seed, test_fraction) else "train"
            parts[f"{split}_{kind}"].append(row)
    if not sft:
        result.notes.append(f"no SFT splits: {sft_error or 'no rows'}")
    if not prefs:
        result.notes.append(f"no preference splits: {prefs_error or 'no rows'}")
    present = [s for s in SPLITS if (sft if s.endswith("sft") else prefs)]
    # Written next to the target and renamed into place, so a failure never leaves half a dataset.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (staging / "data").mkdir()
        schemas: dict[str, Any] = {}
        files: dict[str, str] = {}
        for split in present:
            kind = split.split("_", 1)[1]
            rows = parts[split]
            if kind not in schemas:
                sample = parts[f"train_{kind}"] or parts[f"test_{kind}"]
                schemas[kind] = pa.Table.from_pylist(sample).schema
            files[split] = _write_split(pq, pa, rows, schemas[kind], staging / "data", split)
            result.counts[split] = len(rows)
        cmd = command or " ".join(["charter", *sys.argv[1:]])
        (staging / CARD).write_text(
            _card(db, result.counts, files, _provenance(db), cmd, seed, test_fraction), encoding="utf-8"
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if push_to_hub:
        assert hub_token is not None
        result.pushed_to = push(target, push_to_hub, hub_token, private)
    return result
