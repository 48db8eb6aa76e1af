"""Supabase client for the importer: Storage uploads and idempotent PostgREST writes.

A thin layer over the official ``supabase`` client (one HTTP/1.1 ``httpx.Client`` shared by every
thread of a worker) that turns Supabase's error shapes into :class:`TransientError` (retried with
backoff) or :class:`PermanentError` (dead-lettered), with redacted messages. Storage answers most
errors as HTTP 400 with ``statusCode`` as a *string*; a re-upload answers ``"409"`` and counts as
success once the stored object is known to be ours.

    client = SupabaseClient(url, service_key, bucket="od-images")
    client.upload("ds/roboflow/abc.jpg", data, "image/jpeg")      # "uploaded" or "exists"
    client.upsert("od_images", rows, on_conflict="source_ref")
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import httpx
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase import ClientOptions, create_client

from transforms.core.ratelimit import in_flight_gate
from transforms.core.records import ExistingImage
from transforms.core.redact import redact, register_secret
from transforms.core.retry import PermanentError, RetryPolicy, TransientError, call_with_retries
from transforms.core.tables import OD, PlatformTables
from transforms.core.tally import count

log = logging.getLogger(__name__)

# Storage statuses that heal: 429 SlowDown (database connections exhausted), 544 DatabaseTimeout,
# 423 ResourceLocked (another request holds the object's lock: supabase/storage src/internal/errors/codes.ts),
# 5xx and the edge's 520-524. Storage puts the status in the body's ``statusCode`` (often inside an HTTP 400).
STORAGE_RETRYABLE = {"408", "423", "429", "500", "502", "503", "504", "520", "522", "524", "544"}
PG_RETRYABLE = {"57014", "40001", "40P01", "53300", "53400", "08000", "08003", "08006", "PGRST000", "PGRST001",
                "PGRST002", "PGRST003"}


def _is_retryable_code(code: Any) -> bool:
    text = str(code or "")
    # HTTP statuses have three digits; SQLSTATEs such as 23505 have five and are not retryable by number.
    return text in PG_RETRYABLE or text in STORAGE_RETRYABLE or (len(text) == 3 and text.isdigit() and int(text) >= 500)


def missing_function(exc: Exception) -> bool:
    """Whether a failed ``rpc`` says the database has no such function (a migration not applied)."""
    text = str(exc)
    return "PGRST202" in text or "42883" in text or getattr(exc, "status", None) == 404


def postgrest_error(exc: APIError, what: str, status: int | None = None) -> Exception:
    """APIError -> TransientError/PermanentError with a redacted, one-line message.

    PostgREST's own errors carry a ``code``; an error body without one came from the gateway in front
    of it (Kong answers ``{"message": "An invalid response was received from the upstream server"}``
    with 502 while PostgREST restarts, as our stand-in's gateway does), and postgrest-py keeps no
    status: ``status`` is the HTTP status the call got, so a gateway 5xx is retried, not dead-lettered.
    """
    code = str(exc.code or "") or (str(status) if status is not None else "")
    message = redact(f"{what}: {code} {exc.message or ''} {exc.details or ''}".strip())[:500]
    if _is_retryable_code(code):
        return TransientError(f"postgrest_{code or 'error'}", message)
    return PermanentError(f"postgrest_{code or 'error'}", message)


def storage_error(exc: StorageApiError, what: str) -> Exception:
    """Storage's status is the body's ``statusCode`` (a str) or the HTTP status (an int, non-JSON bodies)."""
    status = str(exc.status).strip()
    message = redact(f"{what}: storage {status} {exc.code} {exc.message}")[:500]
    if status in STORAGE_RETRYABLE:
        return TransientError(f"storage_{status}", message, status=int(status) if status.isdigit() else None)
    kind = {"413": "too_large", "415": "mime_not_allowed", "404": "bucket_not_found"}.get(status, f"storage_{status}")
    return PermanentError(kind, message, status=int(status) if status.isdigit() else None)


def transport_error(exc: httpx.HTTPError, what: str) -> TransientError:
    return TransientError("connection", redact(f"{what}: {type(exc).__name__}: {exc}")[:300])


# Longest ``in.(...)`` list one request carries, in URL-encoded bytes. Id lists travel in the query
# string, and the edge refuses long request lines with 414: self-hosted Supabase's Kong (nginx) at 8 KB
# (``large_client_header_buffers 4 8k``), hosted Supabase around 16 KB (Cloudflare's URL limit; users
# report 414 near 400 UUIDs). 6,000 bytes leaves room for the path and the other filters under 8 KB.
MAX_LIST_BYTES = 6000
MAX_REMOVE_PREFIXES = 1000  # Storage's DELETE /object/{bucket} body limit (prefixes: maxItems 1000)


def _encoded_len(value: Any) -> int:
    """Bytes one ``in`` list item takes in the URL: quoted by postgrest-py, then percent-encoded, plus its comma."""
    return len(quote(f'"{value}"', safe="")) + 3


def list_chunks(values: Iterable[Any], budget: int = MAX_LIST_BYTES) -> list[list[Any]]:
    """Split ``values`` into lists whose encoded ``in.(...)`` stays within ``budget`` bytes (at least one item each)."""
    chunks: list[list[Any]] = []
    current: list[Any] = []
    used = 0
    for value in values:
        size = _encoded_len(value)
        if current and used + size > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(value)
        used += size
    if current:
        chunks.append(current)
    return chunks


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))


def bounded_filters(filters: dict[str, Any]) -> list[dict[str, Any]]:
    """The filters as one or more filter sets whose id list fits one request line (one list filter at most).

    An empty list yields no filter set: ``in.()`` matches nothing, so there is nothing to ask.
    """
    lists = [column for column, value in filters.items() if _is_list(value)]
    if not lists:
        return [filters]
    if len(lists) > 1:
        raise ValueError(f"at most one list filter per call, got {lists}")
    column = lists[0]
    return [filters | {column: chunk} for chunk in list_chunks(list(filters[column]))]


def _filtered(query: Any, filters: dict[str, Any]) -> Any:
    """Each ``col=value`` as ``eq``, a list/tuple/set value as ``in``."""
    for column, value in filters.items():
        query = query.in_(column, list(value)) if _is_list(value) else query.eq(column, value)
    return query


class SupabaseClient:
    def __init__(
        self,
        url: str,
        key: str,
        *,
        bucket: str = "od-images",
        bucket_public: bool = False,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        max_connections: int = 32,
        max_in_flight: int | None = None,
    ):
        register_secret(key)
        self.url = url.rstrip("/")
        self.bucket = bucket
        self.bucket_public = bucket_public  # set from the bucket itself by bucket_info()
        self.retry = retry or RetryPolicy()
        # Object uploads and table calls get separate gates: behind one, the few row writes that finish
        # a batch waited among hundreds of queued uploads (unthrottled: first row after 24.3 s).
        self._storage_gate = in_flight_gate(max_in_flight)
        self._rest_gate = in_flight_gate(max_in_flight)
        self._last_status = threading.local()  # the HTTP status of this thread's last answer
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            event_hooks={"response": [self._note_status]},
        )
        # postgrest-py retries GET/HEAD itself (3 times, after 1, 2 and 4 s) inside each of our attempts,
        # holding a request slot (measured: 8 GETs in 14.1 s where our policy allowed 2): ours is the one.
        self.client = create_client(self.url, key, ClientOptions(httpx_client=self._http,
                                                                 postgrest_client_retry=False))
        # The sub-clients are created lazily without a lock: create them before threads share us.
        self.storage = self.client.storage
        self.postgrest = self.client.postgrest

    def close(self) -> None:
        self._http.close()

    def _note_status(self, response: httpx.Response) -> None:
        self._last_status.value = response.status_code

    def _with_retries(self, fn: Callable[[], Any], what: str, *, storage: bool = False,
                      retry: RetryPolicy | None = None) -> Any:
        gate = self._storage_gate if storage else self._rest_gate

        def attempt() -> Any:
            self._last_status.value = None
            try:
                with gate:
                    return fn()
            except APIError as exc:
                raise postgrest_error(exc, what, self._last_status.value) from None
            except StorageApiError as exc:
                raise storage_error(exc, what) from None
            except httpx.HTTPError as exc:
                raise transport_error(exc, what) from None

        def on_retry(exc: TransientError, attempt_no: int, delay: float) -> None:
            count(f"retry.supabase.{exc.kind}")
            log.debug("retrying %s after %s (attempt %d)", what, exc.kind, attempt_no)

        return call_with_retries(attempt, retry or self.retry, on_retry=on_retry)

    # ---- Storage --------------------------------------------------------------------------

    def object_url(self, path: str) -> str:
        """The URL of a stored object that works for its bucket, never expires and holds no credential.

        A public bucket: the public-object URL, loadable by anyone (the platform's own buckets are public).
        A private bucket answers that URL with "Bucket not found", so its objects get the authenticated
        URL, served to any request whose JWT may read the object (the platform's backend with its service
        key, a signed-in user under the bucket's policies). A signed URL would expire and put a token
        into a table row, so it is never stored; sign on read instead (``create_signed_url(path)``).
        """
        scope = "public" if self.bucket_public else "authenticated"
        return f"{self.url}/storage/v1/object/{scope}/{self.bucket}/{quote(path)}"

    def upload(self, path: str, data: bytes, content_type: str) -> str:
        """Upload once; "exists" when an earlier attempt or run already stored these bytes.

        A ``409`` alone does not prove the stored object is ours (an interrupted writer, an old
        importer), so its size is compared and a mismatch is overwritten.
        """
        bucket = self.storage.from_(self.bucket)

        def put(upsert: bool) -> None:
            bucket.upload(path, data, {"content-type": content_type, "upsert": "true" if upsert else "false",
                                       "cache-control": "31536000"})

        def attempt() -> str:
            try:
                put(upsert=False)
                return "uploaded"
            except StorageApiError as exc:
                if str(exc.status) != "409":
                    raise
            info = bucket.info(path)
            size = info.get("size") if isinstance(info, dict) else None
            if size is None and isinstance(info, dict):
                size = (info.get("metadata") or {}).get("size")
            if size is not None and int(size) == len(data):
                return "exists"
            put(upsert=True)
            return "uploaded"

        return self._with_retries(attempt, f"upload {path}", storage=True)

    def bucket_info(self) -> dict[str, Any]:
        bucket = self._with_retries(lambda: self.storage.get_bucket(self.bucket), f"bucket {self.bucket}")
        self.bucket_public = bool(bucket.public)
        return {"id": bucket.id, "public": bool(bucket.public), "file_size_limit": bucket.file_size_limit,
                "allowed_mime_types": bucket.allowed_mime_types}

    def create_bucket(self) -> None:
        """Create the bucket private; an existing bucket of that name is fine."""

        def run() -> None:
            try:
                self.storage.create_bucket(self.bucket, options={"public": False})
            except StorageApiError as exc:
                if str(exc.status) != "409" and "already exists" not in str(exc.message).lower():
                    raise

        self._with_retries(run, f"create bucket {self.bucket}")

    # ---- PostgREST ------------------------------------------------------------------------

    def select(self, table: str, columns: str, **filters: Any) -> list[dict[str, Any]]:
        """``select columns from table where`` each ``col=value`` (a list/tuple means ``in``).

        A long list is asked for in several requests (:func:`bounded_filters`), each under the edge's
        request-line limit, and the rows are concatenated.
        """

        def run(chunk: dict[str, Any]) -> list[dict[str, Any]]:
            query = self.postgrest.table(table).select(columns)
            query = _filtered(query, chunk)
            return query.execute().data

        rows: list[dict[str, Any]] = []
        for chunk in bounded_filters(filters):
            rows.extend(self._with_retries(lambda chunk=chunk: run(chunk), f"select {table}"))
        return rows

    def upsert(self, table: str, rows: list[dict[str, Any]], *, on_conflict: str,
               ignore_duplicates: bool = False) -> None:
        if not rows:
            return
        self._with_retries(
            lambda: self.postgrest.table(table).upsert(
                rows, on_conflict=on_conflict, ignore_duplicates=ignore_duplicates, returning="minimal",
                default_to_null=False).execute(),
            f"upsert {table}",
        )

    def existing_images(self, dataset_id: str, refs: Iterable[str],
                        tables: PlatformTables = OD) -> dict[str, ExistingImage]:
        """What an earlier run left for these source refs: object, file facts and import hash."""
        refs = list(refs)
        if not refs:
            return {}
        images = self.select(
            tables.images, "id,source_ref,storage_path,file_hash,file_size_bytes,mime_type,width,height",
            source_ref=refs)
        links = self.dataset_links(dataset_id, [r["id"] for r in images], tables)
        return {
            r["source_ref"]: ExistingImage(
                image_id=r["id"], storage_path=r["storage_path"], file_hash=r["file_hash"],
                file_size_bytes=r["file_size_bytes"], mime_type=r["mime_type"], width=r["width"],
                height=r["height"], import_hash=links.get(r["id"], {}).get("import_hash"),
                listing_fingerprint=links.get(r["id"], {}).get("listing_fingerprint"))
            for r in images
        }

    def dataset_links(self, dataset_id: str, image_ids: list[str],
                      tables: PlatformTables = OD) -> dict[str, dict[str, Any]]:
        """This dataset's links of these image ids: import hash, the run that wrote them, listing
        fingerprint (migration 0007). Bounded requests; absent ids are not imported."""
        if not image_ids:
            return {}
        rows = self.select(tables.dataset_images, "image_id,import_hash,import_run_id,listing_fingerprint",
                           dataset_id=dataset_id, image_id=list(image_ids))
        return {r["image_id"]: r for r in rows}

    def delete_stale_annotations(self, dataset_id: str, image_id: str, keep_keys: list[str],
                                 tables: PlatformTables = OD) -> None:
        """Remove this image's annotations (or class labels) that the new import no longer has.

        One ``not.in`` delete when the kept keys fit one request line; for an image with more boxes
        (a ``not in`` cannot be split over requests) the stored keys are read and the stale rows
        deleted by id, in bounded requests.
        """
        if len(list_chunks(keep_keys)) > 1:
            stored = self.select(tables.labels, f"id,{tables.label_key}", dataset_id=dataset_id, image_id=image_id)
            keep = set(keep_keys)
            stale = [row["id"] for row in stored if row[tables.label_key] not in keep]
            if stale:
                self.delete_rows(tables.labels, id=stale)
            return

        def run() -> None:
            query = self.postgrest.table(tables.labels).delete(returning="minimal").eq(
                "dataset_id", dataset_id).eq("image_id", image_id)
            if keep_keys:
                query = query.not_.in_(tables.label_key, keep_keys)
            query.execute()

        self._with_retries(run, f"delete stale {tables.labels}")

    def rpc(self, function: str, params: dict[str, Any], *, retry: RetryPolicy | None = None) -> Any:
        """``retry``: a policy for this call instead of the client's (a heartbeat is better skipped than late)."""
        return self._with_retries(lambda: self.postgrest.rpc(function, params).execute().data, f"rpc {function}",
                                  retry=retry)

    # ---- incremental sync (--plan, --prune) ------------------------------------------------

    def select_after(self, table: str, columns: str, *, key: str, after: str | None, limit: int,
                     **filters: Any) -> list[dict[str, Any]]:
        """One keyset page: rows with ``key > after`` in ``key`` order (stable, unlike offsets).
        Filter names may address an embedded resource (``od_images.folder``)."""

        def run() -> list[dict[str, Any]]:
            query = self.postgrest.table(table).select(columns).order(key).limit(limit)
            if after is not None:
                query = query.gt(key, after)
            query = _filtered(query, filters)
            return query.execute().data

        return self._with_retries(run, f"select {table}")

    def delete_rows(self, table: str, **filters: Any) -> None:
        """``delete from table where`` each ``col=value`` (a list means ``in``); at least one filter."""
        if not filters:
            raise ValueError("delete_rows needs a filter")

        def run(chunk: dict[str, Any]) -> None:
            query = self.postgrest.table(table).delete(returning="minimal")
            query = _filtered(query, chunk)
            query.execute()

        for chunk in bounded_filters(filters):  # a long id list: several deletes, each idempotent
            self._with_retries(lambda chunk=chunk: run(chunk), f"delete {table}")

    def update_rows(self, table: str, values: dict[str, Any], **filters: Any) -> None:
        if not filters:
            raise ValueError("update_rows needs a filter")

        def run(chunk: dict[str, Any]) -> None:
            query = self.postgrest.table(table).update(values, returning="minimal")
            query = _filtered(query, chunk)
            query.execute()

        for chunk in bounded_filters(filters):
            self._with_retries(lambda chunk=chunk: run(chunk), f"update {table}")

    def remove_objects(self, paths: list[str]) -> None:
        """Delete objects of the bucket; paths already gone are fine (a re-run after a crash).

        The paths travel in the body, which Storage caps at 1,000 prefixes per request.
        """
        paths = list(paths)
        for start in range(0, len(paths), MAX_REMOVE_PREFIXES):
            chunk = paths[start:start + MAX_REMOVE_PREFIXES]
            self._with_retries(lambda chunk=chunk: self.storage.from_(self.bucket).remove(chunk),
                               f"remove {len(chunk)} objects", storage=True)
