"""A PostgREST call answered by the gateway in front of PostgREST, not by PostgREST: the body has no
``code``, so the HTTP status decides whether the call is retried."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from postgrest.exceptions import APIError

from transforms.clients.supabase import SupabaseClient, postgrest_error
from transforms.core.retry import PermanentError, RetryPolicy, TransientError

KONG_502 = {"message": "An invalid response was received from the upstream server"}


@pytest.mark.parametrize(("status", "expected"), [(502, TransientError), (503, TransientError),
                                                  (429, TransientError), (401, PermanentError),
                                                  (None, PermanentError)])
def test_a_body_without_a_code_is_judged_by_the_status(status, expected):
    error = postgrest_error(APIError(dict(KONG_502)), "select od_images", status)
    assert type(error) is expected
    assert "upstream server" in str(error)


def test_postgrests_own_code_wins_over_the_status():
    unique = APIError({"code": "23505", "message": "duplicate key value violates unique constraint"})
    assert type(postgrest_error(unique, "insert", 409)) is PermanentError
    assert type(postgrest_error(APIError({"code": "PGRST001", "message": "db down"}), "select", 503)) \
        is TransientError


@pytest.fixture()
def gateway():
    """Answers every /rest/v1 call as Kong does while PostgREST is down, a few times, then a row."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            status, body = (502, KONG_502) if len(seen) <= 2 else (200, [{"id": "a"}])
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_a_gateway_502_mid_run_is_retried_and_heals(gateway):
    url, seen = gateway
    client = SupabaseClient(url, "sb_gateway_test_key", retry=RetryPolicy(max_attempts=4, base_delay=0.01,
                                                                          max_delay=0.02))
    try:
        assert client.select("od_images", "id", id="a") == [{"id": "a"}]
    finally:
        client.close()
    assert len(seen) == 3  # two 502s waited out, then the answer
