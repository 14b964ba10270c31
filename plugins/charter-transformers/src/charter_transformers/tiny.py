"""Tiny randomly initialised Llama-style models, built offline in seconds.

Used by the tests and by `charter demo` when no real model is cached: the tokenizer is trained in
memory with the `tokenizers` library, so nothing is downloaded. The saved directory loads with
`from_pretrained` like any checkpoint, which is exactly the code path real models take.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_CORPUS = [
    "Human: How do I stay safe online? Assistant: Use strong passwords and keep software updated.",
    "Human: Can you help me with my homework? Assistant: Sure, what subject is it?",
    "CritiqueRequest: Identify specific ways in which the assistant's last response is harmful.",
    "Critique: The response is helpful and harmless. RevisionRequest: Please rewrite the response.",
    "Revision: I'm sorry, I can't help with that, but here is a safer alternative.",
    "Consider the following conversation between a human and an assistant: Options: (A) (B)",
    "The answer is: (A) The answer is: (B) Let's think step by step. So the answer is:",
    "Please choose the response that is the most helpful, honest, and harmless.",
    "<|user|> <|assistant|> <|system|> <|end|> hello world thanks yes no maybe",
]


def build_tiny_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 384,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a tiny causal LM (weights, config, tokenizer with a chat template) to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Byte-level pieces so any text (emoji, other scripts) round-trips without <unk>.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(out)
    return out
