"""Checks of the command line and options that need no network: one line naming the fix for each.

The command line (or the API's values) is checked and parsed here once, into
:class:`~pipeline.options.ParsedOptions`; :func:`pipeline.preflight.check` runs the option checks
first, so a typo never waits on a remote call.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline.class_mapping import AUTO, MappingEntry
from pipeline.environment import ROBOFLOW_KEY_ENV, SUPABASE_KEY_ENV
from pipeline.errors import InputError
from pipeline.options import ImportOptions, ParsedOptions, importer_actions
from transforms.clients.listing import SPLITS, ListingSpec, Selection, selection_body, selection_query
from transforms.core.ratelimit import DEFAULT_STALL_TIMEOUT
from transforms.core.redact import redact
from transforms.core.secrets import MissingSecret, SecretRef

MAX_RUN_ID = 200


class _CommandLineParser(_BeamArgumentParser):
    """Beam's parser, raising InputError where argparse would print its whole usage text."""

    def error(self, message: str) -> None:
        if message.startswith("ambiguous option: "):  # ignored by Beam's parser too
            return
        raise InputError(f"{message}; see python -m pipeline.main --help")


def _command_line_parser() -> _CommandLineParser:
    """Every option of Beam and the importer, with no defaults: what it parses is what was given."""
    parser = _CommandLineParser(allow_abbrev=False, add_help=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return parser


def check_command_line(flags: list[str] | None) -> frozenset[str]:
    """Every flag is known to Beam or the importer and its value parses; returns the options given.

    Beam drops an unknown flag silently, so a typo (``--batch-size``, ``--create-bucket``) would
    run with the default; a bad value would print argparse's usage text. Both are one line here.
    """
    if not flags:
        return frozenset()
    given, unknown = _command_line_parser().parse_known_args(flags)
    unknown = [arg for arg in unknown if arg not in ("-h", "--help")]
    if not unknown:
        return frozenset(vars(given))
    dashed = [arg for arg in unknown if arg.startswith("-")]
    if not dashed:  # a stray value is not echoed: it may be a pasted key
        option = next((f for f in reversed(flags[:flags.index(unknown[0])]) if f.startswith("-")), None)
        after = f"after {option.split('=', 1)[0]}" if option else "before the first option"
        raise InputError(f"unexpected value {after}; each option takes one value (quote values with spaces)")
    name = dashed[0].split("=", 1)[0]
    if "key" in name.lower() and "secret" not in name.lower() and name != "--dataflow_kms_key":
        raise InputError(f"unknown option {name}; keys are never options: export {ROBOFLOW_KEY_ENV} and "
                         f"{SUPABASE_KEY_ENV}")
    known = [f"--{dest}" for dest in PipelineOptions([]).get_all_options()]
    close = difflib.get_close_matches("--" + name.lstrip("-").replace("-", "_"), known, n=1)
    hint = f"did you mean {close[0]}?" if close else "see python -m pipeline.main --help"
    raise InputError(f"unknown option {name}; {hint}")


def parse_command_line(argv: list[str]) -> ParsedOptions:
    """The command line, checked (one-line errors, never argparse's usage text) and parsed, once."""
    given = check_command_line(argv)
    return ParsedOptions(PipelineOptions(argv), given)


# Options that take a Python value besides the flag's string: the class mapping's entries themselves
# (the API's request), checked by pipeline/class_mapping.py as the entries of a file are.
PYTHON_VALUES: dict[str, tuple[type, str]] = {"class_mapping": (list, "a list of entries")}


def check_option_values(values: dict[str, Any]) -> None:
    """Values set from Python are importer options of the type their flag parses to."""
    actions = {action.dest: action for action in importer_actions()}
    for name, value in values.items():
        action = actions.get(name)
        if action is None:
            raise InputError(f"unknown option {name}; see python -m pipeline.main --help")
        if action.nargs == 0:
            kinds, what = (bool,), "true or false"
        elif action.type is int:
            kinds, what = (int,), "an integer"
        elif action.type is float:
            kinds, what = (int, float), "a number"
        elif name in PYTHON_VALUES:
            kind, described = PYTHON_VALUES[name]
            kinds, what = (str, kind), f"a string or {described}"
        else:
            kinds, what = (str,), "a string"
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise InputError(f"option {name} must be {what} (got {type(value).__name__})")
        if action.choices and value not in action.choices:
            raise InputError(f"option {name} must be one of {', '.join(action.choices)} (got {value!r})")


def options_from_values(values: dict[str, Any], flags: list[str] | None = None) -> ParsedOptions:
    """Options set from Python (the API's request; ``None`` leaves the default) with more flags on top.

    A flag also set in ``values`` wins, as the later of two flags does on a command line.
    """
    given_flags = check_command_line(flags)
    values = {name: value for name, value in values.items() if value is not None and name not in given_flags}
    check_option_values(values)
    return ParsedOptions(PipelineOptions(list(flags or []), **values), given_flags | frozenset(values))


def _require(value: Any, flag: str, example: str) -> Any:
    if value in (None, ""):
        raise InputError(f"{flag} is required; pass e.g. {flag} {example}")
    return value


def http_url(value: str, flag: str, example: str, key_env: str) -> str:
    try:
        parsed = urlparse(value)
        valid = parsed.scheme in ("http", "https") and bool(parsed.hostname) and parsed.port != 0
    except ValueError:  # .port of "host:abc" or "host:99999"
        valid = False
    if not valid:
        raise InputError(f"{flag} {redact(value)!r} is not an http(s) URL; pass e.g. {example}")
    if parsed.query or parsed.username or parsed.password:
        raise InputError(f"{flag} must not carry a query or credentials; pass e.g. {example} and put the key "
                         f"in {key_env}")
    return value.rstrip("/")


def secret_of(secret_version: str | None, flag: str, env_var: str, what: str) -> tuple[SecretRef, str]:
    try:
        ref = SecretRef(secret_version=secret_version) if secret_version else SecretRef(env_var=env_var)
        return ref, ref.resolve()
    except MissingSecret as exc:
        fix = (f"export {env_var}=<the {what}>" if not secret_version else
               f"check {flag} and grant roles/secretmanager.secretAccessor on it to your account (the launcher "
               "reads it for the preflight checks) and to the workers' service account")
        raise InputError(f"{exc}; {fix} before running") from None
    except ValueError as exc:
        raise InputError(f"{flag}: {exc}") from None


def check_options(opts: ImportOptions) -> None:
    _require(opts.roboflow_workspace, "--roboflow_workspace", "my-workspace (the slug in its Roboflow URL)")
    _require(opts.roboflow_project, "--roboflow_project", "my-project (the slug in its Roboflow URL)")
    dataset = _require(opts.dataset_id, "--dataset_id", "<the od_datasets.id to import into>")
    try:
        uuid.UUID(dataset)
    except ValueError:
        raise InputError(f"--dataset_id {dataset!r} is not a UUID; pass the od_datasets.id") from None
    defaults = ImportOptions([])
    for name in ("batch_size", "concurrency", "shards"):
        value, default = getattr(opts, name), getattr(defaults, name)
        if value is not None and value <= 0:
            hint = (f"omit it for the default {default}" if default is not None else
                    "omit it to size it from the latency" if name == "concurrency" else "omit it for 4 x workers")
            raise InputError(f"--{name} must be a positive integer (got {value}); {hint}")
    rate = opts.roboflow_rate_limit
    if rate is not None and not rate > 0:  # also NaN
        raise InputError(f"--roboflow_rate_limit must be a positive number of requests per second (got {rate}); "
                         "omit it to adapt to Roboflow's 429s")
    stall = opts.roboflow_stall_timeout
    if not stall > 0:  # also NaN
        raise InputError(f"--roboflow_stall_timeout must be a positive number of seconds (got {stall}); "
                         f"omit it for the default {DEFAULT_STALL_TIMEOUT:g}")
    if opts.roboflow_version is not None and opts.roboflow_version <= 0:
        raise InputError(f"--roboflow_version must be a positive integer (got {opts.roboflow_version}); "
                         "pass a version number shown in Roboflow, or omit it")
    if opts.storage_bucket is not None and not opts.storage_bucket:
        raise InputError("--storage_bucket is empty; omit it for the default (od-images, or cls-images for a "
                         "classification project)")
    run_id = opts.run_id
    if run_id is not None and not (0 < len(run_id) <= MAX_RUN_ID and run_id.isprintable() and run_id.strip()):
        raise InputError(f"--run_id must be 1 to {MAX_RUN_ID} printable characters (got {run_id[:40]!r}); pass the "
                         "platform's job id, or omit it")


def selection_of(opts: ImportOptions) -> Selection:
    """The filters of the command line; the platform's split name ``val`` is taken for Roboflow's ``valid``."""
    split = "valid" if opts.split == "val" else opts.split
    return Selection(split=split, tag=opts.tag, class_name=opts.class_name, query=opts.query)


def check_selection(opts: ImportOptions, selection: Selection) -> None:
    """Filter values and the filter/prune combinations that can work, before any call."""
    for flag, value in (("--split", opts.split), ("--tag", opts.tag), ("--class_name", opts.class_name),
                        ("--query", opts.query)):
        if value is not None and not value.strip():
            raise InputError(f"{flag} is empty; omit it to import every image")
    if selection.split is not None and selection.split not in SPLITS:
        raise InputError(f"--split {opts.split!r} is not a Roboflow split; use one of {', '.join(SPLITS)}")
    if opts.roboflow_listing == "offset" and (selection.split or selection.query):
        flag = "--split" if selection.split else "--query"
        raise InputError(f"{flag} works with the token listing only (Roboflow's project search has no split or "
                         "RoboQL filter); drop --roboflow_listing offset")
    if opts.prune_mode and not opts.prune:
        raise InputError(f"--prune_mode {opts.prune_mode} needs --prune; add --prune or drop --prune_mode")
    if opts.prune and selection.active():
        raise InputError(f"--prune removes images missing from the whole project, so it cannot run with filters "
                         f"({selection.describe()}); run it without filters")
    if opts.plan and opts.retry_dead_letters:
        raise InputError("--plan plans a listing of the project; drop --retry_dead_letters (a retry re-imports "
                         "exactly the dead letters' images)")
    if opts.prune and opts.retry_dead_letters:
        raise InputError("--prune needs the whole project's listing, --retry_dead_letters lists only earlier "
                         "failures; run --prune on a normal import")


def check_class_filter(selection: Selection, classes: dict[str, Any], what: str) -> None:
    if selection.class_name is None or selection.class_name in classes:
        return
    close = difflib.get_close_matches(selection.class_name, list(classes), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise InputError(f"--class_name {selection.class_name!r} is not a class of {what}; {hint}its classes: "
                     f"{', '.join(sorted(classes)[:20]) or 'none'}{' ...' if len(classes) > 20 else ''}")


def unmapped_classes(mapping: list[MappingEntry] | str, classes: dict[str, Any]) -> tuple[str, ...]:
    if mapping == AUTO:
        return ()
    return tuple(sorted(set(classes) - {entry.source_name for entry in mapping}))


def listing_spec(opts: ImportOptions, selection: Selection, total: int) -> ListingSpec:
    """``auto`` reads project-search pages, which have no split or RoboQL filter: those take the token walk."""
    mode = opts.roboflow_listing
    if mode == "auto" and (selection.split or selection.query):
        mode = "token"
    return ListingSpec(opts.roboflow_workspace, opts.roboflow_project, total, mode=mode,
                       filters=selection_body(selection), query=selection_query(selection))


def check_output_paths(opts: ImportOptions) -> None:
    """The summary file and dead-letter directory can be written, known now rather than after the import."""
    for flag, path, is_dir in (("--summary_path", opts.summary_path, False),
                               ("--dead_letter_path", opts.dead_letter_path, True)):
        if not path:
            raise InputError(f"{flag} is empty; omit it for the default under import-output/")
        if "://" in path:  # gs:// and friends: checked by Beam's filesystem when written
            continue
        target = Path(path).absolute()
        if not is_dir and target.is_dir():
            raise InputError(f"{flag} {path} is a directory; pass a file path, e.g. {Path(path, 'summary.json')}")
        if is_dir and target.exists() and not target.is_dir():
            raise InputError(f"{flag} {path} is a file; pass a directory for the dead-letter files")
        ancestor = target if is_dir else target.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"{flag} {path} lies under the file {ancestor}; choose a path in a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path} is not writable ({ancestor}); choose a writable location")


def _jwt_role(key: str) -> str | None:
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload.get("role") if isinstance(payload, dict) else None


def check_service_key(key: str, key_source: str) -> None:
    """An anon or publishable key is bound by row-level security (it reads and writes nothing): refuse it."""
    role = _jwt_role(key)
    if key.startswith("sb_publishable_"):
        kind = "a publishable key"
    elif role is not None and role != "service_role":
        kind = f"an {role!r} key" if role[:1] in "aeiou" else f"a {role!r} key"
    else:
        return
    raise InputError(f"{key_source} holds {kind}, not the service key; set it to the project's service_role "
                     "(or sb_secret_) key from Supabase: Project Settings > API")
