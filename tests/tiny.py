"""Tiny random models with real tokenizers, built inside the tests (no hub, no network)."""

from __future__ import annotations

import random
from pathlib import Path

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

WORDS = ("pizza cookies tonight game board snacks bring who where when yes no maybe later rain movie popcorn "
         "train delayed minutes bakery rolls warm morning coffee tea friday party music loud quiet").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def build_tiny_gemma(target: Path, vocab_size: int = 600, seed: int = 0) -> Path:
    """A 2-layer Gemma-2 with random weights and a SentencePiece tokenizer trained here (tokenizer.model)."""
    import sentencepiece as spm
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaTokenizer

    target.mkdir(parents=True, exist_ok=True)
    text_file = target / "corpus.txt"
    text_file.write_text("\n".join(corpus(n=2000, seed=seed)) + "\nHello, world! What's up? 0123456789\n")
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(target / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], byte_fallback=True,
        character_coverage=1.0, add_dummy_prefix=False, minloglevel=2)
    text_file.unlink()
    (target / "tokenizer.vocab").unlink()
    (target / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}')
    tokenizer = GemmaTokenizer.from_pretrained(target)
    tokenizer.chat_template = GEMMA_TEMPLATE
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.save_pretrained(target)
    torch.manual_seed(seed)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                          max_position_embeddings=512, sliding_window=64, pad_token_id=0, eos_token_id=[1, 5],
                          bos_token_id=2)
    Gemma2ForCausalLM(config).save_pretrained(target)
    return target
