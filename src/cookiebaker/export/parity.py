"""Is the GGUF the model we trained? Greedy generation in llama.cpp (llama-cpp-python, Ollama's engine)
against transformers on the merged model, from the same chat prompts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _greedy_transformers(model, ids: list[int], max_new: int, stop_ids: list[int]):  # noqa: ANN001
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=stop_ids,
                             pad_token_id=stop_ids[0], output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    margins = []
    for scores in out.scores:
        top = torch.topk(scores[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return tokens, margins


def _greedy_llama(llm, ids: list[int], max_new: int, is_end) -> list[int]:  # noqa: ANN001
    llm.reset()
    tokens: list[int] = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if is_end(token) or len(tokens) >= max_new:
            break
    return tokens


def check_parity(gguf: Path, merged: Path, prompts: list[str], n_tokens: int, end_of_turn: str,
                 tie_margin: float) -> dict:
    """Compare greedy continuations; a first difference where transformers' top two logits are within
    ``tie_margin`` is a numerical tie (reported, not a disagreement)."""
    import torch
    from cookiebaker.gguf_scoring import load_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    llm = load_gguf(gguf, n_ctx=4096, n_threads=max(1, (os.cpu_count() or 2)), seed=0)
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    stop_ids = [i for i in {end_id, tokenizer.eos_token_id} if i is not None]
    vocab = llm._model.vocab if hasattr(llm._model, "vocab") else None

    def is_end(token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(vocab, token)) if vocab is not None else token in stop_ids

    results = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        gguf_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        expected, margins = _greedy_transformers(model, ids, n_tokens, stop_ids)
        actual = _greedy_llama(llm, ids, n_tokens, is_end)
        same = 0
        while same < min(len(expected), len(actual)) and expected[same] == actual[same]:
            same += 1
        diverged = expected != actual
        tie = diverged and same < min(len(expected), len(actual)) and margins[same] < tie_margin
        results.append({
            "prompt": prompt,
            "tokenizer_matches": gguf_ids == ids,
            "agreed_tokens": same,
            "compared_tokens": max(len(expected), len(actual)),
            "agrees": not diverged or tie,
            "tie_at": same if tie else None,
            "transformers_stopped": bool(expected) and expected[-1] in stop_ids,
            "llama_cpp_stopped": bool(actual) and is_end(actual[-1]),
        })
    end_is_eog = is_end(end_id) if end_id is not None else False
    return {
        "prompts": results,
        "agreement": sum(r["agrees"] for r in results) / len(results),
        "tokenizer_matches": all(r["tokenizer_matches"] for r in results),
        "end_of_turn_stops_generation": end_is_eog,
        "tokens_compared": n_tokens,
    }
