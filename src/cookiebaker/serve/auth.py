"""Who is asking: the key a request presents (``Authorization: Bearer <key>``)."""

from __future__ import annotations

import hmac

from fastapi import Request


def presented_key(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (the scheme in any case, RFC 9110), or None."""
    scheme, _, key = request.headers.get("authorization", "").strip().partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def authorized(request: Request, api_key: str) -> bool:
    """Whether the request presents the service's key, compared in constant time."""
    key = presented_key(request)
    return key is not None and hmac.compare_digest(key.encode(), api_key.encode())
