"""Storage's routes below `/storage/v1`: which handler a URL reaches, who may call it, and what it answers.

JWT checks as the real server makes them: service_role passes; anon/authenticated meet the row-level-
security denial that Storage's default policies produce (a refused read is "not found", a refused list
or delete an empty list).
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import unquote

from ..keys import InvalidJwtError, verify_token
from . import wire
from .store import VALID_KEY, StorageStore
from .uploads import mime_allowed, parse_upload_body
from .wire import StorageError, StorageResponse


class StorageDouble:
    """The Storage API over a `StorageStore`, served through `handle()` by the gateway threads."""

    def __init__(self, store: StorageStore, jwt_secret: str):
        self.store = store
        self.jwt_secret = jwt_secret
        self._verified_tokens: dict[str, dict] = {}

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
            raise wire.invalid_jwt("jwt must be provided")
        claims = self._verified_tokens.get(token)
        if claims is None or claims.get("exp", float("inf")) <= time.time():
            try:
                claims = verify_token(token, self.jwt_secret)
            except InvalidJwtError as exc:
                raise wire.invalid_jwt(str(exc)) from exc
            if len(self._verified_tokens) > 1024:
                self._verified_tokens.clear()
            self._verified_tokens[token] = claims
        return str(claims.get("role") or "anon")

    # --- routing -------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], headers, body: bytes) -> StorageResponse:
        parts = path.strip("/").split("/")
        head = parts[0] if parts else ""
        if head == "bucket":
            return self._route_bucket(method, [unquote(p) for p in parts[1:]], headers, body)
        if head != "object" or len(parts) < 2:
            return wire.route_not_found(method, path)
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
        return wire.route_not_found(method, path)

    @staticmethod
    def _split(segments: list[str]) -> tuple[str, str]:
        if len(segments) < 2:
            raise wire.invalid_request("Missing object path")
        return unquote(segments[0]), unquote("/".join(segments[1:]))

    def _route_bucket(self, method: str, segments: list[str], headers, body: bytes) -> StorageResponse:
        store = self.store
        role = self._role(headers)
        superuser = role == "service_role"
        if not segments or segments == [""]:
            if method == "GET":
                return StorageResponse.json(store.list_buckets() if superuser else [])
            if method == "POST":
                options = wire.json_body(body)
                if not options.get("name") and not options.get("id"):
                    raise wire.bad_request("body must have required property 'name'")
                if not superuser:
                    raise wire.access_denied()
                bucket = store.create_bucket(
                    str(options.get("id") or options["name"]),
                    name=options.get("name"),
                    public=bool(options.get("public")),
                    file_size_limit=options.get("file_size_limit"),
                    allowed_mime_types=options.get("allowed_mime_types"),
                )
                return StorageResponse.json({"name": bucket["name"]})
        bucket_id = segments[0]
        if len(segments) == 2 and segments[1] == "empty" and method == "POST":
            if not superuser or store.get_bucket(bucket_id) is None:
                raise wire.no_such_bucket()
            store.empty_bucket(bucket_id)
            return StorageResponse.json({"message": "Successfully emptied"})
        if len(segments) == 1:
            if not superuser and store.get_bucket(bucket_id) is not None and method != "GET":
                raise wire.access_denied()
            if method == "GET":
                bucket = store.get_bucket(bucket_id) if superuser else None
                if bucket is None:
                    raise wire.no_such_bucket()
                return StorageResponse.json(bucket)
            if method == "PUT":
                store.update_bucket(bucket_id, wire.json_body(body))
                return StorageResponse.json({"message": "Successfully updated"})
            if method == "DELETE":
                store.delete_bucket(bucket_id)
                return StorageResponse.json({"message": "Successfully deleted"})
        return wire.route_not_found(method, f"/bucket/{'/'.join(segments)}")

    # --- objects -------------------------------------------------------------------------------

    def _upload(self, bucket_id: str, name: str, headers, body: bytes, *, upsert: bool) -> StorageResponse:
        role = self._role(headers)
        bucket = self.store.get_bucket(bucket_id)
        if bucket is None:
            raise wire.no_such_bucket()
        if not name or not VALID_KEY.match(name):
            raise wire.invalid_key(name)
        if role != "service_role":
            raise wire.access_denied()
        upload = parse_upload_body(body, headers)
        # real server: the MIME type is checked first, then the size against the smallest of the bucket's,
        # the global and the standard-upload limit (limits.ts getFileSizeLimit, uploader.ts).
        if not mime_allowed(upload.mimetype, bucket.get("allowed_mime_types")):
            raise wire.invalid_mime_type(upload.mimetype)
        if len(upload.data) > self.store.upload_size_limit(bucket):
            raise wire.entity_too_large()
        meta = self.store.put_object(bucket_id, name, upload, upsert=upsert)
        return StorageResponse.json({"Id": meta["id"], "Key": f"{bucket_id}/{name}"})

    def _visible_object(self, bucket_id: str, name: str, headers, *, public: bool) -> dict:
        """The object's sidecar if this caller may read it; Storage answers 'not found' otherwise."""
        bucket = self.store.get_bucket(bucket_id)
        role = self._role(headers, optional=public)
        if public:
            if bucket is None or not bucket["public"]:
                raise wire.no_such_bucket()
        elif bucket is None:
            raise wire.no_such_bucket()
        meta = self.store.read_meta(bucket_id, name)
        if meta is None or (role != "service_role" and not bucket["public"]):
            raise wire.no_such_key()
        return meta

    def _info(self, bucket_id: str, name: str, headers, *, public: bool) -> StorageResponse:
        meta = self._visible_object(bucket_id, name, headers, public=public)
        return StorageResponse.json(wire.object_info(bucket_id, meta))

    def _download(self, bucket_id, name, headers, query, *, public: bool, head: bool) -> StorageResponse:
        meta = self._visible_object(bucket_id, name, headers, public=public)
        data_path = None if head else self.store.data_path(bucket_id, name)
        return wire.download(meta, data_path, query.get("download"))

    def _delete_many(self, bucket_id: str, headers, body: bytes) -> StorageResponse:
        role = self._role(headers)
        if self.store.get_bucket(bucket_id) is None:
            raise wire.no_such_bucket()
        prefixes = wire.json_body(body).get("prefixes")
        if not isinstance(prefixes, list) or not prefixes:
            raise wire.bad_request("body/prefixes must NOT have fewer than 1 items")
        if len(prefixes) > 1000:
            raise wire.bad_request("body/prefixes must NOT have more than 1000 items")
        if role != "service_role":
            return StorageResponse.json([])
        deleted = []
        for prefix in prefixes:
            meta = self.store.delete_object(bucket_id, str(prefix))
            if meta is not None:
                deleted.append(wire.list_entry(meta, meta["name"]))
        return StorageResponse.json(deleted)

    def _list(self, bucket_id: str, headers, body: bytes) -> StorageResponse:
        role = self._role(headers)
        options = wire.json_body(body)
        if self.store.get_bucket(bucket_id) is None:
            raise wire.no_such_bucket()
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
        entries = [
            wire.folder_entry(display) if meta is None else wire.list_entry(meta, display)
            for display, meta in self.store.folder_entries(bucket_id, prefix, search)
        ]
        entries.sort(
            key=lambda e: (e.get(column) or "") if column != "name" else e["name"],
            reverse=str(sort.get("order", "asc")).lower() == "desc",
        )
        return StorageResponse.json(entries[offset : offset + limit])
