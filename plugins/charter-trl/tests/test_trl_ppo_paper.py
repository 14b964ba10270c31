"""PPO with the paper's settings: a real pad token (never EOS) for every model, and warnings on deviations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from charter_trl import PPOOptions, RewardOptions, train_ppo, train_reward
from charter_trl.options import paper_deviations
from charter_trl_testdata import make_pairs
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def no_pad_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its pad token removed, as GPT-2 or Llama base checkpoints ship."""
    out = tmp_path_factory.mktemp("nopad") / "model"
    shutil.copytree(tiny_model, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(out)
    config = AutoConfig.from_pretrained(out)
    config.pad_token_id = None
    config.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).pad_token is None
    return out


def test_ppo_pads_with_its_own_token_not_eos(
    no_pad_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trl.experimental.ppo import ppo_trainer

    # The reward model is trained the way charter trains it (its tokenizer pads with EOS).
    reward_dir = tmp_path / "pm"
    train_reward(make_pairs(8), no_pad_model, reward_dir, RewardOptions(max_steps=2, batch_size=4))
    base = AutoTokenizer.from_pretrained(no_pad_model)
    eos_id = base.eos_token_id

    seen: list[dict[str, Any]] = []
    real_batch_generation = ppo_trainer.batch_generation

    def recording(model: Any, queries: Any, local_rollout_forward_batch_size: int, pad_token_id: int, *a: Any, **k: Any) -> Any:  # fmt: skip
        seen.append({"pad": pad_token_id, "queries": queries.tolist()})
        return real_batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, *a, **k)

    monkeypatch.setattr(ppo_trainer, "batch_generation", recording)
    # Two-turn prompts: each earlier turn ends in EOS, which pad = EOS would mask out of the prompt.
    prompts = [
        [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "And then?"},
        ]
        for i in range(6)
    ]
    out = tmp_path / "rl"
    options = PPOOptions(max_steps=1, batch_size=2, response_length=6, num_ppo_epochs=1, eval_count=1)
    metrics = train_ppo(prompts, no_pad_model, reward_dir, out, options)

    saved = AutoTokenizer.from_pretrained(out)
    assert saved.pad_token == "[PAD]" and saved.pad_token_id != saved.eos_token_id == eos_id
    assert len(saved) == len(base) + 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.pad_token_id == saved.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(saved)
    assert json.loads((out / "generation_config.json").read_text())["pad_token_id"] == saved.pad_token_id
    assert metrics["pad_token"] == "[PAD]" and metrics["pad_token_added"] is True
    # The rollouts were padded with the new token, and the prompts' own EOS tokens are kept as tokens.
    assert seen and all(s["pad"] == saved.pad_token_id for s in seen)
    queries = [q for s in seen for q in s["queries"]]
    assert all(q.count(eos_id) >= 1 for q in queries)  # the first turn's end is in every prompt
    assert any(saved.pad_token_id in q for q in queries) or len({len(q) for q in queries}) == 1
    # Not the paper's response length: one warning line on stderr, and in the metrics.
    warnings = [line for line in capsys.readouterr().err.splitlines() if "differ from the paper" in line]
    assert warnings == [
        "charter: warning: PPO settings differ from the paper's: response_length 6 (paper: >= 256)"
    ]
    assert metrics["paper_deviations"] == {"response_length": {"value": 6, "paper": ">= 256"}}


def test_ppo_defaults_are_the_papers() -> None:
    defaults = PPOOptions()
    assert (defaults.temperature, defaults.response_length, defaults.missing_eos_penalty) == (1.0, 256, 1.0)
    assert paper_deviations(defaults) == {}
    assert set(paper_deviations(PPOOptions(temperature=0.7, missing_eos_penalty=None))) == {
        "temperature",
        "missing_eos_penalty",
    }
