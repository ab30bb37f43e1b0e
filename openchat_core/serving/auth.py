"""API-key and admin-key checks, as a pure ASGI middleware in front of every route.

Why a middleware rather than a FastAPI dependency: it runs before body parsing and routing, so
an unauthenticated client learns nothing (not even whether its JSON parses or a route exists),
and it also covers /openapi.json and /metrics. Only `/health` (liveness probes) is open.

Keys are compared in constant time: the presented token and every configured key are hashed to
SHA-256 digests (equal lengths, so `secrets.compare_digest` leaks neither content nor length),
and all keys are compared without short-circuiting. `/admin/*` accepts only the admin key, and
is off (404) when none is configured, so a client key can never switch models.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from openchat_core.serving.errors import OpenAIError

OPEN_PATHS = frozenset({"/health"})
ADMIN_PREFIX = "/admin/"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class KeyChecker:
    """Holds only digests of the keys, so a memory dump or repr never shows them."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, token: str) -> bool:
        presented = _digest(token)
        found = False
        for digest in self._digests:  # no early exit: the time does not depend on which key matched
            found |= secrets.compare_digest(presented, digest)
        return found


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            try:
                text = value.decode("latin-1").strip()
            except UnicodeDecodeError:
                return None
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class AuthMiddleware:
    """401 unless the request carries a valid key for its route (see module docstring)."""

    def __init__(self, app: ASGIApp, api_keys: Iterable[str], admin_key: str | None) -> None:
        self.app = app
        self.api = KeyChecker(api_keys)
        self.admin = KeyChecker([admin_key] if admin_key else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        error = self.check(scope.get("path", ""), bearer_token(scope))
        if error is not None:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, path: str, token: str | None) -> OpenAIError | None:
        if path.startswith(ADMIN_PREFIX) or path == ADMIN_PREFIX.rstrip("/"):
            if not self.admin.enabled:
                return OpenAIError(404, "Admin routes are off; start the server with --admin-key (or OPENCHAT_ADMIN_KEY) "
                                        "to enable model switching.", code="admin_disabled")
            if token is None or not self.admin.matches(token):
                return _unauthorized("admin key", "invalid_admin_key")
            return None
        if self.api.enabled and (token is None or not self.api.matches(token)):
            return _unauthorized("API key", "invalid_api_key")
        return None


def _unauthorized(what: str, code: str) -> OpenAIError:
    return OpenAIError(401, f"Missing or invalid {what}; send it as `Authorization: Bearer <key>`.",
                       code=code, headers={"WWW-Authenticate": "Bearer"})
