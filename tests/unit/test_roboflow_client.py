"""The clients' retry layer against a scripted local HTTP server (no emulator, no Beam): what a 429,
a gzip body, a short body and a PostgREST 503 do to the number of calls and to the result."""

import gzip
import http.server
import socket
import threading
import time

import pytest

from transforms.clients.roboflow import RoboflowClient, RoboflowError
from transforms.clients.supabase import SupabaseClient
from transforms.core.retry import RetryPolicy, TransientError

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_elapsed=5.0)


class Scripted(http.server.ThreadingHTTPServer):
    """Answers each request with the next of ``script`` (the last one repeats); counts requests."""

    daemon_threads = True

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_answer(self, path: str):
        self.requests.append(path)
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        status, headers, body = self.server.next_answer(self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if int(headers.get("Content-Length", len(body))) != len(body):  # a short body: cut the connection
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    do_HEAD = do_GET


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        server = Scripted(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


OK_DETAILS = (200, {"Content-Type": "application/json"}, b'{"image": {"id": "a"}}')
TOO_MANY = (429, {"Content-Type": "application/json", "Retry-After": "0"}, b'{"error": "Rate limit exceeded"}')
TOO_MANY_BARE = (429, {"Content-Type": "application/json"}, b'{"error": "Rate limit exceeded"}')


def client_for(server, **kwargs) -> RoboflowClient:
    return RoboflowClient(server.url, "k-secret-123456", retry=FAST, **kwargs)


def test_more_429s_than_the_attempt_budget_are_waited_out(serve):
    server = serve(*[TOO_MANY, TOO_MANY_BARE] * 3, OK_DETAILS)  # 6 429s, the budget is 3 attempts
    client = client_for(server)
    assert client.image_details("ws", "proj", "a") == {"image": {"id": "a"}}
    assert len(server.requests) == 7
    assert client.stats.retries == {"rate_limited": 6}


def test_a_run_with_nothing_but_429s_stops_once_stalled_and_sends_nothing_more(serve, caplog):
    server = serve(TOO_MANY)
    # Longer than a "Retry-After: 0" wait (up to 0.5 s of jitter): a gap between calls longer than the
    # stall timeout counts as idleness (between two imports), so 0.3 s made this test wait at random.
    client = client_for(server, stall_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(RoboflowError) as info:
        client.image_details("ws", "proj", "a")
    assert 1.0 <= time.monotonic() - start < 5.0
    assert info.value.kind == "rate_limited"
    assert "--roboflow_stall_timeout" in str(info.value) and "--retry_dead_letters" in str(info.value)
    assert len(server.requests) >= 2 and info.value.attempts >= len(server.requests)
    sent = len(server.requests)
    with pytest.raises(RoboflowError) as again:  # the next image fails at once, without a request
        client.image_details("ws", "proj", "b")
    assert again.value.kind == "rate_limited" and len(server.requests) == sent
    stall_lines = [r for r in caplog.records if "--roboflow_stall_timeout" in r.getMessage()]
    assert len(stall_lines) == 1


def test_a_success_from_another_thread_keeps_429s_waited_out(serve):
    server = serve(*[TOO_MANY] * 6, OK_DETAILS)
    client = client_for(server, stall_timeout=0.2)
    done = threading.Event()

    def other_threads_getting_through():
        while not done.wait(0.05):
            client.stall.success()

    beat = threading.Thread(target=other_threads_getting_through)
    beat.start()
    start = time.monotonic()
    try:
        assert client.image_details("ws", "proj", "a") == {"image": {"id": "a"}}
    finally:
        done.set()
        beat.join()
    assert time.monotonic() - start > 0.2  # longer than the stall timeout, and still not given up


def test_other_faults_keep_their_bounded_budget(serve):
    server = serve((503, {}, b"busy"))
    client = client_for(server)
    with pytest.raises(TransientError) as info:
        client.image_details("ws", "proj", "a")
    assert info.value.kind == "http_503" and len(server.requests) == FAST.max_attempts


PIXELS = bytes(range(256)) * 40


def test_a_complete_gzip_encoded_download_is_accepted(serve):
    body = gzip.compress(PIXELS)
    server = serve((200, {"Content-Encoding": "gzip", "Content-Type": "image/png"}, body))
    seen = []
    data = client_for(server).download(server.url + "/img.png", validate=lambda d, checked: seen.append(checked))
    assert data == PIXELS and len(body) != len(PIXELS)
    assert seen == [True] and len(server.requests) == 1


@pytest.mark.parametrize("encoding", [{}, {"Content-Encoding": "gzip"}])
def test_a_body_shorter_than_its_content_length_is_retried_then_reported(serve, encoding):
    body = gzip.compress(PIXELS) if encoding else PIXELS
    short = (200, {**encoding, "Content-Length": str(len(body))}, body[: len(body) // 2])
    server = serve(short, short, (200, dict(encoding), body))
    assert client_for(server).download(server.url + "/img.png") == PIXELS
    assert len(server.requests) == 3
    server.script = [short]
    with pytest.raises(TransientError) as info:
        client_for(server).download(server.url + "/img.png")
    assert info.value.kind == "truncated_body"


def test_postgrest_does_not_retry_inside_our_attempts(serve):
    server = serve((503, {"Content-Type": "application/json"},
                    b'{"code": "PGRST002", "message": "Could not query the database for the schema cache"}'))
    client = SupabaseClient(server.url, "service-key-123456", retry=RetryPolicy(max_attempts=2, base_delay=0.01))
    start = time.monotonic()
    with pytest.raises(TransientError):
        client.select("od_images", "id", id="x")
    assert [p.split("?")[0] for p in server.requests] == ["/rest/v1/od_images"] * 2  # ours: 2, not 2 x 4
    assert time.monotonic() - start < 1.0  # no postgrest-py back-off of 1, 2 and 4 s inside
    client.close()
