"""How Supabase Storage answers: the response, its error bodies, and the JSON of objects and listings.

real server: every error is HTTP 400 with the real status as a *string* `statusCode`, unless it is a 500
(supabase/storage: codes.ts, the error handler); storage3 parses exactly these bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote

RLS_DENIED = "new row violates row-level security policy"


@dataclass
class StorageResponse:
    """What the gateway writes back; `file_path` is streamed instead of `body` for downloads."""

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    content_length: int | None = None

    @classmethod
    def json(cls, payload: object, status: int = 200) -> StorageResponse:
        return cls(status, json.dumps(payload).encode())


class StorageError(Exception):
    """An error rendered like Storage's error handler: HTTP 400 unless the code is 500."""

    def __init__(self, status: int, code: str, message: str, error: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.error = status, code, message, error or code
        self.http_status = 500 if status == 500 else 400

    def body(self) -> dict:
        return {"statusCode": str(self.status), "code": self.code, "error": self.error, "message": self.message}

    def response(self) -> StorageResponse:
        return StorageResponse.json(self.body(), self.http_status)


def route_not_found(method: str, path: str) -> StorageResponse:
    """The router's own 404 (a real HTTP 404, unlike the errors above)."""
    return StorageResponse.json(
        {"statusCode": "404", "error": "Not Found", "message": f"Route {method}:{path} not found"}, 404
    )


def no_such_bucket() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


def no_such_key() -> StorageError:
    return StorageError(404, "NoSuchKey", "Object not found", "not_found")


def access_denied(message: str = RLS_DENIED) -> StorageError:
    return StorageError(403, "AccessDenied", message, "Unauthorized")


def already_exists() -> StorageError:
    """real server: an object key taken without x-upsert is KeyAlreadyExists (ResourceAlreadyExists is for others)."""
    return StorageError(409, "KeyAlreadyExists", "The resource already exists", "Duplicate")


def bucket_already_exists() -> StorageError:
    return StorageError(409, "BucketAlreadyExists", "The resource already exists", "Duplicate")


def bucket_not_empty() -> StorageError:
    return StorageError(409, "ResourceNotEmpty", "The bucket you tried to delete is not empty")


def invalid_bucket_name() -> StorageError:
    return StorageError(400, "InvalidBucketName", "Bucket name invalid", "Invalid Input")


def invalid_key(name: str) -> StorageError:
    return StorageError(400, "InvalidKey", f"Invalid key: {name}")


def invalid_jwt(message: str) -> StorageError:
    return StorageError(400, "InvalidJWT", message)


CODED_ERRORS = {
    544: ("DatabaseTimeout", "Timeout while acquiring a database connection", "DatabaseTimeout"),
    503: ("SlowDown", "Please reduce your request rate", "SlowDown"),
    423: ("ResourceLocked", "The resource is locked", "ResourceLocked"),
    429: ("SlowDown", "Too many connections issued to the database", "too_many_connections"),
}


def coded_error(status: int) -> StorageError:
    """Storage's transient errors by status (codes.ts); messages are inferred, the codes are the server's."""
    code, message, error = CODED_ERRORS[status]
    return StorageError(status, code, message, error)


def entity_too_large() -> StorageError:
    return StorageError(413, "EntityTooLarge", "The object exceeded the maximum allowed size", "Payload too large")


def bucket_too_large() -> StorageError:
    return StorageError(413, "EntityTooLarge", "The bucket exceeded the maximum allowed size", "Payload too large")


def invalid_mime_type(mime: str) -> StorageError:
    return StorageError(415, "InvalidMimeType", f"mime type {mime} is not supported", "invalid_mime_type")


def invalid_request(message: str) -> StorageError:
    return StorageError(400, "InvalidRequest", message)


def bad_request(message: str) -> StorageError:
    """A JSON body the route cannot accept: not JSON, or not matching the route's schema."""
    return StorageError(400, "InvalidRequest", message, "Bad Request")


def json_body(body: bytes) -> dict:
    """A route's JSON body; an empty body is `{}`, and so is any JSON that is not an object."""
    if not body:
        return {}
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise bad_request("Body is not valid JSON") from exc
    return payload if isinstance(payload, dict) else {}


def object_info(bucket_id: str, meta: dict) -> dict:
    """`GET /object/info/...`: the object's row, renamed as the info route names it."""
    return {
        "id": meta["id"],
        "name": meta["name"],
        "version": meta["version"],
        "bucket_id": bucket_id,
        "size": meta["size"],
        "content_type": meta["mimetype"],
        "cache_control": meta["cache_control"],
        "etag": meta["etag"],
        "metadata": meta["user_metadata"],
        "last_modified": meta["updated_at"],
        "created_at": meta["created_at"],
    }


def list_entry(meta: dict, display_name: str) -> dict:
    """An object as `POST /object/list` and `DELETE /object/{bucket}` return it."""
    return {
        "name": display_name,
        "bucket_id": meta["bucket_id"],
        "id": meta["id"],
        "updated_at": meta["updated_at"],
        "created_at": meta["created_at"],
        "last_accessed_at": meta["last_accessed_at"],
        "metadata": {
            "eTag": meta["etag"],
            "size": meta["size"],
            "mimetype": meta["mimetype"],
            "cacheControl": meta["cache_control"],
            "lastModified": meta["updated_at"],
            "contentLength": meta["size"],
            "httpStatusCode": 200,
        },
    }


def folder_entry(display_name: str) -> dict:
    """A folder in a listing: a name and nulls."""
    return {
        "name": display_name,
        "id": None,
        "updated_at": None,
        "created_at": None,
        "last_accessed_at": None,
        "metadata": None,
    }


def download(meta: dict, data_path: Path | None, download_name: str | None) -> StorageResponse:
    """A download's status and headers; the bytes stream from `data_path` (None for HEAD)."""
    mimetype = meta["mimetype"]
    if "text/html" in mimetype:
        mimetype = "text/plain"
    updated = datetime.fromisoformat(meta["updated_at"].replace("Z", "+00:00"))
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": meta["etag"],
        "Last-Modified": format_datetime(updated, usegmt=True),
        "Cache-Control": meta["cache_control"] or "no-cache",
    }
    if download_name is not None:
        filename = quote(download_name, safe="")
        headers["Content-Disposition"] = (
            f"attachment; filename={filename}; filename*=UTF-8''{filename};" if filename else "attachment;"
        )
    return StorageResponse(
        200, content_type=mimetype, headers=headers, content_length=meta["size"], file_path=data_path
    )
