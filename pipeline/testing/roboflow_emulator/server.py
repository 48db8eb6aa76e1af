"""HTTP plumbing: auth, rate limiting, latency and the transport-level faults; the routes are in api/.

Two stdlib ThreadingHTTPServers share one EmulatorState: the API host and a CDN/download host, so
image URLs and export links point at a different origin than the API, as they do in production.
"""

from __future__ import annotations

import hmac
import math
import socket
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .api.routes import match_api_route, match_cdn_route
from .api.wire import (
    InvalidRequest,
    Response,
    account_refusal,
    error_response,
    internal_error,
    invalid_parameter,
    parse_json,
    rate_limited,
    server_error,
    unauthorized,
)
from .config import API_ROUTES, RETRY_AFTER_SHARES
from .control import CONTROL_PREFIX, control_route
from .faults import FaultState
from .state import EmulatorState

_CHUNK = 64 * 1024


class _ConnectionAborted(Exception):
    """Raised after a deliberate reset so the handler stops without touching the dead socket."""


class _EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, state: EmulatorState, kind: str):
        self.state = state
        self.kind = kind
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_idle_connections(self) -> None:
        """Wake handler threads parked on keep-alive sockets so stop() leaves nothing listening."""
        with self._connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "roboflow-emulator"
    sys_version = ""
    timeout = 60
    server: _EmulatorServer

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        """Silent: request lines carry ?api_key=, which must never reach a log."""

    def handle(self):
        try:
            super().handle()
        except (_ConnectionAborted, ConnectionError, TimeoutError):
            self.close_connection = True

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        raw_body = self._read_body()
        if url.path.startswith(CONTROL_PREFIX):
            self._send(control_route(state, method, url.path, raw_body), method, "control")
            return
        faults = state.fault_state
        if self.server.kind == "api":
            route, params = match_api_route(method, url.path)
            latency_ms = faults.config.api_latency_ms
        else:
            route, params = match_cdn_route(method, url.path)
            latency_ms = faults.config.cdn_latency_ms
        state.count(route)
        if latency_ms > 0:
            time.sleep(latency_ms / 1000)
        if faults.fires("reset", route):
            state.count("fault:reset")
            self._reset_connection()
        if faults.fires("slow", route):
            state.count("fault:slow")
            time.sleep(faults.config.slow_seconds)
        if faults.fires("server_error", route):
            status = faults.choice(faults.config.server_error_statuses)
            state.count("fault:server_error")
            api_style = faults.error_style(route, "object") if route in API_ROUTES else None
            self._send(server_error(status, api_style), method, route, faults)
            return
        body: object = None
        if route in API_ROUTES and route not in ("unknown_route",):
            body, body_error = parse_json(raw_body)
            key = _submitted_key(query, self.headers.get("Authorization"), body)
            if key is None or not any(hmac.compare_digest(key, valid) for valid in state.config.valid_keys):
                self._send(unauthorized(key), method, route, faults)
                return
            wait = state.buckets.take(key) if state.buckets is not None else 0.0
            if wait > 0:
                state.count("fault:rate_limit")
                share = RETRY_AFTER_SHARES[faults.config.rate_limit_retry_after]
                self._send(self._too_many(route, faults, math.ceil(wait), share), method, route, faults)
                return
            if faults.account_refuses(route):
                state.count("fault:account_refusal")
                self._send(account_refusal(faults.config.account_refusal_status), method, route, faults)
                return
            if body_error is not None and method == "POST":
                style = faults.error_style(route, "object")
                self._send(error_response(400, body_error, "SyntaxError", style), method, route, faults)
                return
        if faults.fires("throttle", route):
            state.count("fault:throttle")
            self._send(self._too_many(route, faults, faults.config.retry_after_seconds), method, route, faults)
            return
        try:
            response = state.api.answer(route, params, query, body, method, url.path, faults)
        except InvalidRequest as error:
            response = invalid_parameter(str(error), "object")
        except Exception:
            state.count("emulator_error")
            traceback.print_exc(file=sys.stderr)
            response = internal_error("object")
        self._send(response, method, route, faults)

    def _too_many(self, route: str, faults: FaultState, retry_after: int, share: float | None = None) -> Response:
        """A 429; ``share`` of them carry Retry-After (default: the random 429s' ``retry_after_fraction``)."""
        headers = {}
        if faults.chance(faults.config.retry_after_fraction if share is None else share):
            headers["Retry-After"] = str(max(1, retry_after))
        return rate_limited(faults.error_style(route, "object"), headers)

    def _reset_connection(self) -> None:
        """Abort with RST (SO_LINGER 0) and no response, like a dropped upstream connection."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for stream in (self.rfile, self.wfile):
            try:
                stream.close()
            except OSError:
                pass
        self.connection.close()
        raise _ConnectionAborted

    def _send(self, response: Response, method: str, route: str, faults: FaultState | None = None) -> None:
        state = self.server.state
        if route != "control":
            state.count(f"status:{response.status}", f"{route}:{response.status}")
        length = response.length
        truncate_at: int | None = None
        omit_length = False
        if faults is not None and method != "HEAD" and length > 0:
            if faults.fires("truncate", route):
                state.count("fault:truncate")
                truncate_at = max(1, length // 2)
            elif faults.fires("no_content_length", route):
                state.count("fault:no_content_length")
                omit_length = True
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if not omit_length:
            self.send_header("Content-Length", str(length))
        if self.server.kind == "api":
            self.send_header("X-Powered-By", "Express")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if omit_length or truncate_at is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if method == "HEAD":
            return
        limit = length if truncate_at is None else truncate_at
        if response.file_path:
            with open(response.file_path, "rb") as source:
                sent = 0
                while sent < limit:
                    chunk = source.read(min(_CHUNK, limit - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
        else:
            self.wfile.write(response.body[:limit])


def _submitted_key(query: dict[str, list[str]], authorization: str | None, body: object) -> str | None:
    """Query ``api_key`` first (what the SDK sends), then a Bearer header, then ``api_key`` in the JSON body."""
    if query.get("api_key"):
        return query["api_key"][0]
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if isinstance(body, dict) and isinstance(body.get("api_key"), str):
        return body["api_key"]
    return None


def make_server(host: str, port: int, state: EmulatorState, kind: str) -> _EmulatorServer:
    return _EmulatorServer((host, port), state, kind)
