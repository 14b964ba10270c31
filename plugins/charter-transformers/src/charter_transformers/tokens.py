"""Turning prompts, chats and options into token ids the way each mode needs.

Completion mode is raw text: the tokenizer's own special prefix (e.g. BOS) is added, as pretrained
models saw in training, but no chat template. Chat mode renders the tokenizer's chat template with
`add_generation_prompt` and tokenizes the result without adding specials again (templates carry
their own BOS).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from charter.backends.base import BackendError

_TOKEN_CONTEXT = 4  # tokens of left context when decoding one token's text


def encode_text(tokenizer: Any, text: str, eos_ids: frozenset[int] = frozenset()) -> list[int]:
    """Raw text with the tokenizer's leading special tokens, never a trailing end-of-sequence.

    Some tokenizers append EOS by default (`add_eos_token`); a prompt ending in EOS would make the
    model start a new document, and an option ending in EOS would be scored with it.
    """
    ids: list[int] = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if ids and ids[-1] in eos_ids:
        plain = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not plain or plain[-1] != ids[-1]:
            ids.pop()
    return ids


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], model_name: str) -> list[int]:
    """Messages through the chat template, ready for the assistant's turn.

    A conversation that ends with an assistant message is continued (a prefilled answer) rather
    than followed by a new turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise BackendError(
            f"local model {model_name!r} has no chat template; use completion mode (--mode completion)",
            retryable=False,
        )
    prefill = bool(messages) and messages[-1].get("role") == "assistant"
    text = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=not prefill,
        continue_final_message=prefill,
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def option_rows(
    tokenizer: Any, prompt: str, options: list[str], eos_ids: frozenset[int] = frozenset()
) -> list[tuple[list[int], int]]:
    """For each option: (token ids of prompt + option, number of trailing tokens to score).

    The prompt and the full text are tokenized separately and the scored tokens are the full
    text's tokens after the longest common prefix with the prompt's tokens. This keeps the
    tokenization the model would see for the whole text (tokenizing the option alone and
    concatenating would produce token sequences the model never saw, e.g. " " + "(A)" instead of
    " (" + "A)"). When a tokenizer merges characters across the boundary (a prompt ending in a
    space followed by "(A)"), the scored span starts at the first token that differs, so it also
    covers the prompt's last few characters; those are the same for every option, so comparisons
    between options stay meaningful.
    """
    prompt_ids = encode_text(tokenizer, prompt, eos_ids)
    rows: list[tuple[list[int], int]] = []
    for option in options:
        full = encode_text(tokenizer, prompt + option, eos_ids)
        common = 0
        for a, b in zip(prompt_ids, full, strict=False):
            if a != b:
                break
            common += 1
        # The first token has no logits before it: at least one token must condition the span.
        common = max(common, 1)
        rows.append((full, max(len(full) - common, 0)))
    return rows


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character standing for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(tokenizer: Any, token_id: int) -> bytes | None:
    """The raw bytes of one token, for byte-level BPE and SentencePiece byte-fallback vocabularies."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str):
        return None
    match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if match:
        return bytes([int(match.group(1), 16)])
    decoder = _byte_decoder()
    if piece and all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece)
    return None


def token_texts(tokenizer: Any, context: list[int], token_ids: list[int]) -> list[str]:
    """The text each of `token_ids` would add after `context`, as OpenAI spells log-prob tokens.

    Decoding a token alone would drop SentencePiece's leading space, so each is decoded after a few
    context tokens. A token that is part of a multi-byte character (decodes to U+FFFD) is spelled
    `bytes:\\xe2\\x80` like OpenAI does, so distinct tokens keep distinct names.
    """
    ctx = context[-_TOKEN_CONTEXT:]
    before = tokenizer.decode(ctx, skip_special_tokens=False)
    out: list[str] = []
    for token_id in token_ids:
        after = tokenizer.decode([*ctx, token_id], skip_special_tokens=False)
        if after.startswith(before):
            text = after[len(before) :]
        else:
            text = tokenizer.decode([token_id], skip_special_tokens=False)
        if "\ufffd" in text:
            raw = token_bytes(tokenizer, token_id)
            if raw is not None:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        out.append(text)
    return out
