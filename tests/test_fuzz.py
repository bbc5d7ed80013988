"""Seeded, bounded property-based fuzzing (hypothesis) of the two ways hostile input comes in: HTTP requests to
the service, and mutated Telegram exports to ingest. The properties: never a 500, never a traceback, never a
partial output; and the two ingest readers give the same verdict on every file."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import msg, write_chat
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import Echo, make_app

from cookiebaker import ingest
from cookiebaker.errors import InputFileError
from cookiebaker.ingest.telegram import bulk

FUZZ = settings(max_examples=500, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["", " ", "cookiebaker-sfw", "cookiebaker-nsfw", "user", "assistant",
                                                     "system", "text", "10", "NaN", "-1", "\u0000", "🍪"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


# ---- Requests ----

class Counting(Echo):
    """Echo with a small context (one token per character), so that fitting the context is exercised too."""

    context_length = 64

    def prompt_tokens(self, messages, sampling):  # noqa: ANN001, ANN201
        return sum(len(m["content"]) + 4 for m in self.prepare(messages, sampling))

    def text_tokens(self, text):  # noqa: ANN001, ANN201
        return len(text)


FIELDS = {
    "/webhook/response": ["prompt", "chat_id", "sfw", "client_name", "sender_name", "sender_id"],
    "/webhook/turn": ["prompt", "chat_id", "client_name", "sender_name", "sender_id"],
    "/webhook/forget": ["chat_id", "client_name", "sender_id"],
    "/api/chat": ["model", "messages", "stream", "options", "format", "tools"],
    "/v1/chat/completions": ["model", "messages", "stream", "temperature", "top_p", "max_tokens",
                             "max_completion_tokens", "stop", "seed", "n", "logprobs", "top_logprobs",
                             "response_format", "tools", "tool_choice", "functions", "function_call", "logit_bias",
                             "frequency_penalty", "presence_penalty", "stream_options", "modalities", "prediction"],
}
#: Values of the options the service does not do (or does), so that the fuzzer asks for them, not only for junk.
MEANINGFUL = {
    "n": [1, 2, 3], "logprobs": [True, False], "top_logprobs": [0, 2], "tool_choice": ["none", "auto", "required"],
    "response_format": [{"type": "text"}, {"type": "json_object"}], "tools": [[], [{"type": "function"}]],
    "functions": [[], [{"name": "f"}]], "function_call": ["none", "auto", {"name": "f"}], "logit_bias": [{}, {"5": 1}],
    "frequency_penalty": [0, 0.5], "presence_penalty": [0, -1], "stream_options": [{"include_usage": True}],
    "modalities": [["text"], ["text", "audio"]], "prediction": [{"type": "content", "content": "x"}],
    "format": ["", "json", {"type": "object"}], "stream": [True, False], "sender_id": ["user5", 5],
}
VALID = {
    "/webhook/response": {"prompt": "hi", "chat_id": 1},
    "/webhook/turn": {"prompt": "hi", "chat_id": 1},
    "/webhook/forget": {"chat_id": 1, "sender_id": "user5"},
    "/api/chat": {"model": "cookiebaker-sfw", "stream": False, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/chat/completions": {"model": "cookiebaker-nsfw", "messages": [{"role": "user", "content": "hi"}]},
}
messages_values = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"])
                                                  | values, "content": st.text(max_size=80) | values}), max_size=6)
options_values = st.dictionaries(st.sampled_from(["temperature", "top_p", "num_predict", "stop", "seed", "num_ctx"]),
                                 values, max_size=3)
raw_oddities = st.sampled_from([
    b"", b"{", b"[]", b"null", b'"text"', b"{}", b'{"prompt": "a\\ud800", "chat_id": 1}',
    b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"prompt": "x", "chat_id": ' + b"9" * 5000 + b"}",
    b'{"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b"\xff\xfe{}", b'{"prompt": "x", "chat_id": 1}garbage'])


@st.composite
def requests(draw) -> tuple[str, bytes]:  # noqa: ANN001
    path = draw(st.sampled_from(sorted(FIELDS)))
    if draw(st.integers(0, 9)) == 0:
        return path, draw(raw_oddities)
    body = dict(VALID[path])
    for field in draw(st.lists(st.sampled_from(FIELDS[path]), max_size=4, unique=True)):
        if field == "messages":
            body[field] = draw(messages_values | values)
        elif field == "options":
            body[field] = draw(options_values | values)
        elif field in MEANINGFUL:
            body[field] = draw(st.sampled_from(MEANINGFUL[field]) | values)
        else:
            body[field] = draw(values)
    for field in draw(st.lists(st.sampled_from(sorted(body)), max_size=1)):
        del body[field]
    return path, json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def fuzzed_service(tmp_path_factory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("fuzz_serve")
    app, _, _ = make_app(root, sfw=Counting(), nsfw=Counting(), history_turns=4, turn_tokens=16)
    return TestClient(app, raise_server_exceptions=False)


def asked_for_what_is_not_done(path: str, body: object) -> str | None:
    """An independent statement of what the service does not do (so must refuse, never answer as if it did):
    several choices, log-probabilities, structured output, tools and functions, logit biases, audio, predicted
    outputs; and penalties, which the fuzzed backends do not apply."""
    if not isinstance(body, dict):
        return None
    given = lambda name: body.get(name) not in (None, False, 0, "", [], {})  # noqa: E731
    if path == "/api/chat":
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        penalties = [options.get(k) for k in ("frequency_penalty", "presence_penalty")]
        return next((name for name, asked in (("format", given("format")), ("tools", given("tools")),
                                              ("penalties", any(p not in (None, 0) for p in penalties))) if asked), None)
    if path != "/v1/chat/completions":
        return None
    checks = {
        "n": body.get("n") not in (None, 1), "logprobs": given("logprobs") or given("top_logprobs"),
        "response_format": isinstance(body.get("response_format"), dict)
        and body["response_format"].get("type") not in (None, "text"),
        "tools": given("tools") and body.get("tool_choice") != "none",
        "tool_choice": body.get("tool_choice") not in (None, "none", "auto") and not given("tools"),
        "functions": given("functions") or body.get("function_call") not in (None, "none", "auto"),
        "logit_bias": given("logit_bias"), "audio": given("audio") or body.get("modalities") not in (None, ["text"]),
        "prediction": given("prediction"),
        "penalties": any(body.get(k) not in (None, 0) for k in ("frequency_penalty", "presence_penalty")),
    }
    return next((name for name, asked in checks.items() if asked), None)


@FUZZ
@given(request=requests())
def test_fuzzed_requests_never_get_a_500_and_every_stream_ends_properly(fuzzed_service: TestClient,
                                                                       request: tuple[str, bytes]) -> None:
    path, body = request
    response = fuzzed_service.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert isinstance(response.json().get("error"), str)
        return
    try:
        asked = asked_for_what_is_not_done(path, json.loads(body))
    except ValueError:
        asked = None
    assert asked is None, f"{path}: '{asked}' was asked for and silently ignored: {body[:300]!r}"
    content_type = response.headers["content-type"]
    if content_type.startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" or "error" in json.loads(events[-1].removeprefix("data: "))
    elif content_type.startswith("application/x-ndjson"):
        last = json.loads(response.text.strip().splitlines()[-1])
        assert last.get("done") is True or "error" in last
    else:
        assert response.json()


def test_the_fuzzed_service_counted_every_answer(fuzzed_service: TestClient) -> None:
    metrics = fuzzed_service.get("/metrics").text
    counted = sum(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("cookiebaker_requests_total{"))
    assert counted >= FUZZ.max_examples and 'status="500"' not in metrics


# ---- Connections that stop mid-request ----

WIRE_PATHS = ["/webhook/response", "/webhook/turn", "/api/chat", "/v1/chat/completions"]


@st.composite
def cut_connections(draw) -> bytes:  # noqa: ANN001
    """A valid request framed by Content-Length or chunked (sometimes with a chunk size that lies or is not hex),
    cut anywhere: in the headers, in the body, or not at all."""
    path = draw(st.sampled_from(WIRE_PATHS))
    body = json.dumps({**VALID[path], "stream": draw(st.booleans())} if path in ("/api/chat", "/v1/chat/completions")
                      else VALID[path]).encode()
    framing = draw(st.sampled_from(["length", "short_length", "chunked", "lying_chunk", "bad_chunk"]))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    if framing in ("length", "short_length"):
        declared = len(body) + (draw(st.integers(1, 500)) if framing == "short_length" else 0)
        wire = head + f"Content-Length: {declared}\r\n\r\n".encode() + body
    else:
        size = {"chunked": f"{len(body):x}", "lying_chunk": f"{len(body) + draw(st.integers(1, 999)):x}",
                "bad_chunk": draw(st.sampled_from(["ZZ", "-1", "", "0x10", "1" * 20]))}[framing]
        wire = head + b"Transfer-Encoding: chunked\r\n\r\n" + f"{size}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return wire[:draw(st.integers(0, len(wire)))]


@pytest.fixture(scope="module")
def wire_service(tmp_path_factory):  # noqa: ANN201
    from conftest import serve_in_thread

    app, _, _ = make_app(tmp_path_factory.mktemp("fuzz_wire"), sfw=Counting(), nsfw=Counting(),
                         body_timeout_seconds=0.5)
    port, server = serve_in_thread(app, header_timeout=0.5)
    yield port
    server.should_exit = True


@settings(FUZZ, max_examples=150)
@given(wire=cut_connections())
def test_fuzzed_connections_that_stop_mid_request(wire_service: int, wire: bytes, caplog) -> None:  # noqa: ANN001
    """Whatever a client sends before it hangs up: no 500, no traceback, and the service goes on answering."""
    import socket

    with caplog.at_level("INFO"), socket.create_connection(("127.0.0.1", wire_service), timeout=5) as connection:
        connection.sendall(wire)
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(3)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]


def test_the_service_outlived_the_cut_connections(wire_service: int) -> None:
    import httpx

    base = f"http://127.0.0.1:{wire_service}"
    assert httpx.post(f"{base}/webhook/response", json={"prompt": "still there?", "chat_id": 7}).status_code == 200
    metrics = httpx.get(f"{base}/metrics").text
    assert 'status="500"' not in metrics and 'status="499"' in metrics  # hang-ups counted as such


# ---- Exports ----

KEYS = ["id", "type", "date", "date_unixtime", "edited", "edited_unixtime", "from", "from_id", "actor", "actor_id",
        "action", "forwarded_from", "saved_from", "reply_to_message_id", "reply_to_peer_id", "via_bot", "text",
        "photo", "file", "media_type", "poll", "unknown_key"]
CHAT_KEYS = ["name", "type", "id"]


@st.composite
def mutated_exports(draw) -> tuple[dict, list[tuple[str, int, int]]]:  # noqa: ANN001
    """A small valid export, then mutations of its values (a value of another type, a key removed), and maybe
    of its bytes (truncated, a byte replaced): the export and the byte mutations to apply after writing it."""
    messages = [msg(i, f"message {i}", date=1_700_000_000 + i, reply_to_message_id=i - 1 if i > 1 else None)
                for i in range(1, 7)]
    export = {"name": "Fuzz", "type": "private_group", "id": 1234, "messages": messages}
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            target, key = messages[draw(st.integers(0, len(messages) - 1))], draw(st.sampled_from(KEYS))
        else:
            target, key = export, draw(st.sampled_from(CHAT_KEYS))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(values | st.sampled_from(["not-a-date", "-99999999999", "99999999999", "0x10", "1e3",
                                                          " 17 ", "hologram", "service", "unsupported"]))
    byte_mutations = draw(st.lists(st.tuples(st.sampled_from(["truncate", "replace"]), st.integers(0, 10**6),
                                             st.integers(0, 255)), max_size=1))
    return export, byte_mutations


def _write(path: Path, export: dict, byte_mutations: list[tuple[str, int, int]]) -> None:
    write_chat(path, export["messages"], chat_id=export.get("id"), name=export.get("name"),
               chat_type=export.get("type"))
    data = json.loads(path.read_text())
    for key in CHAT_KEYS:  # write_chat always writes the chat keys: remove the ones the mutation removed
        if key not in export:
            del data[key]
    raw = json.dumps(data, ensure_ascii=False, indent=1, allow_nan=True).encode()
    for kind, position, byte in byte_mutations:
        position %= len(raw)
        raw = raw[:position] if kind == "truncate" else raw[:position] + bytes([byte]) + raw[position + 1:]
    path.write_bytes(raw)


def _ingest(path: Path, output: Path) -> tuple[str, pl.DataFrame | None]:
    """Either ('read', table) or ('refused: <one line>', None); any other exception fails the test."""
    try:
        report = ingest.run(ingest.IngestConfig(inputs=[str(path)], output=str(output)))
    except InputFileError as exc:
        assert not output.exists(), "a refused file left an output"
        return f"refused: {exc}", None
    table = pl.read_parquet(output)
    assert report["rows"] == table.height
    return "read", table


@FUZZ
@given(case=mutated_exports())
def test_fuzzed_exports_one_verdict_one_line_no_partial_output(tmp_path: Path, case, monkeypatch) -> None:  # noqa: ANN001
    import tempfile

    export, byte_mutations = case
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    path = work / "chat.json"
    _write(path, export, byte_mutations)
    with monkeypatch.context() as patch:
        patch.setattr(bulk, "BULK_MIN_BYTES", 1 << 40)
        exact, exact_table = _ingest(path, work / "exact.parquet")
    with monkeypatch.context() as patch:
        patch.setattr(bulk, "BULK_MIN_BYTES", 0)
        patch.setattr(bulk, "MIN_SPAN_BYTES", 300)
        through_bulk, bulk_table = _ingest(path, work / "bulk.parquet")
    assert exact == through_bulk
    if exact == "read":
        differences = exact_table.drop("source_file").to_dicts(), bulk_table.drop("source_file").to_dicts()
        assert differences[0] == differences[1]
    else:
        assert "\n" not in exact and str(path) in exact
        assert "cannot be read (" not in exact, f"a reader failed in a way it does not describe: {exact}"
    written = {p.name for p in work.iterdir()} - {"chat.json"}
    assert written <= {"exact.parquet", "exact_ingest.json", "exact.parquet.config.yaml", "bulk.parquet", "bulk_ingest.json",
                       "bulk.parquet.config.yaml"}, written  # nothing half-written beside the outputs


# ---- WhatsApp and Discord exports: never a traceback, never a partial output; WhatsApp's two readers agree ----

WHATSAPP_LINES = ["01/02/2023, 10:00 - Ann: pizza tonight?", "01/02/2023, 10:02 - Ben: yes!",
                  "[4/5/23, 9:12:33\u202fAM] Ann: \u200eimage omitted", "2/1/23, 11:32 p. m. - ~\u202fCy: ok",
                  "12.3.2023 klo 14.30 - Matti: Moi", "01/02/2023, 10:05 - Ann created group \"x\"",
                  "a continuation line", "", "13/13/2023, 25:61 - Bad: date", "01/02/2023, 10:06 - Ben: <Media omitted>",
                  "01/02/2023, 10:07 - Ben: This message was deleted", "01/02/2023, 10:08 - Ann:."]


@st.composite
def whatsapp_texts(draw) -> bytes:  # noqa: ANN001
    lines = draw(st.lists(st.sampled_from(WHATSAPP_LINES) | st.text(max_size=40), min_size=1, max_size=12))
    raw = "\n".join(lines).encode("utf-8")
    if draw(st.booleans()):
        position = draw(st.integers(0, max(len(raw) - 1, 0)))
        raw = raw[:position] + bytes([draw(st.integers(0, 255))]) + raw[position + 1:]
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + raw


def _refused_or_read(path: Path, output: Path) -> str:
    try:
        ingest.run(ingest.IngestConfig(inputs=[str(path)], output=str(output)))
    except InputFileError as exc:
        assert not output.exists() and "\n" not in str(exc) and str(path) in str(exc), str(exc)
        assert "cannot be read (" not in str(exc), f"a reader failed in a way it does not describe: {exc}"
        return "refused"
    return "read"


@FUZZ
@given(raw=whatsapp_texts())
def test_fuzzed_whatsapp_exports(tmp_path: Path, raw: bytes) -> None:
    import importlib.util
    import tempfile

    from conftest import REPO

    work = Path(tempfile.mkdtemp(dir=tmp_path))
    path = work / "WhatsApp Chat with Fuzz.txt"
    path.write_bytes(raw)
    verdict = _refused_or_read(path, work / "m.parquet")
    if verdict == "read":  # the straightforward per-line reader reads the same table
        spec = importlib.util.spec_from_file_location("straightforward_whatsapp",
                                                      REPO / "bench" / "straightforward_whatsapp.py")
        reference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reference)
        table = pl.read_parquet(work / "m.parquet").drop("source", "source_file", "reply_to_message_id",
                                                        "reply_to_chat_id", "forwarded", "forwarded_from",
                                                        "forwarded_from_id", "via_bot", "sender_is_bot")
        # ingest left out rows whose date it could not read: so does the comparison
        expected = pl.from_pandas(reference.read(str(path), "Fuzz")).select(table.columns).cast(table.schema)
        expected = expected.filter(pl.col("date").is_not_null() | (pl.col("kind") == "unsupported"))
        assert table.equals(expected)


DISCORD_KEYS = ["id", "type", "timestamp", "timestampEdited", "content", "author", "attachments", "stickers",
                "reference", "forwardedMessage", "embeds", "mentions"]


@FUZZ
@given(data=st.data())
def test_fuzzed_discord_exports(tmp_path: Path, data) -> None:  # noqa: ANN001
    import tempfile

    import discord_fixtures as fx

    export = fx.export()
    for _ in range(data.draw(st.integers(1, 3))):
        target = export["messages"][data.draw(st.integers(0, len(export["messages"]) - 1))]
        key = data.draw(st.sampled_from(DISCORD_KEYS))
        if data.draw(st.integers(0, 3)) == 0:
            target.pop(key, None)
        else:
            target[key] = data.draw(values)
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    path = fx.write(work / "channel.json", export)
    _refused_or_read(path, work / "m.parquet")
