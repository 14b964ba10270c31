"""SFT on chat rows with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from charter_trl import SFTOptions, train_sft
from charter_trl_testdata import make_sft_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

MARKED_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def test_sft_trains_and_writes_a_model_that_generates(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    metrics = train_sft(
        make_sft_rows(), tiny_model, out, SFTOptions(max_steps=3, batch_size=4, logging_steps=1)
    )

    assert metrics["steps"] == 3 and metrics["train_rows"] == 12
    assert len(metrics["loss_history"]) == 3 and metrics["final_loss"] > 0
    # The tiny template has no {% generation %} markers: only the final assistant turn is trained.
    assert metrics["loss_mode"] == "last_turn" and "generation" in metrics["loss_note"]
    assert metrics["precision"] == ("fp32" if not torch.cuda.is_available() else metrics["precision"])
    json.dumps(metrics)

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


def test_sft_is_reproducible_with_a_seed(tiny_model: Path, tmp_path: Path) -> None:
    options = SFTOptions(max_steps=2, batch_size=4, logging_steps=1, seed=3)
    first = train_sft(make_sft_rows(), tiny_model, tmp_path / "a", options)
    second = train_sft(make_sft_rows(), tiny_model, tmp_path / "b", options)
    assert first["loss_history"] == second["loss_history"]


def test_sft_mix_rows_and_full_loss_fallback(tiny_model: Path, tmp_path: Path) -> None:
    # A row ending on a user turn cannot be split into prompt/completion: fall back to all tokens.
    own_chat = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ] * 3
    own_chat.append({"messages": json.dumps([{"role": "user", "content": "anyone there?"}])})
    metrics = train_sft(
        make_sft_rows(4),
        tiny_model,
        tmp_path / "sft",
        SFTOptions(max_steps=1, batch_size=4),
        mix_rows=own_chat,
    )
    assert metrics["train_rows"] == 4 and metrics["mix_rows"] == 4
    assert metrics["loss_mode"] == "full" and metrics["loss_note"]


def test_sft_uses_assistant_only_loss_when_the_template_has_generation_markers(
    tiny_model: Path, tmp_path: Path
) -> None:
    marked = tmp_path / "marked"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = MARKED_TEMPLATE
    tokenizer.save_pretrained(marked)
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(marked)

    metrics = train_sft(make_sft_rows(), marked, tmp_path / "sft", SFTOptions(max_steps=1, batch_size=4))
    assert metrics["loss_mode"] == "assistant_only" and metrics["loss_note"] is None
