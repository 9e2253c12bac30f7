"""The checks every request passes before any route sees it, as plain ASGI middleware (so they
hold under uvicorn and under Ray Serve alike).

:class:`SecurityHeaders` adds to every response: the Content-Security-Policy of the page the
path belongs to (with ``frame-ancestors 'none'``), ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``, same-origin opener and resource
policies, and ``Cache-Control: no-store`` where a route set none.

:class:`Guard`, in order: exactly one Host header, naming a host this server answers to (a DNS
rebinding page sends its own name: 400); no WebSocket; for anything but a plain GET of a file
(every POST, every ``/api/`` request) no cross-site request (``Sec-Fetch-Site``) and an
``Origin``, when sent, equal to the Host (403: a page elsewhere cannot make the browser call the
API); the token, when the server has one (401): ``Authorization: Bearer <token>``, or the
session cookie set by opening any page once with ``?token=<token>`` (answered by a redirect to
the same URL without it, so the token leaves the address bar); both compared in constant time;
a declared or counted body above the largest limit (413); headers over ``header_bytes`` (431).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.server.files import csp_for
from pipelines.server.settings import ServerSettings

COOKIE = "atlas_session"
_FIXED = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
_SAFE = ("GET", "HEAD")


async def refuse(send: Send, status: int, message: str, headers: tuple = ()) -> None:
    """A JSON error response: ``{"error": message}``."""
    body = json.dumps({"error": message}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": start + list(headers)})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = csp_for(scope["path"]).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                extra = (*_FIXED, (b"content-security-policy", csp))
                headers += [(k, v) for k, v in extra if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _TooLarge(Exception):
    pass


def _path(path: str) -> tuple | None:
    """A decoded path with control characters (NUL, CR, LF, ...) is refused before routing."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return 400, "control character in path"
    return None


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class _Token:
    """The server's token and the session cookie's value derived from it (not the token
    itself); both compared by digest, in constant time."""

    def __init__(self, token: str) -> None:
        raw = token.encode()
        self._token = _digest(raw)
        self.session = hmac.new(raw, b"atlas-serve-session", hashlib.sha256).hexdigest()
        self._session = _digest(self.session.encode())

    def is_token(self, given: bytes) -> bool:
        return hmac.compare_digest(_digest(given), self._token)

    def is_session(self, given: str) -> bool:
        return hmac.compare_digest(_digest(given.encode()), self._session)


class Guard:
    """Host, origin, token and body-size checks (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.body_limit = max(settings.upload_bytes, settings.json_bytes) + 256 * 1024
        self.token = _Token(settings.token) if settings.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no WebSocket, nothing else
            await send({"type": "websocket.close", "code": 1008})
            return
        headers: dict[bytes, list[bytes]] = {}
        size = 0
        for k, v in scope["headers"]:
            headers.setdefault(k, []).append(v)
            size += len(k) + len(v) + 4
        if size > self.settings.header_bytes:  # h11 bounds a head that arrives in pieces only
            return await refuse(
                send, 431, f"request headers over {self.settings.header_bytes} bytes"
            )
        refusal = _path(scope["path"]) or self._host(headers) or self._origin(scope, headers)
        if refusal is None and self.token is not None:
            if await self._login(scope, send, self.token):
                return
            refusal = self._credentials(headers, self.token)
        if refusal is None:
            refusal = self._declared_size(headers)
        if refusal is not None:
            return await refuse(send, *refusal)
        await self._call_counted(scope, receive, send)

    def _host(self, headers: dict[bytes, list[bytes]]) -> tuple | None:
        hosts = headers.get(b"host", [])
        if len(hosts) != 1:
            return 400, "a request needs exactly one Host header"
        host = hosts[0].decode("latin-1")
        if not self.settings.accepts_host(host):
            return 400, (
                f"this server does not answer to the host {host[:100]!r}; its operator can "
                "allow a name with --allow-host NAME"
            )
        return None

    def _origin(self, scope: Scope, headers: dict[bytes, list[bytes]]) -> tuple | None:
        if scope["method"] in _SAFE and not scope["path"].startswith("/api/"):
            return None
        site = headers.get(b"sec-fetch-site", [b"same-origin"])[0].lower()
        if site not in (b"same-origin", b"none"):
            return 403, "cross-site requests are refused"
        origin = headers.get(b"origin")
        if origin is None:
            return None  # not from a browser page, or a same-origin GET
        netloc = urlsplit(origin[0].decode("latin-1")).netloc.lower()
        if netloc != headers[b"host"][0].decode("latin-1").lower():
            return 403, "requests from another origin are refused"
        return None

    def _credentials(self, headers: dict[bytes, list[bytes]], token: _Token) -> tuple | None:
        for value in headers.get(b"authorization", []):
            scheme, _, bearer = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.is_token(bearer.strip()):
                return None
        for value in headers.get(b"cookie", []):
            if token.is_session(cookie_parser(value.decode("latin-1")).get(COOKIE, "")):
                return None
        return (
            401,
            (
                "this server needs its token: open the page once as URL?token=<token>, or send "
                "Authorization: Bearer <token>"
            ),
            ((b"www-authenticate", b'Bearer realm="atlas"'),),
        )

    async def _login(self, scope: Scope, send: Send, token: _Token) -> bool:
        """``GET <path>?token=<token>``: set the session cookie and redirect to the URL without
        the token (True: answered here). A wrong token falls through to the 401."""
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if scope["method"] not in _SAFE or len(given) != 1:
            return False
        if not token.is_token(given[0].encode()):
            return False
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        path = b"/" + scope.get("raw_path", scope["path"].encode()).lstrip(b"/")  # never //host
        location = path + (b"?" + rest.encode() if rest else b"")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={token.session}; Path=/; HttpOnly; SameSite=Lax{secure}"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location),
                    (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return True

    def _declared_size(self, headers: dict[bytes, list[bytes]]) -> tuple | None:
        for value in headers.get(b"content-length", []):
            if not value.isdigit() or int(value) > self.body_limit:
                return 413, f"request body over the limit of {self.body_limit} bytes"
        return None

    async def _call_counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with the body counted as it arrives: past the limit, 413."""
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.body_limit:
                raise _TooLarge
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except _TooLarge:
            if not started:
                await refuse(send, 413, f"request body over the limit of {self.body_limit} bytes")
