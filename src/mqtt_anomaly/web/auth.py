"""Access control for the HTTP side: a bearer token, or HTTP basic auth with it as password.

A pure ASGI middleware, so it also covers the static dashboard and the event stream (a browser
asks once for the basic-auth password and then sends it with every request, EventSource
included). Health probes stay open.
"""

from __future__ import annotations

import base64
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class TokenAuth:
    """Reject HTTP requests without the token (401, with a basic-auth challenge)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if kind != "http":  # a WebSocket (none is served): refused before it is accepted
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="mqtt-anomaly", charset="UTF-8"'),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b'{"detail":"token required"}'})

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name != b"authorization":
                continue
            kind, _, cred = bytes(value).partition(b" ")
            if kind.lower() == b"bearer":
                return hmac.compare_digest(cred.strip(), self.token)
            if kind.lower() == b"basic":
                try:
                    _, _, password = base64.b64decode(cred.strip(), validate=True).partition(b":")
                except ValueError:
                    return False
                return hmac.compare_digest(password, self.token)
        return False
