"""HTTP plumbing: routing, auth, rate limiting, latency and the transport-level faults.

Two stdlib ThreadingHTTPServers share one EmulatorState: the API host and a CDN/download host, so
image URLs and export links point at a different origin than the API, as they do in production.
"""

from __future__ import annotations

import hmac
import json
import math
import socket
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .api import (
    InvalidRequest,
    Response,
    RoboflowApi,
    account_refusal,
    error_response,
    express_not_found,
    gateway_error,
    json_response,
    storage_error,
    unauthorized,
)
from .config import API_ROUTES, RETRY_AFTER_SHARES, EmulatorConfig, FaultConfig
from .dataset import Dataset
from .faults import FaultState, TokenBuckets
from .images import ImageFactory

CONTROL_PREFIX = "/__emulator/"
_CHUNK = 64 * 1024


class EmulatorState:
    """Everything the request handlers of both servers share."""

    def __init__(self, config: EmulatorConfig, dataset: Dataset, faults: FaultConfig):
        self.config = config
        self.dataset = dataset
        self.images = ImageFactory(config.seed)
        self.api = RoboflowApi(config, dataset, self.images)
        self._counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        self.fault_state = FaultState(faults, dataset, config.seed)
        self.buckets = self._make_buckets(faults)

    @staticmethod
    def _make_buckets(faults: FaultConfig) -> TokenBuckets | None:
        if faults.rate_limit_per_s is None:
            return None
        return TokenBuckets(faults.rate_limit_per_s, faults.rate_limit_burst_s, faults.rate_limit_burst,
                            change_to=faults.rate_limit_change_per_s,
                            after_calls=faults.rate_limit_change_after_calls,
                            after_s=faults.rate_limit_change_after_s)

    def set_faults(self, faults: FaultConfig) -> None:
        self.fault_state = FaultState(faults, self.dataset, self.config.seed)
        self.buckets = self._make_buckets(faults)

    def count(self, *names: str) -> None:
        with self._counter_lock:
            for name in names:
                self._counters[name] += 1

    def counters(self) -> dict[str, int]:
        with self._counter_lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        with self._counter_lock:
            self._counters.clear()

    def fault_targets(self) -> dict[str, list[str]]:
        targets = {name: [self.dataset.id_of(i) for i in indices] for name, indices in self.fault_state.targets.items()}
        targets["undefined_url"] = [
            image_id for image_id in self.dataset.image_ids if self.fault_state.has_undefined_url(image_id)
        ]
        return targets


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
            self._send(self._server_error(status, route, faults), method, route, faults)
            return
        body: object = None
        if route in API_ROUTES and route not in ("unknown_route",):
            body, body_error = _parse_json(raw_body)
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
            response = answer(state, route, params, query, body, method, url.path, faults)
        except InvalidRequest as error:
            response = error_response(400, str(error), "InvalidParameterException", "object")
        except Exception:
            state.count("emulator_error")
            traceback.print_exc(file=sys.stderr)
            response = error_response(500, "Internal Server Error", "InternalServerError", "object")
        self._send(response, method, route, faults)

    def _too_many(self, route: str, faults: FaultState, retry_after: int, share: float | None = None) -> Response:
        """A 429; ``share`` of them carry Retry-After (default: the random 429s' ``retry_after_fraction``)."""
        headers = {}
        if faults.chance(faults.config.retry_after_fraction if share is None else share):
            headers["Retry-After"] = str(max(1, retry_after))
        style = faults.error_style(route, "object")
        return error_response(429, "Rate limit exceeded", "RateLimitException", style, headers=headers)

    def _server_error(self, status: int, route: str, faults: FaultState) -> Response:
        if status == 500 and route in API_ROUTES:
            style = faults.error_style(route, "object")
            return error_response(500, "Internal Server Error", "InternalServerError", style)
        if status == 500:
            return storage_error(500, "InternalError", "We encountered an internal error. Please try again.")
        return gateway_error(status)

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


def _parse_json(raw: bytes) -> tuple[object, str | None]:
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"Unexpected token in JSON: {error}"


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


def match_api_route(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []
    count = len(parts)
    if count == 0 and method in ("GET", "POST", "HEAD"):
        return "root", {}
    if count == 1 and method in ("GET", "HEAD"):
        return "workspace", {"workspace": parts[0]}
    if count == 2 and method in ("GET", "HEAD"):
        return "project", {"workspace": parts[0], "project": parts[1]}
    if count == 3 and method == "POST" and parts[1:] == ["search", "v1"]:
        return "search_v1", {"workspace": parts[0]}
    if count == 3 and method == "POST" and parts[2] == "search":
        return "search", {"workspace": parts[0], "project": parts[1]}
    if count == 3 and method in ("GET", "HEAD"):
        return "version", {"workspace": parts[0], "project": parts[1], "version": parts[2]}
    if count == 4 and method in ("GET", "HEAD") and parts[2] == "images":
        return "image_details", {"workspace": parts[0], "project": parts[1], "image_id": parts[3]}
    if count == 4 and method in ("GET", "HEAD"):
        return "export", {"workspace": parts[0], "project": parts[1], "version": parts[2], "format": parts[3]}
    return "unknown_route", {}


def match_cdn_route(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = [unquote(part) for part in path.strip("/").split("/")]
    if method not in ("GET", "HEAD"):
        return "cdn_unknown", {}
    if len(parts) == 2 and parts[0] == "ds":
        return "zip_link", {"export_id": parts[1]}
    if len(parts) == 3 and parts[0] == "exports" and parts[2] == "roboflow.zip":
        return "zip", {"export_id": parts[1]}
    if len(parts) == 3 and parts[2] == "original.jpg":
        return "cdn_original", {"owner": parts[0], "image_id": parts[1]}
    if len(parts) == 3 and parts[2] == "thumb.jpg":
        return "cdn_thumb", {"owner": parts[0], "image_id": parts[1]}
    if len(parts) == 3 and parts[2].startswith("annotation-") and parts[2].endswith(".json"):
        return "cdn_annotation", {"owner": parts[0], "image_id": parts[1]}
    return "cdn_unknown", {}


def answer(state, route, params, query, body, method, path, faults: FaultState) -> Response:
    """Route a matched, authorised request to the API object."""
    api: RoboflowApi = state.api
    config = state.config
    if route == "unknown_route":
        return express_not_found(method, path)
    if route == "cdn_unknown":
        return storage_error(404, "NoSuchKey", "The specified key does not exist.")
    if route == "cdn_original":
        return api.cdn_original(params["owner"], params["image_id"], faults)
    if route == "cdn_thumb":
        return api.cdn_thumb(params["owner"], params["image_id"], faults)
    if route == "cdn_annotation":
        return api.cdn_annotation(params["owner"], params["image_id"], faults)
    if route == "zip_link":
        return api.zip_link(params["export_id"], (query.get("key") or [None])[0])
    if route == "zip":
        return api.zip_file(params["export_id"], (query.get("X-Signature") or [None])[0])
    if route == "root":
        return api.root()
    if params.get("workspace") != config.workspace:
        return api.unknown_workspace(route, faults)
    if route == "workspace":
        return api.workspace()
    if route == "search_v1":
        return api.search_v1(body, route, faults)
    if params.get("project") != config.project:
        return api.unknown_project(route, faults)
    if route == "project":
        return api.project()
    if route == "search":
        return api.search(body, route, faults)
    if route == "image_details":
        return api.image_details(params["image_id"], route, faults)
    version = params["version"]
    number = int(version) if version.isdigit() else 0
    if route == "version":
        return api.version(number, route, faults)
    return api.export(number, params["format"], route, faults)


def control_route(state: EmulatorState, method: str, path: str, raw_body: bytes) -> Response:
    """Test-only routes so another process can read counters, switch faults and mutate the dataset."""
    name = path[len(CONTROL_PREFIX) :].strip("/")
    body, body_error = _parse_json(raw_body)
    if body_error:
        return json_response(400, {"error": body_error})
    try:
        if name == "health":
            return json_response(200, {"ok": True})
        if name == "counters" and method == "GET":
            return json_response(200, state.counters())
        if name == "timeline" and method == "GET":
            return json_response(200, state.buckets.timeline() if state.buckets is not None else [])
        if name == "counters" and method in ("POST", "DELETE"):
            state.reset_counters()
            return json_response(200, {})
        if name == "faults" and method == "GET":
            return json_response(200, state.fault_state.config.to_dict())
        if name == "faults" and method in ("POST", "PUT", "PATCH"):
            changes = body or {}
            if method == "PATCH":
                changes = {**state.fault_state.config.to_dict(), **changes}
            state.set_faults(FaultConfig.from_dict(changes))
            return json_response(200, state.fault_state.config.to_dict())
        if name == "targets" and method == "GET":
            return json_response(200, state.fault_targets())
        if name == "dataset" and method == "GET":
            dataset = state.dataset
            return json_response(
                200,
                {
                    "image_ids": dataset.image_ids,
                    "owner": dataset.owner,
                    "classes": dataset.classes,
                    "annotation_group": dataset.annotation_group,
                },
            )
        if name.startswith("images/"):
            _, image_id, action = (name.split("/") + ["", ""])[:3]
            if action == "delete" and method in ("POST", "DELETE"):
                state.dataset.delete_image(image_id)
                return json_response(200, {"deleted": image_id})
            if action == "boxes" and method in ("PUT", "POST"):
                state.dataset.set_boxes(image_id, body if isinstance(body, list) else [])
                return json_response(200, {"updated": image_id})
            if action == "labels" and method in ("PUT", "POST"):
                state.dataset.set_labels(image_id, body if isinstance(body, list) else [])
                return json_response(200, {"updated": image_id})
    except KeyError as error:
        return json_response(404, {"error": f"unknown image {error}"})
    except (TypeError, ValueError) as error:
        return json_response(400, {"error": str(error)})
    return json_response(404, {"error": f"no control route {method} {path}"})


def make_server(host: str, port: int, state: EmulatorState, kind: str) -> _EmulatorServer:
    return _EmulatorServer((host, port), state, kind)
