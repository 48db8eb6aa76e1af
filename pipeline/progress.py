"""Live progress of a local run: images done / total, images per second, failures and ETA.

Where the numbers come from: an in-process :class:`ProgressTracker` that the steps tell about
every image as it completes, through :func:`transforms.batch_step.count` (the same call that
increments the Beam counter): written, unchanged (skipped) or dead-lettered, plus each distinct
listed id. FnApiRunner's result has no metrics until the run ends, and polling Supabase would add
load on the target, lag, and see neither failures nor skipped images; on a local run
(``multi_threading``, one process) every DoFn runs in this process, so the tracker costs a lock
and a counter per image. Under ``multi_processing`` or on Dataflow the DoFns run elsewhere and the
tracker would stay at zero, so no live line is shown there; the same numbers are the
``roboflow_import`` Beam counters (``images_listed``, ``images_written``, ``images_unchanged``,
``images_failed``), live in the Dataflow console.

Honesty: ``done`` counts only images that completed; ``total`` is Roboflow's reported count until
the distinct listed ids arrive (the listing is done before the first batch moves: two grouping
barriers lie between them), then the listed count. The last report is built from the committed
Beam counters of the finished run, the same numbers as the summary.

    tracker = ProgressTracker(reported_total=checked.listing.total)
    with ProgressReporter(tracker, stream=sys.stderr, interval=10.0) as reporter:
        ... run the pipeline ...
        reporter.finish(final_progress(summary, tracker))
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TextIO

from transforms.core.redact import redact

log = logging.getLogger(__name__)

LISTED, WRITTEN, UNCHANGED, FAILED = "images_listed", "images_written", "images_unchanged", "images_failed"
IMAGE_COUNTERS = frozenset((LISTED, WRITTEN, UNCHANGED, FAILED))
RATE_WINDOW = 30.0  # seconds of recent completions behind images/s and the ETA
MILESTONE = 10  # a callback at least every this many completed images: the platform updates its job row every ~10
DEFAULT_INTERVAL = 10.0  # seconds between plain lines when stderr is not a terminal
TTY_TICK = 0.5  # seconds between redraws of the live line


@dataclasses.dataclass(frozen=True)
class Progress:
    """One report. ``done`` = imported + failed; ``total`` as the module docstring says."""

    done: int
    total: int
    failed: int
    elapsed: float  # seconds since the pipeline started
    rate: float | None = None  # images/s over the last RATE_WINDOW seconds; None until measurable
    eta: float | None = None  # seconds; None while the rate is unknown or zero
    listing: bool = False  # no listed id has arrived yet: total is Roboflow's reported count
    final: bool = False

    @property
    def imported(self) -> int:
        return self.done - self.failed


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render_line(p: Progress) -> str:
    """The one line a person watches; only numbers, never a name or a key."""
    if p.listing and not p.done:
        return f"listing images ({p.total:,} reported by Roboflow) | {format_duration(p.elapsed)} elapsed"
    percent = f" ({100 * p.done / p.total:.0f}%)" if p.total else ""
    rate = f"{p.rate:.1f} img/s" if p.rate is not None else "- img/s"
    if p.final:
        tail = f"done in {format_duration(p.elapsed)}"
    else:
        tail = f"ETA {format_duration(p.eta)}" if p.eta is not None else "ETA -"
    return f"{p.done:,}/{p.total:,} images{percent} | {rate} | {p.failed:,} failed | {tail}"


class ProgressTracker:
    """Thread-safe image counts of one run; :meth:`add` is the sink the steps call."""

    def __init__(self, reported_total: int, *, clock: Callable[[], float] = time.monotonic,
                 window: float = RATE_WINDOW, milestone: int = MILESTONE):
        self._clock = clock
        self._window = window
        self._milestone = max(1, milestone)
        self._reported = max(0, int(reported_total))
        self._started = clock()
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self._started, 0)])
        self._milestones: list[Progress] = []

    def _done(self) -> int:
        return self._counts[WRITTEN] + self._counts[UNCHANGED] + self._counts[FAILED]

    def add(self, name: str, n: int = 1) -> None:
        if name not in IMAGE_COUNTERS or n <= 0:
            return
        now = self._clock()
        with self._lock:
            before = self._done()
            self._counts[name] += n
            after = self._done()
            if after != before:
                self._samples.append((now, after))
                self._prune(now)
                if after // self._milestone > before // self._milestone:
                    self._milestones.append(self._snapshot(now))

    def _prune(self, now: float) -> None:
        """Keep the samples of the window, plus the newest older one as its anchor."""
        while len(self._samples) > 1 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()

    def _snapshot(self, now: float) -> Progress:
        done, failed, listed = self._done(), self._counts[FAILED], self._counts[LISTED]
        total = max(listed if listed else self._reported, done)
        self._prune(now)
        anchor_time, anchor_done = self._samples[0]
        rate = None
        if now - self._started >= 1.0 and now > anchor_time:  # completions since the window's anchor
            rate = (done - anchor_done) / (now - anchor_time)
        eta = (total - done) / rate if rate else None
        return Progress(done, total, failed, now - self._started, rate, eta, listing=not listed)

    def snapshot(self) -> Progress:
        with self._lock:
            return self._snapshot(self._clock())

    def drain(self) -> tuple[list[Progress], Progress]:
        """The milestones reached since the last drain, and the current state (never older than them)."""
        with self._lock:
            milestones, self._milestones = self._milestones, []
            return milestones, self._snapshot(self._clock())

    def elapsed(self) -> float:
        return self._clock() - self._started


def final_progress(summary: dict, tracker: ProgressTracker) -> Progress:
    """The last report, from the finished run's committed counters (the summary's numbers)."""
    done = summary["imported"] + summary["failed"]
    elapsed = tracker.elapsed()
    return Progress(done=done, total=max(summary["listed"], done), failed=summary["failed"], elapsed=elapsed,
                    rate=done / elapsed if elapsed > 0 else None, eta=0.0, final=True)


class ProgressReporter:
    """Shows a tracker's progress from its own daemon thread: a live ``\\r`` line on a terminal,
    a plain line every ``interval`` seconds otherwise, and/or calls ``callback(Progress)`` at every
    milestone and every ``interval`` seconds when something changed; :meth:`finish` gives the
    final report. A failing callback is logged (redacted) and the import goes on. Use as a context
    manager: the thread stops on success, failure and KeyboardInterrupt alike."""

    def __init__(self, tracker: ProgressTracker, *, stream: TextIO | None = None, interval: float = DEFAULT_INTERVAL,
                 callback: Callable[[Progress], object] | None = None, tty: bool | None = None,
                 tick: float = TTY_TICK, live: bool = True):
        self.tracker = tracker
        self.stream = stream
        self.callback = callback
        self.interval = max(0.05, float(interval))
        self.tty = bool(tty if tty is not None else (stream is not None and _isatty(stream)))
        self.tick = min(tick, self.interval)
        self.live = live  # False: the tracker cannot see the workers, so only the final report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line = tracker.elapsed()
        self._last_call: Progress | None = None
        self._last_call_at = tracker.elapsed()
        self._drawn = False
        self._callback_failures = 0

    def __enter__(self) -> ProgressReporter:
        if self.live and (self.stream is not None or self.callback is not None):
            self._thread = threading.Thread(target=self._loop, name="import-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._halt()
        if self._drawn and self.stream is not None:  # interrupted or failed: end the live line, claim nothing
            self._write("\n")
            self._drawn = False

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.report()
            except Exception:  # a broken stream must not take the import down
                log.debug("progress report failed", exc_info=True)

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def report(self) -> None:
        """One tick: pending milestones to the callback, then the line if it is due."""
        milestones, current = self.tracker.drain()
        if self.callback is not None:
            for progress in milestones:
                self._call(progress)
            if current != self._last_call and self._changed(current) and \
                    current.elapsed - self._last_call_at >= self.interval:
                self._call(current)
        if self.stream is None:
            return
        if self.tty:
            self._write("\r" + render_line(current) + "\x1b[K")
            self._drawn = True
        elif current.elapsed - self._last_line >= self.interval:
            self._write(render_line(current) + "\n")
            self._last_line = current.elapsed

    def finish(self, final: Progress) -> None:
        """Stop the thread, then the milestones it had not reported yet, the last line and the last callback.

        The milestones matter: the thread reports every ``tick``, and a run's last images can complete
        within one when the stages after them finish fast, so without them the platform saw a jump to the
        end (the platform call's test, local runner of ``pipeline/local_runner.py``: 4 runs of 8 went from 280
        to 300; 0 of 8 with them)."""
        self._halt()
        if self.callback is not None:
            milestones, _ = self.tracker.drain()
            for progress in milestones:
                if progress.done < final.done:
                    self._call(progress)
            self._call(final)
        if self.stream is not None:
            self._write(("\r" if self.tty else "") + render_line(final) + ("\x1b[K" if self.tty else "") + "\n")
            self._drawn = False

    def _changed(self, p: Progress) -> bool:
        last = self._last_call
        return last is None or (p.done, p.total, p.failed) != (last.done, last.total, last.failed)

    def _call(self, progress: Progress) -> None:
        if self._last_call is not None and progress.done < self._last_call.done:
            return  # never report going backwards
        self._last_call, self._last_call_at = progress, progress.elapsed
        try:
            self.callback(progress)
        except Exception as exc:  # the platform's callback must not kill the import
            self._callback_failures += 1
            if self._callback_failures <= 3:
                log.warning("progress callback failed (the import goes on): %s: %s", type(exc).__name__, redact(exc))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
