"""The API gateway in Kong's place: one port, `/rest/v1` proxied to PostgREST, `/storage/v1` served
by the in-process Storage double, API keys required, faults injected, requests counted.

Stdlib only (ThreadingHTTPServer + pooled http.client connections): a thread per client connection,
HTTP/1.1 keep-alive on both sides, so a 2-core machine can push ~150 uploads/s through it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .faults import (
    FaultDecision,
    FaultInjector,
    StackFaults,
    cloudflare_error_page,
    proxy_413_page,
    uri_too_long_page,
)
from .storage.routes import StorageDouble
from .storage.wire import StorageResponse, coded_error, entity_too_large, no_such_key

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
HIDDEN_FROM_POSTGREST = HOP_BY_HOP | {"apikey"}  # Kong's key-auth runs with hide_credentials: true
MULTIPART_OVERHEAD = 1024 * 1024
STREAM_CHUNK = 256 * 1024
STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Counters:
    """Requests per route label and status, plus how many faults of each kind were injected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            self._faults: dict[str, int] = defaultdict(int)

    def count(self, route: str, status: int | str) -> None:
        with self._lock:
            self._requests[route][str(status)] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": {route: dict(statuses) for route, statuses in self._requests.items()},
                "faults": dict(self._faults),
            }


def storage_route_label(method: str, path: str) -> str:
    """`POST /storage/v1/object/{bucket}/{path}` style labels, so counters don't grow per object."""
    parts = path.strip("/").split("/")
    if parts[0] == "bucket":
        label = "/bucket" + ("/{id}" if len(parts) > 1 else "") + ("/empty" if parts[2:3] == ["empty"] else "")
    elif parts[0] == "object" and len(parts) > 1:
        if parts[1] == "list":
            label = "/object/list/{bucket}"
        elif parts[1] in ("info", "public", "authenticated", "sign", "upload"):
            label = f"/object/{parts[1]}/{{bucket}}/{{path}}"
        elif len(parts) == 2:
            label = "/object/{bucket}"
        else:
            label = "/object/{bucket}/{path}"
    else:
        label = "/" + parts[0]
    return f"{method} /storage/v1{label}"


def rest_route_label(method: str, path: str) -> str:
    parts = path.strip("/").split("/")
    keep = parts[:2] if parts[0] == "rpc" else parts[:1]
    return f"{method} /rest/v1/{'/'.join(keep)}"


class UpstreamPool:
    """Idle keep-alive connections to PostgREST, reused LIFO across gateway threads.

    Connections idle longer than `max_idle_seconds` are dropped before PostgREST's own idle timeout
    can close them under us.
    """

    def __init__(self, host: str, port: int, max_idle: int = 64, max_idle_seconds: float = 20) -> None:
        self.host, self.port, self.max_idle, self.max_idle_seconds = host, port, max_idle, max_idle_seconds
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was reused (only a reused one may be stale)."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < self.max_idle_seconds:
                    return conn, True
                conn.close()
        return http.client.HTTPConnection(self.host, self.port, timeout=600), False

    def release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            conn.close()


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, gateway: Gateway) -> None:
        self.gateway = gateway
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _GatewayHandler)

    def process_request(self, request, client_address) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """Client resets and outage teardown are expected; nothing to print."""


class _GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "kong/2.8.1"
    sys_version = ""
    timeout = 120
    server: _GatewayServer

    def log_message(self, format, *args) -> None:  # noqa: A002 - signature fixed by the base class
        """Silent: request logs would carry keys in query strings and slow the hot path."""

    def do_GET(self) -> None:
        self.server.gateway.dispatch(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # --- I/O helpers ---------------------------------------------------------------------------

    def read_body(self, limit: int | None) -> bytes | None:
        """The request body (Content-Length or chunked); None when over `limit` (the rest is drained)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if limit is None or total <= limit:
                    chunks.append(chunk)
            return b"".join(chunks) if limit is None or total <= limit else None
        length = int(self.headers.get("content-length") or 0)
        if limit is not None and length > limit:
            remaining = length
            while remaining > 0:
                got = self.rfile.read(min(remaining, STREAM_CHUNK))
                if not got:
                    break
                remaining -= len(got)
            return None
        return self.rfile.read(length) if length else b""

    def write_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        reason: str | None = None,
        content_length: int | None = None,
        cut_body: bool = False,
    ) -> None:
        """Status line, headers and body in one send; `cut_body` sends half the body and drops the connection.

        `content_length` announces a body the caller streams itself (downloads).
        """
        if reason is None:
            reason = self.responses.get(status, ("",))[0]
        length = len(body) if content_length is None else content_length
        head = [f"HTTP/1.1 {status} {reason}\r\nServer: {self.server_version}\r\nDate: {self.date_time_string()}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in headers)
        head.append(f"Content-Length: {length}\r\n\r\n")
        payload = "".join(head).encode("latin-1")
        if self.command == "HEAD":
            self.wfile.write(payload)
        elif cut_body:
            self.wfile.write(payload + body[: len(body) // 2])
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.wfile.write(payload + body if len(body) < STREAM_CHUNK else payload)
            if len(body) >= STREAM_CHUNK:
                self.wfile.write(body)

    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
        *,
        cut_body: bool = False,
    ) -> None:
        pairs = [("Content-Type", content_type)] if content_type else []
        pairs.extend((headers or {}).items())
        self.write_response(status, pairs, body, cut_body=cut_body)

    def send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)


class Gateway:
    """Routes, authenticates, breaks and counts requests; owns the listening socket."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        storage: StorageDouble,
        faults: FaultInjector,
        counters: Counters,
        api_keys: set[str],
        control_key: str,
        rest_upstream: tuple[str, int],
    ) -> None:
        self.host, self.port = host, port
        self.storage, self.faults, self.counters = storage, faults, counters
        self.api_keys, self.control_key = api_keys, control_key
        self.pool = UpstreamPool(*rest_upstream)
        self._server: _GatewayServer | None = None
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._in_flight = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._server = _GatewayServer((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="supabase-stack-gateway",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the listener and every client connection: afterwards the port refuses connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            connections = list(server.open_connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.pool.close_all()
        if self._thread is not None:
            self._thread.join(5)

    # --- dispatch ------------------------------------------------------------------------------

    def dispatch(self, handler: _GatewayHandler) -> None:
        with self._idle:
            self._in_flight += 1
        try:
            self._dispatch(handler)
        except OSError:
            raise
        except Exception:
            log.exception("gateway failed on %s %s", handler.command, urlsplit(handler.path).path)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.send_json(500, {"message": "An unexpected error occurred in the local gateway"})
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 30) -> bool:
        """Wait for requests still being served (e.g. a slow one whose client gave up) to finish."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def _dispatch(self, handler: _GatewayHandler) -> None:
        method = handler.command
        split = urlsplit(handler.path)
        path = split.path
        if path.startswith("/__stack/"):
            self._control(handler, path, method)
            return
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        line_limit = self.faults.faults.max_request_line_bytes
        if line_limit is not None and len(handler.raw_requestline) > line_limit:
            handler.close_connection = True  # nginx answers before reading the rest of the request
            self.counters.count("414", 414)
            handler.send_bytes(414, uri_too_long_page(), "text/html", {"Connection": "close"})  # as nginx says it
            return
        if path.startswith("/rest/v1/") or path == "/rest/v1":
            service, label = "rest", rest_route_label(method, path[len("/rest/v1") :] or "/")
        elif path.startswith("/storage/v1/"):
            service, label = "storage", storage_route_label(method, path[len("/storage/v1") :])
        else:
            handler.read_body(0)
            self._reply(handler, f"{method} {path}", 404, {"message": "no Route matched with those values"})
            return
        if method == "OPTIONS":
            handler.read_body(0)
            self.counters.count(label, 204)
            handler.send_bytes(
                204,
                b"",
                None,
                {
                    "Access-Control-Allow-Origin": "*",
                    "Access-Control-Allow-Methods": "GET,HEAD,PUT,PATCH,POST,DELETE",
                    "Access-Control-Allow-Headers": "authorization,x-client-info,apikey,content-type,x-upsert",
                },
            )
            return
        api_key = handler.headers.get("apikey") or query.get("apikey")
        if not api_key:
            handler.read_body(0)
            self._reply(handler, label, 401, {"message": "No API key found in request"})
            return
        if api_key not in self.api_keys:
            handler.read_body(0)
            self._reply(handler, label, 401, {"message": "Invalid authentication credentials"})
            return
        fault_config = self.faults.faults
        proxy_limit = fault_config.proxy_max_body_bytes
        storage_limit = self.storage.store.global_file_size_limit + MULTIPART_OVERHEAD
        limit = proxy_limit
        if service == "storage":
            limit = storage_limit if proxy_limit is None else min(proxy_limit, storage_limit)
        body = handler.read_body(limit)
        if body is None:
            if proxy_limit is not None and (service == "rest" or proxy_limit <= storage_limit):
                self.counters.fault("proxy_413")
                self._reply_raw(handler, label, 413, proxy_413_page(), "text/html")
            else:
                self._reply_storage(handler, label, entity_too_large().response())
            return
        decision = self.faults.for_storage() if service == "storage" else self.faults.for_rest()
        if decision.delay:
            self.counters.fault(f"{service}_slow")
            time.sleep(decision.delay)
        if service == "storage":
            self._serve_storage(handler, label, method, path[len("/storage/v1") :], query, body, decision)
        else:
            self._serve_rest(handler, label, method, split, body, decision)

    def _reply(self, handler: _GatewayHandler, label: str, status: int, payload: object) -> None:
        self.counters.count(label, status)
        handler.send_json(status, payload)

    def _reply_raw(self, handler, label: str, status: int, body: bytes, content_type: str, headers=None) -> None:
        self.counters.count(label, status)
        handler.send_bytes(status, body, content_type, headers)

    # --- storage -------------------------------------------------------------------------------

    def _serve_storage(self, handler, label, method, path, query, body, decision: FaultDecision) -> None:
        if decision.kind == "storage_coded_error":
            self.counters.fault(decision.kind)
            self._reply_storage(handler, label, coded_error(decision.status).response())
            return
        if decision.kind in ("storage_5xx", "storage_429", "storage_413"):
            self.counters.fault(decision.kind)
            if decision.status == 429:
                self._reply(handler, label, 429, coded_error(429).body())
            elif decision.status == 413:
                self._reply_raw(handler, label, 413, proxy_413_page(), "text/html")
            elif decision.status == 503:
                self._reply_raw(
                    handler,
                    label,
                    503,
                    b"upstream connect error or disconnect/reset before headers. retried and the latest "
                    b"reset reason: connection failure",
                    "text/plain",
                )
            else:
                self._reply_raw(
                    handler, label, decision.status, cloudflare_error_page(decision.status), "text/html; charset=UTF-8"
                )
            return
        response = self.storage.handle(method, path, query, handler.headers, body)
        if decision.kind == "storage_disconnect":
            self.counters.fault(decision.kind)
            payload = response.body
            if response.file_path is not None:
                payload = response.file_path.read_bytes()
            self.counters.count(label, response.status)
            handler.send_bytes(response.status, payload, response.content_type, response.headers, cut_body=True)
            return
        self._reply_storage(handler, label, response)

    def _reply_storage(self, handler, label: str, response: StorageResponse) -> None:
        if response.file_path is None and response.content_length is None:
            self._reply_raw(handler, label, response.status, response.body, response.content_type, response.headers)
            return
        stream = None
        if response.file_path is not None:
            try:
                stream = open(response.file_path, "rb")  # noqa: SIM115 - closed in the finally below
            except FileNotFoundError:
                self._reply_storage(handler, label, no_such_key().response())
                return
        try:
            self.counters.count(label, response.status)
            headers = [("Content-Type", response.content_type or "application/octet-stream")]
            headers.extend(response.headers.items())
            handler.write_response(response.status, headers, content_length=response.content_length or 0)
            while stream is not None and handler.command != "HEAD":
                chunk = stream.read(STREAM_CHUNK)
                if not chunk:
                    break
                handler.wfile.write(chunk)
        finally:
            if stream is not None:
                stream.close()

    # --- rest ----------------------------------------------------------------------------------

    def _serve_rest(self, handler, label, method, split, body: bytes, decision: FaultDecision) -> None:
        if decision.kind in ("rest_503", "rest_500", "rest_429"):
            self.counters.fault(decision.kind)
            if decision.status == 503:
                self._reply(
                    handler,
                    label,
                    503,
                    {
                        "code": "PGRST001",
                        "details": "connection to server failed: Connection refused",
                        "hint": None,
                        "message": "Database client error. Retrying the connection.",
                    },
                )
            elif decision.status == 429:
                self._reply_raw(
                    handler, label, 429, cloudflare_error_page(429), "text/html; charset=UTF-8", {"Retry-After": "1"}
                )
            else:
                self._reply_raw(handler, label, 500, cloudflare_error_page(500), "text/html; charset=UTF-8")
            return
        target = split.path[len("/rest/v1") :] or "/"
        query = "&".join(p for p in split.query.split("&") if p and not p.startswith("apikey="))
        if query:
            target += "?" + query
        headers = [(k, v) for k, v in handler.headers.items() if k.lower() not in HIDDEN_FROM_POSTGREST]
        upstream = self._forward(method, target, headers, body)
        if upstream is None:
            self._reply(handler, label, 502, {"message": "An invalid response was received from the upstream server"})
            return
        status, reason, response_headers, data = upstream
        if decision.kind == "rest_lost_response":
            self.counters.fault(decision.kind)
            self._reply_raw(handler, label, 502, cloudflare_error_page(502), "text/html; charset=UTF-8")
            return
        self.counters.count(label, status)
        headers = [
            (name, value)
            for name, value in response_headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("server", "date")
        ]
        announced = None
        if method == "HEAD":
            announced = int(next((v for k, v in response_headers if k.lower() == "content-length"), 0))
        handler.write_response(status, headers, data, reason=reason, content_length=announced)

    def _forward(self, method: str, target: str, headers, body: bytes):
        """One upstream round trip, None when PostgREST is unreachable.

        A reused connection that PostgREST closed while idle fails before the request is read, so
        retrying that case once on a fresh connection cannot run a write twice; timeouts are not retried.
        """
        for _attempt in range(2):
            conn, reused = self.pool.acquire()
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", f"{self.pool.host}:{self.pool.port}")
                for name, value in headers:
                    conn.putheader(name, value)
                if body or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                response = conn.getresponse()
                data = response.read()
            except STALE_CONNECTION_ERRORS:
                conn.close()
                if reused:
                    continue
                return None
            except (http.client.HTTPException, OSError):
                conn.close()
                return None
            result = (response.status, response.reason, response.getheaders(), data)
            if response.will_close:
                conn.close()
            else:
                self.pool.release(conn)
            return result
        return None

    # --- control -------------------------------------------------------------------------------

    def _control(self, handler: _GatewayHandler, path: str, method: str) -> None:
        """`/__stack/faults` (GET, POST) and `/__stack/counters` (GET, DELETE) for other processes."""
        body = handler.read_body(1024 * 1024) or b""
        supplied = handler.headers.get("apikey") or handler.headers.get("authorization", "").removeprefix("Bearer ")
        if supplied != self.control_key:
            handler.send_json(401, {"message": "the service_role key is required"})
            return
        if path == "/__stack/faults" and method == "GET":
            handler.send_json(200, self.faults.faults.to_dict())
        elif path == "/__stack/faults" and method in ("POST", "PUT"):
            try:
                faults = StackFaults.from_dict(json.loads(body or b"{}"))
            except (ValueError, TypeError) as exc:
                handler.send_json(400, {"message": str(exc)})
                return
            self.faults.configure(faults)
            handler.send_json(200, faults.to_dict())
        elif path == "/__stack/counters" and method == "GET":
            handler.send_json(200, self.counters.snapshot())
        elif path == "/__stack/counters" and method == "DELETE":
            self.counters.reset()
            handler.send_json(200, self.counters.snapshot())
        else:
            handler.send_json(404, {"message": "unknown control route"})
