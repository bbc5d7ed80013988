"""The service's routes, one module per API: the client webhook, Ollama's API, OpenAI's API, health and metrics."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

from fastapi import Request
from starlette.requests import ClientDisconnect

from cookiebaker.serve.responders import ClientGone, HTTPProblem
from cookiebaker.serve.schemas import T, parse


async def _read(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no length: the limit holds while reading
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def body_of(request: Request) -> dict:
    """The request's JSON object (a 4xx problem otherwise): within the size limit, within the body timeout (408),
    ``ClientGone`` when the client hangs up before it arrived."""
    service = request.app.state.service
    try:
        raw = await asyncio.wait_for(_read(request, service.max_body_bytes), service.body_timeout)
    except asyncio.TimeoutError:
        raise HTTPProblem(408, f"the request body did not arrive within {service.body_timeout:g} s") from None
    except ClientDisconnect:
        raise ClientGone from None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise HTTPProblem(400, "the body nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and integers of over 4,300 digits
        detail = "" if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)) else f" ({exc})"
        raise HTTPProblem(400, f"the body is not valid JSON{detail}") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, "the body must be a JSON object")
    _check_text(data)
    return data


def _check_text(data: object) -> None:
    """Every string must be text that can be encoded: JSON allows a lone surrogate (\\ud800), UTF-8 does not."""
    pending = [data]
    while pending:  # iterative: a deep body must not exhaust the stack here either
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise HTTPProblem(400, "the body holds a lone surrogate (\\ud800-\\udfff), which is not text") from None


async def request_of(request: Request, schema: type[T]) -> T:
    """The request's body as its declared schema (schemas.py); a 422 naming every bad field otherwise."""
    data = await body_of(request)
    try:
        return parse(schema, data)
    except ValueError as exc:
        raise HTTPProblem(422, str(exc)) from None


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
