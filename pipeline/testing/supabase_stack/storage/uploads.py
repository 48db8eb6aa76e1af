"""What an upload carries (multipart form or raw body, as storage3 sends them) and the MIME rule it meets."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from .wire import invalid_request

MAX_MULTIPART_FIELDS = 10


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
