"""A stand-in for the Supabase Storage API (supabase/storage), speaking its wire format.

The real server is a Node service shipped only as a Docker image, so this double copies what
storage3 sends and parses: multipart uploads with `x-upsert`, errors as HTTP 400 carrying the real
status as a *string* `statusCode`, `{"Id", "Key"}` on upload, bucket limits and MIME rules, and JWT
checks (service_role passes; anon/authenticated meet the row-level-security denial that Storage's
default policies produce). Object bytes live on disk under `root`, each with a JSON sidecar.

Where it follows the real server's source rather than its documentation (supabase/storage: uploader.ts,
limits.ts, codes.ts), the behaviour is marked "real server:"; what is inferred is marked "inferred:".
Not served: resumable (TUS) uploads, signed URLs, image transformations, S3 protocol.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote, unquote

from .keys import InvalidJwtError, verify_token

DEFAULT_FILE_SIZE_LIMIT = 52428800  # self-hosted Storage's FILE_SIZE_LIMIT default, in bytes
MAX_MULTIPART_FIELDS = 10
VALID_KEY = re.compile(r"^(\w|/|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)*$", re.ASCII)
VALID_BUCKET = re.compile(r"^(\w|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)+$", re.ASCII)
SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}  # real server: decimal units
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

    def response(self) -> StorageResponse:
        body = {"statusCode": str(self.status), "code": self.code, "error": self.error, "message": self.message}
        return StorageResponse.json(body, self.http_status)


def no_such_bucket() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


def no_such_key() -> StorageError:
    return StorageError(404, "NoSuchKey", "Object not found", "not_found")


def access_denied(message: str = RLS_DENIED) -> StorageError:
    return StorageError(403, "AccessDenied", message, "Unauthorized")


def already_exists() -> StorageError:
    """real server: an object key taken without x-upsert is KeyAlreadyExists (ResourceAlreadyExists is for others)."""
    return StorageError(409, "KeyAlreadyExists", "The resource already exists", "Duplicate")


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


def invalid_mime_type(mime: str) -> StorageError:
    return StorageError(415, "InvalidMimeType", f"mime type {mime} is not supported", "invalid_mime_type")


def invalid_request(message: str) -> StorageError:
    return StorageError(400, "InvalidRequest", message)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_size(value: object) -> int | None:
    """`file_size_limit` as Storage accepts it: bytes as an int, or '20MB' / '30KB' / '3B' in decimal units."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise invalid_request("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*", str(value).upper())
    if not match:
        raise invalid_request("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def mime_allowed(mime: str, allowed: list[str] | None) -> bool:
    """Storage's rule: compare type and subtype literally (parameters included), `type/*` wildcards."""
    if not allowed:
        return True
    requested = mime.split("/")
    if len(requested) < 2:
        return False
    for candidate in allowed:
        allowed_parts = candidate.split("/")
        if len(allowed_parts) >= 2 and requested[0] == allowed_parts[0]:
            if allowed_parts[1] == "*" or allowed_parts[1] == requested[1]:
                return True
    return False


@dataclass
class UploadedFile:
    """The file part of an upload plus the form fields Storage stores with it."""

    data: bytes
    mimetype: str
    cache_control: str
    user_metadata: dict | None


def _header_params(value: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r';\s*([\w*-]+)="?([^";]*)"?', ";" + value)}


def parse_upload_body(body: bytes, headers) -> UploadedFile:
    """The file of a multipart upload (one file part + up to 10 fields) or of a raw-body upload."""
    content_type = headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        metadata = None
        if headers.get("x-metadata"):
            try:
                metadata = json.loads(base64.b64decode(headers["x-metadata"]))
            except ValueError as exc:
                raise invalid_request("Invalid metadata") from exc
        mimetype = content_type or "text/plain;charset=UTF-8"
        return UploadedFile(body, mimetype, headers.get("cache-control", ""), metadata)
    boundary = _header_params(content_type).get("boundary")
    if not boundary:
        raise invalid_request("Multipart: Boundary not found")
    delimiter = b"--" + boundary.encode("latin-1")
    if not body.startswith(delimiter):
        raise invalid_request("Multipart: Unexpected end of form")
    fields: dict[str, str] = {}
    upload: UploadedFile | None = None
    position = len(delimiter)
    while body[position : position + 2] != b"--":
        position += 2
        end = body.find(b"\r\n" + delimiter, position)
        if end < 0:
            raise invalid_request("Multipart: Unexpected end of form")
        header_end = body.find(b"\r\n\r\n", position, end)
        if header_end < 0:
            raise invalid_request("Multipart: Malformed part header")
        part_headers = {}
        for line in body[position:header_end].decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            part_headers[name.strip().lower()] = value.strip()
        disposition = _header_params(part_headers.get("content-disposition", ""))
        content = body[header_end + 4 : end]
        if "filename" in disposition or "filename*" in disposition:
            if upload is not None:
                raise invalid_request("reach files limit")
            upload = UploadedFile(content, part_headers.get("content-type", "text/plain"), "", None)
        else:
            if len(fields) >= MAX_MULTIPART_FIELDS:
                raise invalid_request("reach fields limit")
            fields[disposition.get("name", "")] = content.decode("utf-8", "replace")
        position = end + 2 + len(delimiter)
    if upload is None:
        raise invalid_request("No content provided")
    upload.cache_control = fields.get("cacheControl", upload.cache_control)
    if fields.get("contentType"):  # real server: the form field wins over the file part's own type
        upload.mimetype = fields["contentType"]
    if fields.get("metadata"):
        try:
            upload.user_metadata = json.loads(fields["metadata"])
        except ValueError as exc:
            raise invalid_request("Invalid metadata") from exc
    return upload


class StorageDouble:
    """Buckets and objects on disk, served through `handle()` by the gateway threads."""

    def __init__(self, root: Path, jwt_secret: str, global_file_size_limit: int = DEFAULT_FILE_SIZE_LIMIT,
                 standard_upload_size_limit: int | None = None):
        self.root = root
        self.jwt_secret = jwt_secret
        self.global_file_size_limit = global_file_size_limit
        # real server: standard (non-TUS) uploads have their own cap (UPLOAD_FILE_SIZE_LIMIT_STANDARD); None = global
        self.standard_upload_size_limit = standard_upload_size_limit
        self._bucket_dir = root / "buckets"
        self._object_dir = root / "objects"
        self._tmp_dir = root / "tmp"
        for directory in (self._bucket_dir, self._object_dir, self._tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._locks = [threading.Lock() for _ in range(64)]
        self._bucket_lock = threading.Lock()
        self._bucket_cache: dict[str, dict | None] = {}
        self._verified_tokens: dict[str, dict] = {}

    def _lock_for(self, bucket: str, name: str) -> threading.Lock:
        return self._locks[hash((bucket, name)) % len(self._locks)]

    # --- buckets -------------------------------------------------------------------------------

    def _bucket_path(self, bucket_id: str) -> Path:
        return self._bucket_dir / (quote(bucket_id, safe="") + ".json")

    def get_bucket(self, bucket_id: str) -> dict | None:
        """The bucket's settings (cached; every write below goes through _write_bucket or _forget_bucket)."""
        if bucket_id not in self._bucket_cache:
            try:
                self._bucket_cache[bucket_id] = json.loads(self._bucket_path(bucket_id).read_text())
            except FileNotFoundError:
                self._bucket_cache[bucket_id] = None
        bucket = self._bucket_cache[bucket_id]
        return dict(bucket) if bucket is not None else None

    def _forget_bucket(self, bucket_id: str) -> None:
        self._bucket_path(bucket_id).unlink(missing_ok=True)
        self._bucket_cache.pop(bucket_id, None)

    def list_buckets(self) -> list[dict]:
        return sorted(
            (json.loads(path.read_text()) for path in self._bucket_dir.glob("*.json")), key=lambda b: b["name"]
        )

    def _write_bucket(self, bucket: dict) -> None:
        tmp = self._tmp_dir / f"bucket-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(bucket))
        os.replace(tmp, self._bucket_path(bucket["id"]))
        self._bucket_cache[bucket["id"]] = dict(bucket)

    def create_bucket(
        self,
        bucket_id: str,
        *,
        name: str | None = None,
        public: bool = False,
        file_size_limit: object = None,
        allowed_mime_types: list[str] | None = None,
    ) -> dict:
        if not bucket_id or not VALID_BUCKET.match(bucket_id) or len(bucket_id) > 100:
            raise StorageError(400, "InvalidBucketName", "Bucket name invalid", "Invalid Input")
        limit = parse_size(file_size_limit)
        if limit is not None and limit > self.global_file_size_limit:
            raise StorageError(
                413, "EntityTooLarge", "The bucket exceeded the maximum allowed size", "Payload too large"
            )
        now = _now_iso()
        bucket = {
            "id": bucket_id,
            "name": name or bucket_id,
            "owner": "",
            "owner_id": None,
            "public": bool(public),
            "type": "STANDARD",
            "file_size_limit": limit,
            "allowed_mime_types": [m for m in allowed_mime_types if m] if allowed_mime_types else None,
            "created_at": now,
            "updated_at": now,
        }
        with self._bucket_lock:
            if self.get_bucket(bucket_id) is not None:
                raise StorageError(409, "BucketAlreadyExists", "The resource already exists", "Duplicate")
            self._write_bucket(bucket)
            (self._object_dir / quote(bucket_id, safe="")).mkdir(exist_ok=True)
        return bucket

    def update_bucket(self, bucket_id: str, changes: dict) -> dict:
        with self._bucket_lock:
            bucket = self.get_bucket(bucket_id)
            if bucket is None:
                raise no_such_bucket()
            if "public" in changes and changes["public"] is not None:
                bucket["public"] = bool(changes["public"])
            if "file_size_limit" in changes:
                bucket["file_size_limit"] = parse_size(changes["file_size_limit"])
            if "allowed_mime_types" in changes:
                bucket["allowed_mime_types"] = changes["allowed_mime_types"] or None
            bucket["updated_at"] = _now_iso()
            self._write_bucket(bucket)
        return bucket

    def empty_bucket(self, bucket_id: str) -> None:
        if self.get_bucket(bucket_id) is None:
            raise no_such_bucket()
        directory = self._object_dir / quote(bucket_id, safe="")
        doomed = self._tmp_dir / f"empty-{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(directory, doomed)
        directory.mkdir(exist_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)

    def delete_bucket(self, bucket_id: str) -> None:
        with self._bucket_lock:
            if self.get_bucket(bucket_id) is None:
                raise no_such_bucket()
            if any(True for _ in self.iter_objects(bucket_id)):
                raise StorageError(409, "ResourceNotEmpty", "The bucket you tried to delete is not empty")
            self._forget_bucket(bucket_id)
            shutil.rmtree(self._object_dir / quote(bucket_id, safe=""), ignore_errors=True)

    def delete_all_buckets(self) -> None:
        with self._bucket_lock:
            for bucket in self.list_buckets():
                self._forget_bucket(bucket["id"])
        shutil.rmtree(self._object_dir, ignore_errors=True)
        self._object_dir.mkdir()

    # --- objects on disk -----------------------------------------------------------------------

    def _paths(self, bucket: str, name: str) -> tuple[Path, Path, Path]:
        """(directory, data file, sidecar): `a/b.jpg` -> `a.d/b.jpg.obj` so `a` and `a/b` can coexist."""
        segments = name.split("/")
        directory = self._object_dir / quote(bucket, safe="")
        for segment in segments[:-1]:
            directory = directory / (quote(segment, safe="") + ".d")
        stem = quote(segments[-1], safe="")
        return directory, directory / (stem + ".obj"), directory / (stem + ".meta.json")

    def read_meta(self, bucket: str, name: str) -> dict | None:
        try:
            return json.loads(self._paths(bucket, name)[2].read_text())
        except FileNotFoundError:
            return None

    def data_path(self, bucket: str, name: str) -> Path:
        return self._paths(bucket, name)[1]

    def iter_objects(self, bucket: str):
        """Every object's sidecar in a bucket, depth first."""
        base = self._object_dir / quote(bucket, safe="")
        for directory, _dirs, files in os.walk(base):
            for filename in files:
                if filename.endswith(".meta.json"):
                    with contextlib.suppress(FileNotFoundError, ValueError):
                        yield json.loads(Path(directory, filename).read_text())

    def put_object(self, bucket: str, name: str, upload: UploadedFile, *, upsert: bool) -> dict:
        """Store bytes then sidecar; a sidecar marks existence, so readers never see half an object."""
        directory, data_path, meta_path = self._paths(bucket, name)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_dir / f"upload-{uuid.uuid4().hex}"
        tmp.write_bytes(upload.data)
        now = _now_iso()
        cache_control = upload.cache_control or "no-cache"  # real server: no-cache when none is given
        if cache_control.isdigit():
            cache_control = f"max-age={cache_control}"
        # real server: "must not exist" is checked before the bytes are stored, and the row is written with
        # an upsert afterwards, so two concurrent uploads of one key without x-upsert both succeed (the last
        # one wins). The check sits outside the object's lock for the same race.
        if not upsert and self.read_meta(bucket, name) is not None:
            tmp.unlink()
            raise already_exists()
        with self._lock_for(bucket, name):
            previous = self.read_meta(bucket, name)
            meta = {
                "id": previous["id"] if previous else str(uuid.uuid4()),
                "bucket_id": bucket,
                "name": name,
                "size": len(upload.data),
                "mimetype": upload.mimetype,
                "cache_control": cache_control,
                "etag": '"' + hashlib.md5(upload.data).hexdigest() + '"',
                "user_metadata": upload.user_metadata,
                "created_at": previous["created_at"] if previous else now,
                "updated_at": now,
                "last_accessed_at": now,
                "version": str(uuid.uuid4()),
            }
            os.replace(tmp, data_path)
            meta_tmp = self._tmp_dir / f"meta-{uuid.uuid4().hex}"
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, meta_path)
        return meta

    def delete_object(self, bucket: str, name: str) -> dict | None:
        _directory, data_path, meta_path = self._paths(bucket, name)
        with self._lock_for(bucket, name):
            meta = self.read_meta(bucket, name)
            if meta is None:
                return None
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
        return meta

    # --- HTTP ----------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers, body: bytes) -> StorageResponse:
        """Serve one request below /storage/v1; `path` is still percent-encoded."""
        try:
            return self._route(method, path, query, headers, body)
        except StorageError as error:
            return error.response()

    def _role(self, headers, *, optional: bool = False) -> str:
        token = re.sub(r"^Bearer\s+", "", headers.get("authorization", ""), flags=re.IGNORECASE)
        if not token:
            if optional:
                return "anon"
            raise StorageError(400, "InvalidJWT", "jwt must be provided")
        claims = self._verified_tokens.get(token)
        if claims is None or claims.get("exp", float("inf")) <= time.time():
            try:
                claims = verify_token(token, self.jwt_secret)
            except InvalidJwtError as exc:
                raise StorageError(400, "InvalidJWT", str(exc)) from exc
            if len(self._verified_tokens) > 1024:
                self._verified_tokens.clear()
            self._verified_tokens[token] = claims
        return str(claims.get("role") or "anon")

    def _route(self, method: str, path: str, query: dict[str, str], headers, body: bytes) -> StorageResponse:
        parts = path.strip("/").split("/")
        head = parts[0] if parts else ""
        if head == "bucket":
            return self._route_bucket(method, [unquote(p) for p in parts[1:]], headers, body)
        if head != "object" or len(parts) < 2:
            return StorageResponse.json(
                {"statusCode": "404", "error": "Not Found", "message": f"Route {method}:{path} not found"}, 404
            )
        rest = parts[1:]
        if method == "POST" and rest[0] == "list" and len(rest) == 2:
            return self._list(unquote(rest[1]), headers, body)
        if rest[0] == "info" and method == "GET":
            public = len(rest) > 1 and rest[1] == "public"
            rest = rest[2:] if len(rest) > 1 and rest[1] in ("public", "authenticated") else rest[1:]
            bucket, name = self._split(rest)
            return self._info(bucket, name, headers, public=public)
        if rest[0] in ("public", "authenticated") and method in ("GET", "HEAD"):
            bucket, name = self._split(rest[1:])
            return self._download(bucket, name, headers, query, public=rest[0] == "public", head=method == "HEAD")
        if method == "DELETE" and len(rest) == 1:
            return self._delete_many(unquote(rest[0]), headers, body)
        bucket, name = self._split(rest)
        if method in ("POST", "PUT"):
            upsert = method == "PUT" or headers.get("x-upsert") == "true"
            return self._upload(bucket, name, headers, body, upsert=upsert)
        if method in ("GET", "HEAD"):
            return self._download(bucket, name, headers, query, public=False, head=method == "HEAD")
        if method == "DELETE":
            return self._delete_many(bucket, headers, json.dumps({"prefixes": [name]}).encode())
        return StorageResponse.json(
            {"statusCode": "404", "error": "Not Found", "message": f"Route {method}:{path} not found"}, 404
        )

    @staticmethod
    def _split(segments: list[str]) -> tuple[str, str]:
        if len(segments) < 2:
            raise invalid_request("Missing object path")
        return unquote(segments[0]), unquote("/".join(segments[1:]))

    @staticmethod
    def _json_body(body: bytes) -> dict:
        if not body:
            return {}
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise StorageError(400, "InvalidRequest", "Body is not valid JSON", "Bad Request") from exc
        return payload if isinstance(payload, dict) else {}

    def _upload(self, bucket_id: str, name: str, headers, body: bytes, *, upsert: bool) -> StorageResponse:
        role = self._role(headers)
        bucket = self.get_bucket(bucket_id)
        if bucket is None:
            raise no_such_bucket()
        if not name or not VALID_KEY.match(name):
            raise StorageError(400, "InvalidKey", f"Invalid key: {name}")
        if role != "service_role":
            raise access_denied()
        upload = parse_upload_body(body, headers)
        # real server: the MIME type is checked first, then the size against the smallest of the bucket's,
        # the global and the standard-upload limit (limits.ts getFileSizeLimit, uploader.ts).
        if not mime_allowed(upload.mimetype, bucket.get("allowed_mime_types")):
            raise invalid_mime_type(upload.mimetype)
        if len(upload.data) > self.upload_size_limit(bucket):
            raise entity_too_large()
        meta = self.put_object(bucket_id, name, upload, upsert=upsert)
        return StorageResponse.json({"Id": meta["id"], "Key": f"{bucket_id}/{name}"})

    def upload_size_limit(self, bucket: dict) -> int:
        """The effective limit of a standard upload into ``bucket``."""
        limits = [self.global_file_size_limit, bucket.get("file_size_limit"), self.standard_upload_size_limit]
        return min(limit for limit in limits if limit)

    def _visible_object(self, bucket_id: str, name: str, headers, *, public: bool) -> dict:
        """The object's sidecar if this caller may read it; Storage answers 'not found' otherwise."""
        bucket = self.get_bucket(bucket_id)
        role = self._role(headers, optional=public)
        if public:
            if bucket is None or not bucket["public"]:
                raise no_such_bucket()
        elif bucket is None:
            raise no_such_bucket()
        meta = self.read_meta(bucket_id, name)
        if meta is None or (role != "service_role" and not bucket["public"]):
            raise no_such_key()
        return meta

    def _info(self, bucket_id: str, name: str, headers, *, public: bool) -> StorageResponse:
        meta = self._visible_object(bucket_id, name, headers, public=public)
        return StorageResponse.json(
            {
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
        )

    def _download(self, bucket_id, name, headers, query, *, public: bool, head: bool) -> StorageResponse:
        meta = self._visible_object(bucket_id, name, headers, public=public)
        mimetype = meta["mimetype"]
        if "text/html" in mimetype:
            mimetype = "text/plain"
        updated = datetime.fromisoformat(meta["updated_at"].replace("Z", "+00:00"))
        response_headers = {
            "Accept-Ranges": "bytes",
            "ETag": meta["etag"],
            "Last-Modified": format_datetime(updated, usegmt=True),
            "Cache-Control": meta["cache_control"] or "no-cache",
        }
        if "download" in query:
            filename = quote(query["download"], safe="")
            response_headers["Content-Disposition"] = (
                f"attachment; filename={filename}; filename*=UTF-8''{filename};" if filename else "attachment;"
            )
        return StorageResponse(
            200,
            content_type=mimetype,
            headers=response_headers,
            content_length=meta["size"],
            file_path=None if head else self.data_path(bucket_id, name),
        )

    def _delete_many(self, bucket_id: str, headers, body: bytes) -> StorageResponse:
        role = self._role(headers)
        if self.get_bucket(bucket_id) is None:
            raise no_such_bucket()
        prefixes = self._json_body(body).get("prefixes")
        if not isinstance(prefixes, list) or not prefixes:
            raise StorageError(400, "InvalidRequest", "body/prefixes must NOT have fewer than 1 items", "Bad Request")
        if len(prefixes) > 1000:
            raise StorageError(400, "InvalidRequest", "body/prefixes must NOT have more than 1000 items", "Bad Request")
        if role != "service_role":
            return StorageResponse.json([])
        deleted = []
        for prefix in prefixes:
            meta = self.delete_object(bucket_id, str(prefix))
            if meta is not None:
                deleted.append(self._list_entry(meta, meta["name"]))
        return StorageResponse.json(deleted)

    @staticmethod
    def _list_entry(meta: dict, display_name: str) -> dict:
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

    def _list(self, bucket_id: str, headers, body: bytes) -> StorageResponse:
        role = self._role(headers)
        options = self._json_body(body)
        if self.get_bucket(bucket_id) is None:
            raise no_such_bucket()
        if role != "service_role":
            return StorageResponse.json([])
        prefix = str(options.get("prefix") or "")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        search = str(options.get("search") or "").lower()
        limit = int(options.get("limit") or 100)
        offset = int(options.get("offset") or 0)
        sort = options.get("sortBy") or {}
        column = sort.get("column") or "name"
        directory = self._object_dir / quote(bucket_id, safe="")
        for segment in prefix.split("/")[:-1]:
            directory = directory / (quote(segment, safe="") + ".d")
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(directory):
                if entry.name.endswith(".meta.json"):
                    display = unquote(entry.name[: -len(".meta.json")])
                    if display.lower().startswith(search):
                        with contextlib.suppress(FileNotFoundError, ValueError):
                            meta = json.loads(Path(entry.path).read_text())
                            entries.append(self._list_entry(meta, display))
                elif entry.name.endswith(".d") and entry.is_dir():
                    display = unquote(entry.name[:-2])
                    if display.lower().startswith(search) and self._has_objects(Path(entry.path)):
                        entries.append(
                            {
                                "name": display,
                                "id": None,
                                "updated_at": None,
                                "created_at": None,
                                "last_accessed_at": None,
                                "metadata": None,
                            }
                        )
        entries.sort(
            key=lambda e: (e.get(column) or "") if column != "name" else e["name"],
            reverse=str(sort.get("order", "asc")).lower() == "desc",
        )
        return StorageResponse.json(entries[offset : offset + limit])

    @staticmethod
    def _has_objects(directory: Path) -> bool:
        return any(f.endswith(".meta.json") for _d, _s, files in os.walk(directory) for f in files)

    def _route_bucket(self, method: str, segments: list[str], headers, body: bytes) -> StorageResponse:
        role = self._role(headers)
        superuser = role == "service_role"
        if not segments or segments == [""]:
            if method == "GET":
                return StorageResponse.json(self.list_buckets() if superuser else [])
            if method == "POST":
                options = self._json_body(body)
                if not options.get("name") and not options.get("id"):
                    raise StorageError(400, "InvalidRequest", "body must have required property 'name'", "Bad Request")
                if not superuser:
                    raise access_denied()
                bucket = self.create_bucket(
                    str(options.get("id") or options["name"]),
                    name=options.get("name"),
                    public=bool(options.get("public")),
                    file_size_limit=options.get("file_size_limit"),
                    allowed_mime_types=options.get("allowed_mime_types"),
                )
                return StorageResponse.json({"name": bucket["name"]})
        bucket_id = segments[0]
        if len(segments) == 2 and segments[1] == "empty" and method == "POST":
            if not superuser or self.get_bucket(bucket_id) is None:
                raise no_such_bucket()
            self.empty_bucket(bucket_id)
            return StorageResponse.json({"message": "Successfully emptied"})
        if len(segments) == 1:
            if not superuser and self.get_bucket(bucket_id) is not None and method != "GET":
                raise access_denied()
            if method == "GET":
                bucket = self.get_bucket(bucket_id) if superuser else None
                if bucket is None:
                    raise no_such_bucket()
                return StorageResponse.json(bucket)
            if method == "PUT":
                self.update_bucket(bucket_id, self._json_body(body))
                return StorageResponse.json({"message": "Successfully updated"})
            if method == "DELETE":
                self.delete_bucket(bucket_id)
                return StorageResponse.json({"message": "Successfully deleted"})
        return StorageResponse.json(
            {
                "statusCode": "404",
                "error": "Not Found",
                "message": f"Route {method}:/bucket/{'/'.join(segments)} not found",
            },
            404,
        )
