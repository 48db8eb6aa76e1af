"""One redaction function for every place text leaves the process.

Roboflow keys leak through URLs (``?api_key=``), export links (``?key=`` download tokens),
``Authorization: Bearer`` headers and 401 bodies that echo the key in a JSON ``"key"`` field.
Supabase keys are JWTs sent as ``apikey``/``Bearer`` headers. :func:`redact` covers all of these
patterns, plus any literal secret registered with :func:`register_secret` (so a key that shows up
in an unexpected shape is still caught).

    >>> redact('GET /ws?api_key=abc-123&x=1')
    'GET /ws?api_key=***&x=1'
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

_QUERY_KEY = re.compile(r"(?i)\b((?:api_key|apikey|key|access_token|token)=)[^&\s\"'\\<>]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JSON_KEY = re.compile(
    r"""(?i)((?<![A-Za-z0-9_])["']?(?:api_key|apikey|key|continuationToken)["']?\s*[:=]\s*)(["'])(?:\\.|(?!\2).)*\2"""
)
_ESCAPED_JSON_KEY = re.compile(r'(?i)(\\"(?:api_key|apikey|key|continuationToken)\\"\s*:\s*\\")(?:(?!\\").)*(\\")')
_HEADER_KEY = re.compile(r"(?i)\b(apikey:\s*)\S+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")

_lock = threading.Lock()
_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret's literal value so it is masked wherever it appears."""
    if value and len(value) >= 6:
        with _lock:
            _known_secrets.add(value)


def redact(text: object) -> str:
    """Return ``text`` as a string with every key, token and registered secret masked."""
    s = text if isinstance(text, str) else str(text)
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in s:
            s = s.replace(secret, MASK)
    s = _QUERY_KEY.sub(lambda m: m.group(1) + MASK, s)
    s = _BEARER.sub(lambda m: m.group(1) + MASK, s)
    s = _ESCAPED_JSON_KEY.sub(lambda m: m.group(1) + MASK + m.group(2), s)
    s = _JSON_KEY.sub(lambda m: m.group(1) + m.group(2) + MASK + m.group(2), s)
    s = _HEADER_KEY.sub(lambda m: m.group(1) + MASK, s)
    return _JWT.sub(MASK, s)


class RedactingFilter(logging.Filter):
    """Logging filter that redacts the fully formatted message and any exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_HARMLESS = (
    "apitools not found",  # Beam without the [gcp] extra, on import
    "requested in with_outputs() but not declared in type hints",  # dead-letter tags on batch steps
)


class HarmlessNoiseFilter(logging.Filter):
    """Drops Beam warnings that are known not to matter here, so real warnings stand out."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(noise in message for noise in _HARMLESS)


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach the redacting filter to every handler of ``logger`` (root by default), once."""
    target = logger or logging.getLogger()
    if not target.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in target.handlers or logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(HarmlessNoiseFilter())
            handler.addFilter(RedactingFilter())
