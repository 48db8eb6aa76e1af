"""The child side of pipeline/api.py: one import in its own process (``python -m pipeline.import_worker``).

The parent writes one JSON line on stdin, the request ``{"options", "pipeline_args", "roboflow_key",
"supabase_key"}`` (``options``: importer option values by name, the class mapping's entries among
them; ``pipeline_args``: the caller's extra flags), and keeps stdin open. Its end (the parent closed
it because the awaiting task was cancelled, or the parent died) stops this process at once: an
import never outlives its caller, and every write is idempotent, so running the import again
completes what was cut short.

Messages go back as JSON lines ``{"kind", "body"}`` on the process's original stdout: ``log``
(every log record, redacted), ``progress`` (a :class:`~pipeline.progress.Progress`), ``dead_letter``
(one per image not imported, read from the run's ``--dead_letter_path``: the pipeline's workers, in
other processes on some runners, write them there; one message each keeps a line short whatever
their number), then exactly one of ``result`` (the summary), ``input_error`` or
``failed``. File descriptor 1 is pointed at stderr before anything is imported, so a library that
prints cannot corrupt the messages; stderr is forwarded to the parent's log.

The keys arrive on stdin and go into this process's own environment, where the pipeline's
``SecretRef`` reads them; the parent's environment and every argv stay free of them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
from typing import Any, TextIO

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_ORPHANED = 0, 1, 2, 3
# A batch job under a web service: when they compete for a core, the service gets 3x the worker's
# share (CFS weights 1024 vs 335). A choice, not a measurement.
NICENESS = 5

log = logging.getLogger(__name__)


class Channel:
    """JSON lines to the parent; one lock, because the progress thread and the log handlers share it."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, kind: str, body: Any) -> None:
        line = json.dumps({"kind": kind, "body": body}, default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class ChannelLogHandler(logging.Handler):
    """Log records to the parent, which re-emits them on a logger of the same name."""

    def __init__(self, channel: Channel):
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send("log", {"level": record.levelno, "name": record.name, "message": self.format(record)})
        except Exception:
            self.handleError(record)


def exit_when_parent_goes(fd: int) -> None:
    """Stop this process as soon as the parent's end of stdin closes (cancelled or gone). Raw reads of
    the descriptor: a thread blocked in ``sys.stdin`` holds its lock and aborts the interpreter's exit."""

    def watch() -> None:
        while os.read(fd, 4096):  # b"" at end of file only
            pass
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_import(request: dict, channel: Channel) -> int:
    """The one place that calls the pipeline (``pipeline.main.execute``), with the options parsed once."""
    from pipeline import main as importer
    from pipeline.api import keys_in_environment
    from pipeline.errors import InputError
    from pipeline.validation import options_from_values
    from transforms.core.redact import redact, register_secret
    from transforms.dead_letters import read_dead_letters

    roboflow_key, supabase_key = request["roboflow_key"], request["supabase_key"]
    register_secret(roboflow_key)
    register_secret(supabase_key)
    try:
        options = options_from_values(request["options"], request["pipeline_args"])
        with keys_in_environment(roboflow_key, supabase_key):
            outcome = importer.execute(options, lambda progress: channel.send("progress", dataclasses.asdict(progress)))
    except InputError as exc:
        channel.send("input_error", redact(exc))
        return EXIT_INPUT
    except Exception as exc:  # one redacted line for the caller; the traceback as a debug record
        log.debug("import failed", exc_info=True)
        channel.send("failed", f"{type(exc).__name__}: {redact(exc)}")
        return EXIT_FAILED
    for letter in read_dead_letters(options.importer.dead_letter_path):
        channel.send("dead_letter", {"image_id": letter.image_id, "step": letter.step,
                                     "error_type": letter.error_type, "message": redact(letter.message)})
    channel.send("result", outcome.summary)
    return EXIT_OK


def main() -> int:
    channel = Channel(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    request = json.loads(sys.stdin.buffer.readline() or b"null")
    if not isinstance(request, dict):
        return EXIT_ORPHANED  # the parent went away before sending the request
    exit_when_parent_goes(sys.stdin.fileno())
    os.nice(NICENESS)
    handler = ChannelLogHandler(channel)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    from pipeline.main import configure_logging

    configure_logging()  # redaction on the handler above, library chatter at WARNING
    return run_import(request, channel)


if __name__ == "__main__":
    sys.exit(main())
