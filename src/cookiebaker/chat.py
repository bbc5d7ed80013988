"""Samples → token ids and labels, rendered with the base model's own chat template.

Loss is on the assistant's tokens only, including the end-of-turn token that closes each assistant turn
(``<end_of_turn>`` for Gemma, ``<|im_end|>`` for ChatML), so the model learns to stop. No generation prompt is
appended after the last answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cookiebaker.errors import DatasetError, ModelError

IGNORE = -100
#: Written by ``train`` beside the adapter, read by ``eval``: the identities of the held-out samples.
HELDOUT_FILE = "heldout.json"
Message = dict[str, str]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def supports_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system turn (Gemma's refuses: its text goes into the first user turn)."""
    probe = [{"role": "system", "content": "\u2063sys\u2063"}, {"role": "user", "content": "hi"}]
    try:
        return "\u2063sys\u2063" in tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # jinja2 raises TemplateError from the template's own raise_exception
        return False


def spoken(speaker: str | None, text: str) -> str:
    """A user turn as the model reads who speaks: ``Name: text`` (the text alone without a speaker). The one
    rendering of speakers: training samples (``pairs``/``train``) and the service's ``sender_name`` both use it."""
    speaker = " ".join((speaker or "").split())  # a name is one line
    return f"{speaker}: {text}" if speaker else text


def normalize(messages: list[Message], system_role: bool) -> list[Message]:
    """Strict user/assistant alternation: user turns rendered with their speaker (``spoken``), system text folded
    into the first user turn when the template has no system role, consecutive turns of one role merged (several
    people in a row stay several lines, each with its speaker)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns: list[Message] = []
    for message in messages:
        if message["role"] == "system":
            continue
        role = "assistant" if message["role"] in ("assistant", "model") else "user"
        content = spoken(message.get("speaker"), message["content"]) if role == "user" else message["content"]
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n" + content}
        else:
            turns.append({"role": role, "content": content})
    if system:
        text = "\n\n".join(system)
        if system_role:
            turns.insert(0, {"role": "system", "content": text})
        elif turns and turns[0]["role"] == "user":
            turns[0] = {"role": "user", "content": f"{text}\n\n{turns[0]['content']}"}
        else:
            turns.insert(0, {"role": "user", "content": text})
    return turns


def _render(tokenizer: Any, messages: list[Message], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant answer (with its end-of-turn)."""
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], generation_prompt=True)
        upto = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise ModelError("the chat template does not render conversations as growing prefixes; "
                             "cannot tell the answer's tokens apart")
        spans.append((len(prompt), len(upto)))
    return full, spans


def encode(tokenizer: Any, messages: list[Message], max_length: int, last_only: bool = False) -> Encoded:
    """Token ids and labels (IGNORE outside the answers; ``last_only``: outside the last answer); too long: keep the
    first token and the end."""
    text, spans = assistant_spans(tokenizer, messages)
    if last_only:
        spans = spans[-1:]
    tokens = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = tokens["input_ids"]
    labels = [IGNORE] * len(ids)
    span_index = 0
    for position, (start, end) in enumerate(tokens["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1] and end > start:
            labels[position] = ids[position]
    truncated = len(ids) > max_length
    if truncated:
        keep = max_length - 1
        ids, labels = ids[:1] + ids[-keep:], [IGNORE] + labels[-keep:]
    return Encoded(ids, labels, truncated)


def _turn(role: str, content: str, speaker: str | None) -> Message:
    return {"role": role, "content": content, "speaker": speaker} if speaker else {"role": role, "content": content}


def largest_fitting(high: int, fits: Callable[[int], bool]) -> int:
    """The largest n in 1..high with fits(n) (fits is monotone: true up to some n), or 0 if none."""
    low = 0
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


#: The most bytes a token can stand for (the longest tokens of the vocabularies cookiebaker serves are shorter): a
#: text of more than ``n × MAX_TOKEN_BYTES`` characters cannot fit ``n`` tokens, however it tokenizes.
MAX_TOKEN_BYTES = 32


def cap_turns(messages: list[dict], count: Callable[[str], int], limit: int) -> tuple[list[dict], int]:
    """Every turn but the newest (and the system messages) cut to its last ``limit`` tokens; how many were cut."""
    capped, cut = [], 0
    for index, message in enumerate(messages):
        text = message["content"]
        short = len(text.encode("utf-8")) < limit  # a token covers a byte or more (and one may lead with a space)
        if index == len(messages) - 1 or message["role"] == "system" or short or count(text) <= limit:
            capped.append(message)
            continue
        text = text[-limit * MAX_TOKEN_BYTES:]  # more could never fit: the search stays short
        end = largest_fitting(len(text), lambda c: count(text[-c:]) <= limit)
        capped.append({**message, "content": text[-end:] if end else ""})
        cut += 1
    return capped, cut


def cap_sample(messages: list[Message], count: Callable[[str], int], limit: int | None) -> list[Message]:
    """A training sample with its earlier turns cut as the service cuts a chat's history (``cap_turns``): all but
    the last message before the answer, and the answer itself, to their last ``limit`` tokens."""
    if limit is None or len(messages) < 3:
        return messages
    capped, _ = cap_turns(messages[:-1], count, limit)
    return [*capped, messages[-1]]


def samples_to_messages(frame: Any) -> list[list[Message]]:
    """Rows of a pairs table (context, query/response) or a conversations table (messages) → chat messages; a user
    turn names its speaker (``speaker``) where the samples have one."""
    columns = set(frame.columns)
    if {"query", "response"} <= columns:
        height = frame.height
        contexts = frame["context"].to_list() if "context" in columns else [[]] * height
        speakers = frame["query_speaker"].to_list() if "query_speaker" in columns else [None] * height
        return [[*(_turn("user", turn["content"], turn["speaker"]) for turn in context or []),
                 _turn("user", query, speaker), {"role": "assistant", "content": response}]
                for context, query, speaker, response in zip(contexts, frame["query"].to_list(), speakers,
                                                              frame["response"].to_list())]
    if "messages" in columns:
        return [[_turn(turn["role"], turn["content"], turn.get("speaker") if turn["role"] == "user" else None)
                 for turn in conversation] for conversation in frame["messages"].to_list()]
    raise DatasetError("the samples table has neither query/response nor messages columns "
                       "(write it with `cookiebaker pairs`)")


def sample_keys(frame: Any) -> list[str]:
    """A stable identity for every row of a samples table: ``chat:query_id:first_response_id`` for reply pairs,
    ``chat:first_id:last_id`` for conversations (the row number for a table without message ids)."""
    columns = set(frame.columns)
    if {"chat_id", "query_message_id", "response_message_ids"} <= columns:
        return [f"{chat}:{query}:{responses[0] if responses else ''}" for chat, query, responses in zip(
            frame["chat_id"].to_list(), frame["query_message_id"].to_list(), frame["response_message_ids"].to_list())]
    if {"chat_id", "message_ids"} <= columns:
        return [f"{chat}:{ids[0]}:{ids[-1]}" if ids else f"{chat}::"
                for chat, ids in zip(frame["chat_id"].to_list(), frame["message_ids"].to_list())]
    return [f"row{index}" for index in range(frame.height)]


def sample_digest(messages: list[Message]) -> str:
    """A digest of a sample's text (roles, contents and speakers): equal digests mean the same training text."""
    canonical = json.dumps([[m["role"], m["content"], *([m["speaker"]] if m.get("speaker") else [])]
                            for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]
