import io
import json
import logging

import pytest

from transforms.core.redact import MASK, RedactingFilter, install_log_redaction, redact, register_secret

ROBOFLOW_KEY = "rf-Ab3_xY9-zQ_7kLm2"
EXPORT_TOKEN = "Xp9-Tok_en42"
SUPABASE_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UifQ"
    ".dGhpcy1pcy1ub3QtYS1yZWFsLXNpZ25hdHVyZV9fXw"
)


def test_docstring_example():
    assert redact("GET /ws?api_key=abc-123&x=1") == "GET /ws?api_key=***&x=1"


def test_realistic_mix_leaves_no_secret_and_keeps_the_text_around_it():
    body_401 = json.dumps({"error": {
        "message": "This API key does not exist (or has been revoked).", "status": 401,
        "type": "OAuthException", "hint": "You may retrieve your API key via the Roboflow Dashboard.",
        "key": ROBOFLOW_KEY}})
    text = "\n".join([
        f"401 Client Error: Unauthorized for url: https://api.roboflow.com/acme/helmets/images/IMG1?api_key={ROBOFLOW_KEY}",
        f"response body: {body_401}",
        "request headers: {'User-Agent': 'importer/1.0', "
        f"'Authorization': 'Bearer {SUPABASE_JWT}', 'apikey': '{SUPABASE_JWT}'}}",
        f"Authorization: Bearer {SUPABASE_JWT}",
        f"apikey: {SUPABASE_JWT}",
        f"export ready: https://app.roboflow.com/ds/abc?key={EXPORT_TOKEN}",
    ])
    out = redact(text)

    for secret in (ROBOFLOW_KEY, EXPORT_TOKEN, SUPABASE_JWT, "rf-Ab3", "kLm2", "Xp9-Tok", "eyJ"):
        assert secret not in out, secret
    for kept in (
        "401 Client Error: Unauthorized for url: https://api.roboflow.com/acme/helmets/images/IMG1?api_key=***",
        '"message": "This API key does not exist (or has been revoked)."',
        '"type": "OAuthException"',
        '"hint": "You may retrieve your API key via the Roboflow Dashboard."',
        '"key": "***"',
        "'User-Agent': 'importer/1.0'",
        "Authorization: Bearer ***",
        "export ready: https://app.roboflow.com/ds/abc?key=***",
    ):
        assert kept in out, kept
    assert len(out.splitlines()) == 6
    # The redacted body is still JSON with the same shape.
    assert json.loads(out.splitlines()[1].removeprefix("response body: "))["error"]["key"] == MASK


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://api.roboflow.com/ws?api_key=a-b_c&nocache=true", "https://api.roboflow.com/ws?api_key=***&nocache=true"),
        ("url=https://h/p?x=1&api_key=k-1_2 next", "url=https://h/p?x=1&api_key=*** next"),
        ("GET /p?API_KEY=Secret1 HTTP/1.1", "GET /p?API_KEY=*** HTTP/1.1"),
        ('"https://h/p?key=tok-en_1"', '"https://h/p?key=***"'),
        ("<a href='https://h/p?key=tok'>x</a>", "<a href='https://h/p?key=***'>x</a>"),
        ("https://h/p?access_token=abc.def", "https://h/p?access_token=***"),
        ("https://h/p?apikey=abc", "https://h/p?apikey=***"),
    ],
)
def test_query_values_are_masked_up_to_the_next_delimiter(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"key": "my_api_key"}', '{"key": "***"}'),
        ('{"api_key":"k-1_2","x":1}', '{"api_key":"***","x":1}'),
        ("{'api_key': 'k-1'}", "{'api_key': '***'}"),
        ('{"continuationToken": "c0ffee=="}', '{"continuationToken": "***"}'),
        ('{"key": "with \\"escaped\\" quote", "n": 2}', '{"key": "***", "n": 2}'),
    ],
)
def test_json_key_fields_are_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["Authorization: Bearer rf_abcDEF123-_.~+/=", "authorization: bearer rf_abcDEF123", "BEARER  rf_abcDEF123"],
)
def test_bearer_tokens_are_masked(text):
    out = redact(text)
    assert "rf_abcDEF123" not in out and out.endswith(MASK)


def test_apikey_header_and_bare_jwt_are_masked():
    assert redact("apikey: sb_secret_abcdef123") == "apikey: ***"
    assert redact(f"token in logs {SUPABASE_JWT} end") == "token in logs *** end"


def test_registered_secret_is_masked_in_any_shape():
    secret = "odd-shaped-secret-0042"
    assert redact(f"X-Custom: {secret}") == f"X-Custom: {secret}"
    register_secret(secret)
    assert redact(f"X-Custom: {secret}; again:{secret}.") == "X-Custom: ***; again:***."


def test_short_or_empty_values_are_not_registered():
    """Masking 'a' or '' everywhere would destroy every message."""
    register_secret("abc")
    register_secret("")
    register_secret(None)
    assert redact("abc is a cat") == "abc is a cat"


def test_longer_registered_secret_wins_over_its_prefix():
    register_secret("prefix-secret")
    register_secret("prefix-secret-longer")
    assert redact("v=prefix-secret-longer!") == "v=***!"


def test_text_without_secrets_is_unchanged():
    text = 'GET https://api.roboflow.com/acme/helmets?nocache=true 200 {"images": 12, "split": "valid"}'
    assert redact(text) == text


def test_redact_accepts_non_strings():
    assert redact(ValueError(f"bad url ?api_key={ROBOFLOW_KEY}")) == "bad url ?api_key=***"
    assert redact(42) == "42"


# ---- logging filter ---------------------------------------------------------------------------


@pytest.fixture
def captured():
    """A logger whose only handler writes to a StringIO through the redacting filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.unit.redact")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers = []


def test_filter_redacts_args_formatted_messages(captured):
    logger, stream = captured
    logger.warning("GET %s failed with %d: %s", f"https://api.roboflow.com/ws?api_key={ROBOFLOW_KEY}", 401,
                   {"key": ROBOFLOW_KEY})
    out = stream.getvalue()
    assert ROBOFLOW_KEY not in out
    assert out == "WARNING GET https://api.roboflow.com/ws?api_key=*** failed with 401: {'key': '***'}\n"


def test_filter_redacts_exception_tracebacks(captured):
    logger, stream = captured
    try:
        raise RuntimeError(f"401 Unauthorized for url: https://api.roboflow.com/ws?api_key={ROBOFLOW_KEY}")
    except RuntimeError:
        logger.exception("details call failed for %s", f"Bearer {ROBOFLOW_KEY}")
    out = stream.getvalue()
    assert ROBOFLOW_KEY not in out
    assert "details call failed for Bearer ***" in out
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: 401 Unauthorized for url: https://api.roboflow.com/ws?api_key=***" in out


def test_filter_redacts_stack_info(captured):
    logger, stream = captured
    register_secret("stack_secret_frame")

    def stack_secret_frame():  # the registered secret shows up as a frame name in the stack dump
        logger.info("here", stack_info=True)

    stack_secret_frame()
    out = stream.getvalue()
    assert "Stack (most recent call last)" in out and "in ***" in out
    assert "stack_secret_frame" not in out


def test_filter_keeps_records_with_a_broken_format_string(captured):
    logger, stream = captured
    logger.error("bad %d format api_key=%s", "not-a-number")
    out = stream.getvalue()
    assert out.startswith("ERROR bad %d format api_key=***")


def test_install_log_redaction_adds_one_filter_per_handler():
    logger = logging.getLogger("tests.unit.redact.install")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.handlers = [handler]
    logger.propagate = False
    try:
        install_log_redaction(logger)
        install_log_redaction(logger)
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        logger.warning("key=%s", "abcdef-ghijk")
        assert stream.getvalue() == "key=***\n"
    finally:
        logger.handlers = []


def test_words_ending_in_key_are_not_masked_but_key_fields_are():
    assert redact('{"monkey": "x", "key": "s3cr3t"}') == '{"monkey": "x", "key": "***"}'


def test_key_inside_backslash_escaped_json_is_masked():
    text = r'body={\"error\": {\"key\": \"escaped-secret\"}}'
    assert "escaped-secret" not in redact(text) and r'\"key\": \"***\"' in redact(text)
