"""How Roboflow answers on the wire: the response, its JSON envelope, and every error body it sends.

Shapes follow /work/shared/reference/roboflow-api.md and the keys the roboflow SDK indexes. Errors come in
several costumes: Roboflow's two JSON envelopes, Express's HTML 404, the load balancer's HTML 5xx, and the
storage host's XML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

JSON_TYPE = "application/json; charset=utf-8"
ROOT_HINT = "You can see your active workspace by issuing a GET request to / with your api_key"
DOCS_HINT = "You can find the API docs at https://docs.roboflow.com"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    file_path: str | None = None
    file_size: int = 0

    @property
    def length(self) -> int:
        return self.file_size if self.file_path else len(self.body)


class InvalidRequest(Exception):
    """A client error that the route answers with 400."""


def parse_json(raw: bytes) -> tuple[object, str | None]:
    """A request's JSON body (None when empty), or the body parser's error message."""
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"Unexpected token in JSON: {error}"


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, body, JSON_TYPE, dict(headers or {}))


def error_response(
    status: int,
    message: str,
    error_type: str,
    style: str,
    hint: str | None = None,
    include_status: bool = True,
    headers: dict[str, str] | None = None,
) -> Response:
    """Roboflow's two envelopes: ``{"error": "msg"}`` or ``{"error": {"message", "status", "type", ...}}``."""
    if style == "string":
        return json_response(status, {"error": message}, headers)
    error: dict[str, object] = {"message": message}
    if include_status:
        error["status"] = status
    error["type"] = error_type
    if hint:
        error["hint"] = hint
    return json_response(status, {"error": error}, headers)


def invalid_parameter(message: str, style: str) -> Response:
    """A request the route cannot read (bad search body, bad continuation token)."""
    return error_response(400, message, "InvalidParameterException", style)


def internal_error(style: str) -> Response:
    return error_response(500, "Internal Server Error", "InternalServerError", style)


def rate_limited(style: str, headers: dict[str, str]) -> Response:
    return error_response(429, "Rate limit exceeded", "RateLimitException", style, headers=headers)


def unauthorized(submitted_key: str | None) -> Response:
    """The real OAuthException body; it echoes the submitted key, which clients must redact."""
    error: dict[str, object] = {
        "message": "This API key does not exist (or has been revoked).",
        "status": 401,
        "type": "OAuthException",
        "hint": "You may retrieve your API key via the Roboflow Dashboard.",
    }
    if submitted_key is not None:
        error["key"] = submitted_key
    return json_response(401, {"error": error})


# Inferred bodies: the statuses and the 423 message are Roboflow's (roboflow-api.md §3); the 402/403 messages
# and every `type` are not documented anywhere we could read.
ACCOUNT_REFUSALS = {
    402: ("You have run out of credits. Add credits or upgrade your plan to continue.", "PaymentRequiredException"),
    423: ("Roboflow API usage is paused", "UsagePausedException"),
    403: ("You do not have permission to access this resource.", "ForbiddenException"),
}


def account_refusal(status: int) -> Response:
    """The account cannot use the API any more (credits, pause, access), whatever the request."""
    message, error_type = ACCOUNT_REFUSALS[status]
    return error_response(status, message, error_type, "object")


def not_found(what: str, style: str, hint: str) -> Response:
    """`Workspace not found.` / `Project not found.` / `Version not found.`"""
    return error_response(404, f"{what} not found.", "NotFoundException", style, hint)


def html_response(status: int, html: str) -> Response:
    return Response(status, html.encode(), "text/html; charset=utf-8")


def express_not_found(method: str, path: str) -> Response:
    """Express's default answer for a path no route matches."""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n</head>\n'
        f"<body>\n<pre>Cannot {method} {path}</pre>\n</body>\n</html>\n"
    )
    return html_response(404, page)


def gateway_error(status: int) -> Response:
    """502/503 come from the load balancer as HTML, not from the API as JSON."""
    reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(status, "Server Error")
    page = (
        f"<html><head><title>{status} {reason}</title></head><body>\n"
        f"<h1>Error: Server Error</h1>\n<h2>The server encountered a temporary error and could not complete your "
        f"request.<p>Please try again in 30 seconds.</h2>\n</body></html>\n"
    )
    return html_response(status, page)


def storage_error(status: int, code: str, message: str) -> Response:
    """Cloud-storage style XML errors, as the CDN host answers."""
    xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return Response(status, xml.encode(), "application/xml; charset=UTF-8")


def no_such_key() -> Response:
    return storage_error(404, "NoSuchKey", "The specified key does not exist.")


def access_denied() -> Response:
    return storage_error(403, "AccessDenied", "Access denied.")


def server_error(status: int, api_style: str | None) -> Response:
    """An injected 5xx: a 500 from the API (JSON, when `api_style` is given) or the storage host (XML);
    any other status from the load balancer (HTML)."""
    if status == 500 and api_style is not None:
        return internal_error(api_style)
    if status == 500:
        return storage_error(500, "InternalError", "We encountered an internal error. Please try again.")
    return gateway_error(status)
