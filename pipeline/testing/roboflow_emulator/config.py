"""Configuration of the emulated project (EmulatorConfig) and of its misbehaviour (FaultConfig).

Both are plain dataclasses so that tests build them in Python, the CLI builds them from flags and a
separate process can switch faults with JSON (``POST /__emulator/faults``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

API_ROUTES = (
    "root",
    "workspace",
    "project",
    "version",
    "export",
    "search",
    "search_v1",
    "image_details",
    "unknown_route",
)
CDN_ROUTES = ("cdn_original", "cdn_thumb", "cdn_annotation", "cdn_unknown")
ZIP_ROUTES = ("zip_link", "zip")
ALL_ROUTES = API_ROUTES + CDN_ROUTES + ZIP_ROUTES
ROUTE_GROUPS = {"api": API_ROUTES, "cdn": CDN_ROUTES, "zip": ZIP_ROUTES, "all": ALL_ROUTES}

PROJECT_TYPES = (
    "object-detection", "instance-segmentation", "semantic-segmentation", "keypoint-detection", "classification",
)  # fmt: skip
KEYPOINT_SHAPES = ("objects", "flat")
OTHER_FORMATS = ("webp", "bmp", "tiff", "gif")  # what Roboflow's SDK uploads unchanged besides JPEG and PNG
LABELS_SHAPES = ("list", "string")
EXPORT_FORMATS = ("coco", "coco-segmentation", "yolov5pytorch", "yolov7pytorch", "yolov8", "yolov9", "yolov11")


def expand_routes(names: typing.Iterable[str]) -> frozenset[str]:
    """Turn route names and group names ("api", "cdn", "zip", "all") into a set of route names."""
    routes: set[str] = set()
    for name in names:
        if name in ROUTE_GROUPS:
            routes.update(ROUTE_GROUPS[name])
        elif name in ALL_ROUTES:
            routes.add(name)
        else:
            raise ValueError(f"unknown route or route group {name!r}; known: {sorted(ROUTE_GROUPS) + list(ALL_ROUTES)}")
    return frozenset(routes)


def _doc(text: str) -> dict:
    return {"help": text}


@dataclass
class EmulatorConfig:
    """What the emulated Roboflow project looks like; everything is derived from ``seed``."""

    workspace: str = field(default="demo-ws", metadata=_doc("workspace slug (URL part)"))
    project: str = field(default="demo-project", metadata=_doc("project slug (URL part)"))
    image_count: int = field(default=200, metadata=_doc("images in the project"))
    seed: int = field(default=7, metadata=_doc("seed for all generated data"))
    api_key: str = field(default="rf_test_key_123", metadata=_doc("the valid private API key"))
    extra_api_keys: tuple[str, ...] = field(
        default=(), metadata=_doc("more valid keys (each gets its own rate-limit bucket)")
    )
    project_type: str = field(default="object-detection", metadata=_doc(f"one of {', '.join(PROJECT_TYPES)}"))
    multilabel: bool = field(default=False, metadata=_doc("classification: several labels per image"))
    keypoint_shape: str = field(
        default="objects",
        metadata=_doc("keypoints in details (inferred, undocumented): 'objects' [{x, y, class, class_id, visible}] "
                      "or 'flat' COCO [x, y, v, ...]"),
    )
    labels_shape: str = field(
        default="list", metadata=_doc("top-level labels of a single-label image: 'list' or 'string' (inferred variant)")
    )
    versions: int = field(default=2, metadata=_doc("dataset versions; version k snapshots the first k/N images"))
    class_count: int = field(default=0, metadata=_doc("number of classes; 0 = seeded choice in 5..8"))
    hostile_class_names: bool = field(
        default=False, metadata=_doc("include class names with quotes, unicode and SQL-looking text")
    )
    odd_name_fraction: float = field(
        default=0.1, metadata=_doc("fraction of images with odd names (../, a/b, 300 chars, quotes, unicode)")
    )
    png_fraction: float = field(default=0.1, metadata=_doc("fraction of originals that are PNG (served as .jpg)"))
    other_format_fraction: float = field(
        default=0.0,
        metadata=_doc("fraction of originals in one of other_formats (served as .jpg too; the real share is unknown)"),
    )
    other_formats: tuple[str, ...] = field(
        default=OTHER_FORMATS, metadata=_doc(f"formats of those originals, from {', '.join(OTHER_FORMATS)}")
    )
    empty_fraction: float = field(default=0.15, metadata=_doc("fraction of images with no boxes"))
    max_boxes: int = field(default=6, metadata=_doc("most boxes on one image"))
    image_kb_min: int = field(default=5, metadata=_doc("smallest original in KiB (a floor: tiny bases stay tiny)"))
    image_kb_max: int = field(default=30, metadata=_doc("largest original in KiB"))
    embedding_dim: int = field(default=512, metadata=_doc("length of the CLIP-like embedding in image details"))
    orphan_images: int = field(
        default=3, metadata=_doc("workspace images in no project (seen by search/v1 without project:)")
    )
    export_pending_polls: int = field(
        default=2, metadata=_doc("export requests answered 202 before the export is ready")
    )
    export_size_ratio: float = field(
        default=1.0,
        metadata=_doc("bytes of an exported (recompressed) image per byte of its original; 1 = the same volume"),
    )
    details_include_owner: bool = field(
        default=False, metadata=_doc("add `owner` to image details (the documented shape has none)")
    )
    search_v1_max_page_size: int = field(default=100, metadata=_doc("search/v1 pageSize clamp"))
    search_created_unit: str = field(default="ms", metadata=_doc("unit of `created` in project search: ms or s"))
    # Inferred: the workspace search documents tags, width, height, filename, aspectRatio and split; whether it
    # answers project search's per-image summary (annotations, labels, user_metadata) is not known, so not by default.
    search_v1_summary: bool = field(default=False, metadata=_doc(
        "search/v1 also answers annotations, labels and user_metadata fields (undocumented there)"))
    host: str = field(default="127.0.0.1", metadata=_doc("bind address"))
    port: int = field(default=0, metadata=_doc("API port, 0 = chosen by the OS"))
    cdn_port: int = field(default=0, metadata=_doc("CDN/download port, 0 = chosen by the OS"))

    def __post_init__(self) -> None:
        self.extra_api_keys = tuple(self.extra_api_keys)
        if self.project_type not in PROJECT_TYPES:
            raise ValueError(f"project_type must be one of {PROJECT_TYPES}, not {self.project_type!r}")
        self.other_formats = tuple(self.other_formats)
        if not set(self.other_formats) <= set(OTHER_FORMATS) or not self.other_formats:
            raise ValueError(f"other_formats must be a non-empty subset of {OTHER_FORMATS}")
        if not 0 <= self.png_fraction + self.other_format_fraction <= 1:
            raise ValueError("png_fraction + other_format_fraction must be within [0, 1]")
        if self.keypoint_shape not in KEYPOINT_SHAPES:
            raise ValueError(f"keypoint_shape must be one of {KEYPOINT_SHAPES}")
        if self.labels_shape not in LABELS_SHAPES:
            raise ValueError(f"labels_shape must be one of {LABELS_SHAPES}")
        if self.image_count < 0 or self.versions < 1:
            raise ValueError("image_count must be >= 0 and versions >= 1")
        if not 0 < self.image_kb_min <= self.image_kb_max:
            raise ValueError("need 0 < image_kb_min <= image_kb_max")
        if not 0 <= self.export_size_ratio <= 1:
            raise ValueError("export_size_ratio must be between 0 and 1")
        if not 1 <= self.max_boxes <= 50:
            raise ValueError("max_boxes must be in 1..50")
        if self.search_created_unit not in ("ms", "s"):
            raise ValueError("search_created_unit must be 'ms' or 's'")
        for slug in (self.workspace, self.project):
            if not slug or "/" in slug or slug.startswith("__"):
                raise ValueError(f"invalid slug {slug!r}")

    @property
    def valid_keys(self) -> tuple[str, ...]:
        return (self.api_key, *self.extra_api_keys)


@dataclass
class FaultConfig:
    """How the emulator misbehaves. All off by default.

    Transient faults (throttle, server_error, reset, slow, truncate, no_content_length, unstable_order)
    fire on the first ``<name>_count`` matching requests, then on each later request with probability
    ``<name>_rate``; a retry can therefore succeed. ``<name>_routes`` takes route names or the groups
    "api", "cdn", "zip", "all". Count-based image faults (deleted_after_listing, eventually_consistent,
    undecodable, count_gap) pick disjoint images with a seeded RNG; they are permanent except
    eventual consistency, which heals after ``eventual_tries`` 404s per image.
    """

    seed: int | None = field(default=None, metadata=_doc("fault RNG seed; default: the emulator seed"))

    throttle_rate: float = field(default=0.0, metadata=_doc("random 429 RateLimitException"))
    throttle_count: int = field(default=0, metadata=_doc("429 on the next N matching requests"))
    throttle_routes: tuple[str, ...] = field(default=("api",), metadata=_doc("routes that get random 429"))
    retry_after_fraction: float = field(
        default=0.5, metadata=_doc("share of random 429s with Retry-After (limit 429s: rate_limit_retry_after)")
    )
    retry_after_seconds: int = field(default=1, metadata=_doc("Retry-After value for random 429s"))

    server_error_rate: float = field(default=0.0, metadata=_doc("random 5xx"))
    server_error_count: int = field(default=0, metadata=_doc("5xx on the next N matching requests"))
    server_error_routes: tuple[str, ...] = field(default=("api", "cdn"), metadata=_doc("routes that get 5xx"))
    server_error_statuses: tuple[int, ...] = field(
        default=(500, 502, 503), metadata=_doc("statuses to pick from (500 JSON, 502/503 HTML)")
    )

    reset_rate: float = field(default=0.0, metadata=_doc("close the socket with RST before answering"))
    reset_count: int = field(default=0, metadata=_doc("reset the next N matching requests"))
    reset_routes: tuple[str, ...] = field(default=("api", "cdn"), metadata=_doc("routes that get resets"))

    slow_rate: float = field(default=0.0, metadata=_doc("delay the answer by slow_seconds"))
    slow_count: int = field(default=0, metadata=_doc("delay the next N matching requests"))
    slow_routes: tuple[str, ...] = field(default=("api", "cdn"), metadata=_doc("routes that can be slow"))
    slow_seconds: float = field(default=2.0, metadata=_doc("extra delay of a slow answer"))

    truncate_rate: float = field(default=0.0, metadata=_doc("send full Content-Length, then close early"))
    truncate_count: int = field(default=0, metadata=_doc("truncate the next N matching responses"))
    truncate_routes: tuple[str, ...] = field(default=("cdn", "zip"), metadata=_doc("routes that get truncated"))

    no_content_length_rate: float = field(default=0.0, metadata=_doc("omit Content-Length (close-delimited)"))
    no_content_length_count: int = field(default=0, metadata=_doc("omit it on the next N matching responses"))
    no_content_length_routes: tuple[str, ...] = field(
        default=("cdn", "zip"), metadata=_doc("routes that can omit Content-Length")
    )

    unstable_order_rate: float = field(
        default=0.0, metadata=_doc("project search pages drawn from a per-request perturbed order (#418)")
    )
    unstable_order_count: int = field(default=0, metadata=_doc("perturb the next N project searches"))
    unstable_order_window: int = field(default=20, metadata=_doc("how far an image can move in the order"))

    undefined_url_rate: float = field(
        default=0.0, metadata=_doc("fraction of images whose urls.original says /undefined/ (#256)")
    )
    error_style: dict[str, str] = field(
        default_factory=dict,
        metadata=_doc("route -> 'string' or 'object': force the shape of `error` in that route's errors"),
    )
    deleted_after_listing: int = field(default=0, metadata=_doc("images listed by search but 404 on details and CDN"))
    eventually_consistent: int = field(default=0, metadata=_doc("images whose details 404 until retried"))
    eventual_tries: int = field(default=2, metadata=_doc("404s before an eventually consistent image heals"))
    undecodable: int = field(default=0, metadata=_doc("images whose CDN bytes are not a decodable image"))
    count_gap: int = field(default=0, metadata=_doc("images counted in totals but never listed by search"))
    stuck_export: bool = field(default=False, metadata=_doc("exports answer 202 forever"))
    export_progress_over_one: bool = field(default=False, metadata=_doc("export progress goes above 1"))
    offset_cap: int | None = field(
        default=None, metadata=_doc("project search silently returns nothing at or past this offset")
    )
    unknown_version_status: int = field(default=500, metadata=_doc("status for an unknown version: 500 or 404"))
    account_refusal_status: int | None = field(
        default=None, metadata=_doc("402 (out of credits), 423 (usage paused) or 403 (access lost) for the account")
    )
    account_refusal_after: int = field(
        default=0, metadata=_doc("API requests on account_refusal_routes answered normally before the refusals start")
    )
    account_refusal_routes: tuple[str, ...] = field(
        default=("api",), metadata=_doc("routes that get the account refusal (image_details: credits run out mid-run)")
    )

    # The per-key limit behaves like an API gateway's token bucket. Roboflow documents neither its limit
    # nor its burst nor its headers (roboflow-api.md), so each is a switch, and the defaults are the hard
    # end of what gateways do (inferred, not measured against Roboflow): almost no burst, Retry-After on
    # only some 429s (and then rounded up to whole seconds), so a client can rely on neither.
    rate_limit_per_s: float | None = field(default=None, metadata=_doc("token bucket per API key, requests/s"))
    rate_limit_burst_s: float = field(
        default=0.1, metadata=_doc("bucket size in seconds of rate (0.1: almost no burst; 10: lenient)")
    )
    rate_limit_burst: int | None = field(
        default=None, metadata=_doc("bucket size in requests; overrides rate_limit_burst_s")
    )
    rate_limit_retry_after: str = field(
        default="half", metadata=_doc("which rate-limit 429s carry Retry-After: all, none or half")
    )
    rate_limit_change_per_s: float | None = field(
        default=None, metadata=_doc("the limit becomes this (another client on the key starts or stops)...")
    )
    rate_limit_change_after_calls: int | None = field(
        default=None, metadata=_doc("...after this many rate-limited API calls")
    )
    rate_limit_change_after_s: float | None = field(
        default=None, metadata=_doc("...or this many seconds after the first rate-limited call")
    )
    api_latency_ms: float = field(default=0.0, metadata=_doc("added to every API answer"))
    cdn_latency_ms: float = field(default=0.0, metadata=_doc("added to every CDN and ZIP answer"))

    def __post_init__(self) -> None:
        for name in TRANSIENT_FAULTS:
            rate = getattr(self, f"{name}_rate")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}_rate must be in [0, 1]")
            if getattr(self, f"{name}_count") < 0:
                raise ValueError(f"{name}_count must be >= 0")
            routes_field = f"{name}_routes"
            if hasattr(self, routes_field):
                routes = getattr(self, routes_field)
                routes = (routes,) if isinstance(routes, str) else tuple(routes)
                expand_routes(routes)
                setattr(self, routes_field, routes)
        self.server_error_statuses = tuple(int(s) for s in self.server_error_statuses)
        if any(s < 500 or s > 599 for s in self.server_error_statuses) or not self.server_error_statuses:
            raise ValueError("server_error_statuses must be non-empty 5xx codes")
        for route, style in self.error_style.items():
            expand_routes([route])
            if style not in ("string", "object"):
                raise ValueError("error_style values must be 'string' or 'object'")
        if self.account_refusal_status not in (None, 402, 403, 423):
            raise ValueError("account_refusal_status must be 402, 403, 423 or null")
        if self.account_refusal_after < 0:
            raise ValueError("account_refusal_after must be >= 0")
        expand_routes(self.account_refusal_routes)
        if self.unknown_version_status not in (404, 500):
            raise ValueError("unknown_version_status must be 404 or 500")
        for name in ("rate_limit_per_s", "rate_limit_change_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 < self.rate_limit_burst_s <= 60:
            raise ValueError("rate_limit_burst_s must be in (0, 60]")
        if self.rate_limit_retry_after not in RETRY_AFTER_SHARES:
            raise ValueError(f"rate_limit_retry_after must be one of {sorted(RETRY_AFTER_SHARES)}")
        if self.rate_limit_change_per_s is not None and (
            (self.rate_limit_change_after_calls is None) == (self.rate_limit_change_after_s is None)
        ):
            raise ValueError("rate_limit_change_per_s needs exactly one of rate_limit_change_after_calls/_after_s")
        for name in ("deleted_after_listing", "eventually_consistent", "undecodable", "count_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FaultConfig:
        return _from_dict(cls, data)


RETRY_AFTER_SHARES = {"all": 1.0, "half": 0.5, "none": 0.0}

TRANSIENT_FAULTS = (
    "throttle",
    "server_error",
    "reset",
    "slow",
    "truncate",
    "no_content_length",
    "unstable_order",
)


def _from_dict(cls, data: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if value is not None and str(hints[name]).startswith("tuple") and isinstance(value, list | str):
            value = (value,) if isinstance(value, str) else tuple(value)
        values[name] = value
    return cls(**values)


def emulator_config_from_dict(data: dict) -> EmulatorConfig:
    return _from_dict(EmulatorConfig, data)
