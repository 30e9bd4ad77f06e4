"""The service's front door: an ASGI middleware in front of every route, in this order.

1. auth     with DOMAINLIFT_API_KEY set (one key, or several separated by commas), every route but the health
            probes needs `Authorization: Bearer <key>` (the scheme in any case, RFC 7235) -> 401
2. rate     at most serve.rate_limit requests per second per key, or per client address when auth is off -> 429
3. type     a request body must be JSON: a Content-Type other than application/json (or a +json type) -> 415,
            before the body is parsed (a multipart type without its boundary would otherwise crash the parser -> 500)
4. body     the whole body is read before anything else happens to the request: at most serve.max_body_bytes
            (-> 413, also straight from Content-Length) within serve.body_timeout_s (-> 408)
5. cap      at most serve.max_concurrency requests in flight per worker -> 503 at once; a request counts only once
            its body is in, so slow uploads cannot hold the slots
6. errors   every 4xx/5xx leaves in one shape, {"error": <kind>, "detail": <what went wrong and the fix>}, whoever
            produced it (BentoML's validation errors and its batcher's overload answer included); every 503 and
            429 carries Retry-After

/metrics is outside the rate limit and the cap (a scrape has to work during overload) but behind the key.
Request texts never reach the log: `quiet_client_errors()` turns BentoML's ERROR-with-traceback for a bad request
(whose pydantic message quotes the input) or an overload into one line, unless serve.log_request_text is on.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import time

import anyio

HEALTH = frozenset({"/livez", "/readyz", "/healthz"})  # open to all: probes carry no key
UNCAPPED = HEALTH | {"/metrics"}
KINDS = {
    400: "invalid request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    408: "request timeout",
    413: "request too large",
    415: "unsupported media type",
    422: "invalid request",
    429: "rate limited",
    500: "internal error",
    503: "overloaded",
}
log = logging.getLogger("serve.gate")


def api_keys() -> list[bytes]:
    return [k.strip().encode() for k in os.environ.get("DOMAINLIFT_API_KEY", "").split(",") if k.strip()]


class TokenBuckets:
    """`rate` requests per second per client, `burst` at once; take() is 0 when allowed, else seconds to wait."""

    MAX_CLIENTS = 10_000  # forget idle clients beyond this many, so addresses cannot grow the table without end

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.state: dict[object, tuple[float, float]] = {}

    def take(self, client) -> float:
        now = time.monotonic()
        tokens, last = self.state.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self.state) >= self.MAX_CLIENTS:
            self.state = {c: s for c, s in self.state.items() if s[0] + (now - s[1]) * self.rate < self.burst}
        if tokens >= 1:
            self.state[client] = (tokens - 1, now)
            return 0.0
        self.state[client] = (tokens, now)
        return (1 - tokens) / self.rate


class Gate:
    def __init__(self, app, settings, responses=None):
        """responses: a counter with a `code` label, incremented for every answer but the health probes'."""
        self.app = app
        self.settings = settings
        self.responses = responses
        self.keys = api_keys()
        self.buckets = TokenBuckets(settings.rate_limit, settings.rate_burst) if settings.rate_limit else None
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = one_error_shape(send)
        path = scope["path"]
        if path in HEALTH:
            return await self.app(scope, receive, send)
        if self.responses is not None:
            send = counted(send, self.responses)
        headers = dict(scope["headers"])  # once per request: auth, type and body all read it
        client = self.authorized(scope, headers)
        if client is None:
            message = "missing or wrong API key: send the header 'Authorization: Bearer <DOMAINLIFT_API_KEY>'"
            return await respond(send, 401, message, {"WWW-Authenticate": "Bearer"})
        if self.buckets and path not in UNCAPPED:
            wait = self.buckets.take(client)
            if wait:
                message = f"over {self.settings.rate_limit:g} requests/s (serve.rate_limit); retry after {wait:.1f} s"
                return await respond(send, 429, message, {"Retry-After": str(math.ceil(wait))})
        if path not in UNCAPPED and not is_json(headers.get(b"content-type")):
            message = "the request body must be JSON: send the header 'Content-Type: application/json'"
            return await respond(send, 415, message)
        body = await self.read_body(headers, receive, send)
        if body is None:  # answered (413, 408) or the client went away
            return
        if path not in UNCAPPED:
            if self.in_flight >= self.settings.max_concurrency:
                message = f"{self.in_flight} requests in flight (serve.max_concurrency); retry shortly"
                return await respond(send, 503, message)
            self.in_flight += 1  # one event loop per worker: no lock needed between check and increment
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            if path not in UNCAPPED:
                self.in_flight -= 1

    def authorized(self, scope, headers: dict) -> object | None:
        """Who is asking (their key, or their address when auth is off), or None when the key is missing/wrong."""
        if not self.keys:
            return (scope.get("client") or ("?",))[0]
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        # Every key is compared, in constant time: no timing oracle on the keys or on which one matched.
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
        return token.strip() if scheme.lower() == b"bearer" and any(matches) else None

    async def read_body(self, headers: dict, receive, send) -> bytes | None:
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        too_large = f"the request body is over {limit} bytes (serve.max_body_bytes): send fewer or shorter texts"
        if declared and declared.isdigit() and int(declared) > limit:
            await respond(send, 413, too_large)
            return None
        chunks, size = [], 0
        try:
            with anyio.fail_after(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await respond(send, 413, too_large)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            timeout = self.settings.body_timeout_s
            await respond(send, 408, f"the request body did not arrive within {timeout:g} s (serve.body_timeout_s)")
            return None


def is_json(content_type: bytes | None) -> bool:
    """True for no Content-Type (BentoML then reads JSON), application/json and the +json types, any parameters."""
    if content_type is None:
        return True
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def counted(send, responses):
    async def send_counted(message):
        if message["type"] == "http.response.start":
            responses.labels(code=str(message["status"])).inc()
        return await send(message)

    return send_counted


def replay(body: bytes, receive):
    """The receive channel of a request whose body was read already: the body once, then the real channel."""
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


async def respond(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"error": KINDS.get(status, "error"), "detail": detail}).encode()
    extra = dict(headers or {})
    if status == 503:
        extra.setdefault("Retry-After", "1")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def one_error_shape(send):
    """`send` that rewrites any 4xx/5xx response into {"error", "detail"} (keeping its other headers)."""
    held: dict = {}

    async def send_shaped(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"], held["body"] = message, b""
            return None
        if message["type"] == "http.response.body" and "start" in held:
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return None
            start = held.pop("start")
            keep = {
                k.decode(): v.decode()
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-type", b"content-length")
            }
            return await respond(send, start["status"], describe(start["status"], held["body"]), keep)
        return await send(message)

    return send_shaped


def describe(status: int, body: bytes) -> str:
    """The human part of an error body, whoever wrote it: ours, BentoML's, pydantic's, starlette's."""
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body.decode(errors="replace")[:500] or KINDS.get(status, "error")
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):  # BentoML's 4xx: [{"error": ...}]
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return str(parsed)[:500]
    detail = parsed.get("detail")
    if isinstance(detail, str) and parsed.get("error") in KINDS.values():  # already ours
        return detail
    if isinstance(detail, list):  # pydantic's validation errors (BentoML leaves the input values out)
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in detail)
    if status >= 500 and status != 503:
        return "the server could not answer this request; the server log has the details"
    if status == 503:
        return "the service is overloaded (its batcher cannot serve the request within serve.max_latency_ms); retry"
    return str(parsed.get("error") or detail or KINDS.get(status, "error"))


class _ClientErrorFilter(logging.Filter):
    """BentoML logs every failed request at ERROR with the traceback; for a bad request that quotes the input (the
    user's texts), for an overload it is noise. Those become one WARNING line without the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from bentoml.exceptions import BentoMLException, ServiceUnavailable
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            what = "400 invalid request (the request's content is not logged; serve.log_request_text shows it)"
        elif isinstance(exc, ServiceUnavailable):
            what = "503 overloaded: the batcher could not serve the request within serve.max_latency_ms"
        elif isinstance(exc, BentoMLException) and exc.error_code.value < 500:
            what = f"{exc.error_code.value} {KINDS.get(exc.error_code.value, 'error')}"
        else:
            return True
        record.msg, record.args = "%s on %s", (what, record.args[0] if record.args else "?")
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def quiet_client_errors() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientErrorFilter())
