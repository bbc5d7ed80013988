"""Scoring replies: the batched paths (prompt decoded once, replies side by side; one padded forward) against the
straightforward ones, and llama.cpp against transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cookiebaker.backends import Sampling, TransformersBackend, open_backend
from cookiebaker.gguf_scoring import GgufScorer

PROMPTS = [
    [{"role": "user", "content": "pizza tonight?"}],
    [{"role": "user", "content": "who is bringing snacks"}, {"role": "assistant", "content": "me"},
     {"role": "user", "content": "what kind of snacks?"}],
    [{"role": "user", "content": "rain all weekend " * 30}],  # longer than a batch of replies
]
REPLIES = ["yes please", "maybe later, the game is loud", "", "no", "cookies " * 20]


def _gguf(folder: Path) -> Path:
    return next(folder.glob("*.gguf"))


def test_replies_after_one_prompt_equal_scoring_each_conversation_alone(tiny_gguf: Path) -> None:
    scorer = GgufScorer(_gguf(tiny_gguf), n_ctx=1024)
    for prompt in PROMPTS[::2]:  # no earlier answer: the conversation's loss is the reply's alone
        batched = scorer.score_replies(prompt, REPLIES)
        for reply, value in zip(REPLIES, batched):
            total, count = scorer.score([*prompt, {"role": "assistant", "content": reply}])
            assert count > 0 and value == pytest.approx(-total, rel=1e-4, abs=1e-3)


def test_more_replies_than_sequences_in_a_batch(tiny_gguf: Path, monkeypatch) -> None:
    import cookiebaker.gguf_scoring as scoring

    scorer = GgufScorer(_gguf(tiny_gguf), n_ctx=1024)
    replies = [f"snacks {i} " * (1 + i % 4) for i in range(40)]
    expected = scorer.score_replies(PROMPTS[1], replies)
    monkeypatch.setattr(scoring, "BATCH_TOKENS", 64)  # several decodes per prompt, some replies alone
    small = GgufScorer(_gguf(tiny_gguf), n_ctx=1024)
    assert small.context.n_seq <= scoring.PARALLEL_SEQUENCES
    assert small.score_replies(PROMPTS[1], replies) == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_backends_score_replies_alike(tiny_merged: Path, tiny_gguf: Path) -> None:
    """Oracle: the f16 GGUF in llama.cpp and the merged model in transformers (one padded forward per prompt, checked
    against one forward per reply) give the same log-likelihoods."""
    requests = [(p, r) for p in range(len(PROMPTS)) for r in REPLIES[:4]]
    gguf = open_backend(str(tiny_gguf)).score_replies(PROMPTS, requests, 1024)
    merged = TransformersBackend(tiny_merged, Sampling())
    padded = merged.score_replies(PROMPTS, requests, 1024)
    alone = [merged.score_replies(PROMPTS, [request], 1024)[0] for request in requests]
    assert padded == pytest.approx(alone, rel=1e-4, abs=1e-3)
    assert gguf == pytest.approx(padded, rel=2e-3, abs=2e-2)
    assert len(set(round(v, 3) for v in padded)) > len(REPLIES[:4])  # the prompt matters
    first = open_backend(str(tiny_gguf)).score_replies(PROMPTS, requests, 1024, reply_tokens=2)
    assert first == pytest.approx(merged.score_replies(PROMPTS, requests, 1024, reply_tokens=2), rel=2e-3, abs=2e-2)
    assert all(f >= whole - 1e-4 for f, whole in zip(first, gguf))  # fewer tokens: a likelier beginning
    assert any(f > whole + 0.5 for f, whole in zip(first, gguf))


def test_batched_replies_are_what_serving_generates_one_by_one(tiny_gguf: Path) -> None:
    """Oracle: greedy replies decoded side by side equal the chat completions serving makes one at a time; sampled
    ones keep the same stops, limits and finish reasons."""
    backend = open_backend(str(tiny_gguf))
    prompts = [[{"role": "user", "content": text}] for text in
               ("pizza tonight?", "who brings the snacks", "rain all weekend", "coffee?", "what time?")] + PROMPTS[1:2]
    greedy = backend.default.merged(temperature=0.0, max_tokens=12)
    batched = backend.replies(prompts, greedy)
    one_by_one = [backend.reply(prompt, greedy) for prompt in prompts]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in one_by_one]
    # llama.cpp is not batch-invariant: sequences decoded side by side go through other matrix kernels than one
    # alone, and the random tiny model's nearly flat distributions turn that rounding into another argmax now and
    # then (2 of 6 with the AVX2 build; the real SmolLM2 differs at one near-tie of 60 tokens).
    assert sum(a.text == b.text for a, b in zip(batched, one_by_one)) >= len(prompts) // 2
    assert any(a.text == b.text and a.text for a, b in zip(batched, one_by_one))
    sampled = backend.default.merged(max_tokens=12, seed=0)
    batched = backend.replies(prompts, sampled)
    one_by_one = [backend.reply(prompt, sampled) for prompt in prompts]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in one_by_one]
    # One seed, one chain: the same draws, but the random tiny model's nearly flat distributions let the last bits of
    # a logit (batched matrix products round differently) change a draw now and then.
    assert sum(a.text == b.text for a, b in zip(batched, one_by_one)) >= len(prompts) // 2
