"""Is the GGUF the model we trained? Greedy generation in llama.cpp (llama-cpp-python, Ollama's engine)
against transformers on the merged model, from the same chat prompts, and the two engines' next-token
log-probabilities after the same tokens (teacher forced), where a greedy difference is a near-tie or a
different model."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: How many of transformers' most probable next tokens the log-probability comparison covers.
TOP_TOKENS = 32


def _greedy_transformers(model, ids: list[int], max_new: int, stop_ids: list[int]):  # noqa: ANN001
    """Greedy tokens and, per step, transformers' next-token log-probabilities (float64)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=stop_ids,
                             pad_token_id=stop_ids[0], output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    rows = [torch.log_softmax(scores[0].double(), dim=-1).numpy() for scores in out.scores]
    return tokens, rows


def _greedy_llama(llm, ids: list[int], max_new: int, is_end) -> list[int]:  # noqa: ANN001
    llm.reset()
    tokens: list[int] = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if is_end(token) or len(tokens) >= max_new:
            break
    return tokens


def logit_error(expected: np.ndarray, actual: np.ndarray, top: int = TOP_TOKENS) -> float:
    """The largest difference between two next-token log-probability rows over the ``top`` tokens the expected
    row ranks first (where greedy and sampled choices are made; the far tail is quantization noise), in units of
    the expected row's standard deviation over the vocabulary (scale-free: a tiny random model and a real one
    compare alike)."""
    n = min(len(expected), len(actual))  # a GGUF may pad its vocabulary
    expected, actual = expected[:n], actual[:n]
    finite = np.isfinite(expected)
    spread = float(expected[finite].std()) or 1.0
    best = np.argpartition(-expected, top - 1)[:top] if n > top else np.arange(n)  # no full sort of the vocabulary
    return float(np.abs(expected[best] - actual[best]).max()) / spread


def _compare(expected: list[int], actual: list[int], rows: list[np.ndarray], llama_row, ids: list[int],
             tolerance: float) -> dict:
    """Where the greedy tokens part, and whether that is a near-tie: at the first difference both engines see
    the same tokens, so a flip the engines' own difference explains (within ``tolerance``) is numerical."""
    same = 0
    while same < min(len(expected), len(actual)) and expected[same] == actual[same]:
        same += 1
    first_error = logit_error(rows[0], llama_row(ids)) if rows else 0.0
    diverged = expected != actual
    tie_error = None
    if diverged and same < min(len(expected), len(actual)):
        tie_error = first_error if same == 0 else logit_error(rows[same], llama_row(ids + expected[:same]))
    tie = tie_error is not None and tie_error <= tolerance
    return {"agreed_tokens": same, "compared_tokens": max(len(expected), len(actual)),
            "agrees": (not diverged or tie) and first_error <= tolerance, "tie_at": same if tie else None,
            "logit_error": round(first_error, 6),
            "logit_error_at_difference": None if tie_error is None else round(tie_error, 6)}


def check_parity(gguf: Path, merged: Path, prompts: list[str], n_tokens: int, end_of_turn: str,
                 tolerance: float) -> dict:
    """Compare greedy continuations and next-token log-probabilities; see :func:`_compare`."""
    import torch
    from cookiebaker.gguf_scoring import _Context, load_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    llm = load_gguf(gguf, n_ctx=4096, n_threads=max(1, (os.cpu_count() or 2)), seed=0)
    context = _Context(llm, 1024)
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    stop_ids = [i for i in {end_id, tokenizer.eos_token_id} if i is not None]
    vocab = llm._model.vocab if hasattr(llm._model, "vocab") else None

    def is_end(token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(vocab, token)) if vocab is not None else token in stop_ids

    results = []
    try:
        for prompt in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            gguf_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            expected, rows = _greedy_transformers(model, ids, n_tokens, stop_ids)
            actual = _greedy_llama(llm, ids, n_tokens, is_end)
            results.append({
                "prompt": prompt,
                "tokenizer_matches": gguf_ids == ids,
                **_compare(expected, actual, rows, context.last_row, ids, tolerance),
                "transformers_stopped": bool(expected) and expected[-1] in stop_ids,
                "llama_cpp_stopped": bool(actual) and is_end(actual[-1]),
            })
    finally:
        context.close()
    end_is_eog = is_end(end_id) if end_id is not None else False
    return {
        "prompts": results,
        "agreement": sum(r["agrees"] for r in results) / len(results),
        "logit_error": max(r["logit_error"] for r in results),
        "tokenizer_matches": all(r["tokenizer_matches"] for r in results),
        "end_of_turn_stops_generation": end_is_eog,
        "tokens_compared": n_tokens,
    }
