"""Who may use the dashboard, and how an action proves it comes from the dashboard's own page.

- **Host**: every request must name the dashboard by a host it answers to (`allowed_hosts`):
  on loopback, 127.0.0.1, localhost or ::1; bound to one address, that address too; bound to
  every address (0.0.0.0 or ::), any host, as the token guards it. A page on another site whose
  name points at 127.0.0.1 (DNS rebinding) is refused.
- **Token**: off loopback the dashboard requires one (the command generates and prints it when
  none is given); on loopback only when given. A request carries it as `Authorization: Bearer
  <token>`, or a cookie the dashboard sets when a page is opened once with `?token=<token>` (it
  then redirects to the same page without the token, so it stays out of the address bar,
  history and Referer). The live stream (EventSource cannot send headers) uses the cookie.
- **Actions** (POST) run only with `--allow-actions`, and only when the request's `Origin` is
  the dashboard itself (the one the `Host` header names), it is JSON, and it carries the CSRF
  token (`X-CSRF-Token`) that the dashboard hands its own page (`/api/session`), which pages of
  other origins cannot read. This holds on 127.0.0.1 too: any web page the user opens could
  otherwise post to a dashboard on localhost.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_COOKIE = "pgflow_dashboard_token"
TOKEN_PARAM = "token"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})

# A strict policy: the page's own scripts and styles only, no inline code, nothing framed.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Security:
    """The rules one dashboard applies (see the module's docstring)."""

    bind_host: str
    token: str | None
    allow_actions: bool
    csrf_token: str = field(default_factory=new_token)

    def __post_init__(self) -> None:
        if not is_loopback(self.bind_host) and not self.token:
            raise ValueError(
                f"binding {self.bind_host!r} (not loopback) requires a token: every request "
                "must carry it"
            )

    @property
    def allowed_hosts(self) -> frozenset[str] | None:
        """Host names requests may use (None: any)."""
        if self.bind_host in WILDCARD_ADDRESSES:
            return None
        return LOOPBACK_NAMES | {self.bind_host.strip("[]").lower()}

    def host_allowed(self, host_header: str | None) -> bool:
        if host_header is None:
            return False
        allowed = self.allowed_hosts
        return allowed is None or host_name(host_header) in allowed

    def token_matches(self, given: str | None) -> bool:
        return (
            self.token is not None
            and given is not None
            and hmac.compare_digest(given.encode(), self.token.encode())
        )

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf_token.encode())


def host_name(host_header: str) -> str:
    """The host of a Host header, without the port, lower case (`[::1]:8008` -> `::1`)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_origin(origin: str | None, host_header: str | None) -> bool:
    """Whether `Origin` names the site the `Host` header does (scheme aside: a proxy may end
    TLS in front of the dashboard)."""
    if not origin or not host_header or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.lower()


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookie(headers: dict[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header is the same as none
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


class Guard:
    """ASGI middleware applying `Security` to every request, and its headers to every
    response."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host")
        if not self.security.host_allowed(host):
            await _refuse(
                send,
                421,
                f"this dashboard does not answer to host {host!r}: open it at the address "
                "`pgflow dashboard` printed (other host names are refused, against DNS "
                "rebinding)",
            )
            return
        set_cookie = None
        if self.security.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            auth = headers.get("authorization", "")
            bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            from_query = query.get(TOKEN_PARAM)
            if not (
                self.security.token_matches(bearer)
                or self.security.token_matches(_cookie(headers, TOKEN_COOKIE))
                or self.security.token_matches(from_query)
            ):
                await _refuse(
                    send,
                    401,
                    "this dashboard requires its token: open the URL `pgflow dashboard` "
                    "printed (with ?token=...), or send `Authorization: Bearer <token>`",
                )
                return
            if self.security.token_matches(from_query):
                set_cookie = (
                    f"{TOKEN_COOKIE}={self.security.token}; Path=/; HttpOnly; SameSite=Strict"
                )
                if scope["method"] == "GET" and not scope["path"].startswith("/api/"):
                    # the token leaves the address bar: the cookie carries it from now on
                    rest = urlencode([(k, v) for k, v in query.items() if k != TOKEN_PARAM])
                    location = scope["path"] + (f"?{rest}" if rest else "")
                    await _redirect(send, location, set_cookie)
                    return
        if scope["method"] not in ("GET", "HEAD"):
            problem = self._action_problem(headers)
            if problem is not None:
                await _refuse(send, 403, problem)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if set_cookie is not None:
                    extra.append((b"set-cookie", set_cookie.encode("latin-1")))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _action_problem(self, headers: dict[str, str]) -> str | None:
        if not self.security.allow_actions:
            return (
                "actions are off: start the dashboard with `pgflow dashboard --allow-actions` "
                "to cancel and start runs from it"
            )
        if not same_origin(headers.get("origin"), headers.get("host")):
            return (
                f"refused: the request's Origin ({headers.get('origin')!r}) is not this "
                "dashboard; actions are accepted from the dashboard's own page only"
            )
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return "actions take a JSON body (Content-Type: application/json)"
        if not self.security.csrf_matches(headers.get(CSRF_HEADER)):
            return (
                "refused: missing or wrong CSRF token (header X-CSRF-Token); reload the "
                "dashboard's page, which fetches the current one"
            )
        return None


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str, cookie: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"set-cookie", cookie.encode("latin-1")),
                (b"content-length", b"0"),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
