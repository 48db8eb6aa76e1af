"""Run the emulator as a process: ``python -m pipeline.testing.roboflow_emulator --help``.

Prints one JSON line ``{"api_url": ..., "cdn_url": ...}`` once listening, then serves until SIGTERM
or SIGINT. Every EmulatorConfig and FaultConfig field is a flag; faults can also be switched later
with ``POST /__emulator/faults`` (JSON body of FaultConfig fields) and counters read with
``GET /__emulator/counters``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import types
import typing

from .config import EmulatorConfig, FaultConfig, emulator_config_from_dict
from .emulator import RoboflowEmulator

SHORT_ALIASES = {
    "image_count": ["--images"],
    "rate_limit_per_s": ["--rate-limit"],
}
FAULT_DEST_PREFIX = "fault__"
FAULT_FLAG_RENAMES = {"seed": "--fault-seed"}


def _parser_for(kind: type) -> typing.Callable[[str], object]:
    """How to read one field's flag value, from its type annotation."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)][0]
        read = _parser_for(inner)
        return lambda text: None if text.lower() in ("", "none") else read(text)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return lambda text: tuple(item(part) for part in text.split(",") if part)
    if origin is dict:
        return lambda text: dict(pair.split("=", 1) for pair in text.split(",") if pair)
    return kind


def _add_fields(
    parser: argparse.ArgumentParser, cls: type, title: str, dest_prefix: str = "", renames: dict | None = None
) -> None:
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        flag = (renames or {}).get(item.name, "--" + item.name.replace("_", "-"))
        flags = [flag, *SHORT_ALIASES.get(item.name, [])]
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        help_text = f"{item.metadata.get('help', '')} (default: {default!r})"
        origin = typing.get_origin(hints[item.name])
        if origin is tuple:
            help_text += " [comma-separated]"
        elif origin is dict:
            help_text += " [route=style,...]"
        if hints[item.name] is bool:
            reader = {"action": argparse.BooleanOptionalAction}
        else:
            reader = {"type": _parser_for(hints[item.name])}
        group.add_argument(
            *flags, dest=dest_prefix + item.name, metavar=item.name.upper(), default=None, help=help_text, **reader
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.testing.roboflow_emulator",
        usage="%(prog)s [--port 0] [--images N] [--seed S] [--api-key K] [options]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_fields(parser, EmulatorConfig, "project (EmulatorConfig)")
    _add_fields(
        parser,
        FaultConfig,
        "faults (FaultConfig; transient ones fire on <name>-count requests, then at <name>-rate)",
        FAULT_DEST_PREFIX,
        FAULT_FLAG_RENAMES,
    )
    parser.add_argument("--faults-json", default=None, help="FaultConfig fields as a JSON object (flags win)")
    return parser


def configs_from_args(args: argparse.Namespace) -> tuple[EmulatorConfig, FaultConfig]:
    values = {name: value for name, value in vars(args).items() if value is not None}
    config_fields = {f.name for f in dataclasses.fields(EmulatorConfig)}
    config = emulator_config_from_dict({k: v for k, v in values.items() if k in config_fields})
    fault_values = json.loads(args.faults_json) if args.faults_json else {}
    fault_values.update({k[len(FAULT_DEST_PREFIX) :]: v for k, v in values.items() if k.startswith(FAULT_DEST_PREFIX)})
    return config, FaultConfig.from_dict(fault_values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, faults = configs_from_args(args)
    except (ValueError, TypeError) as error:
        print(f"invalid configuration: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with RoboflowEmulator(config, faults) as emulator:
        print(json.dumps({"api_url": emulator.api_url, "cdn_url": emulator.cdn_url}), flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
