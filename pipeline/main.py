"""Import a whole Roboflow project into Supabase, image by image, on Apache Beam.

    export ROBOFLOW_API_KEY=... SUPABASE_SERVICE_ROLE_KEY=...
    python -m pipeline.main --roboflow_workspace WS --roboflow_project PROJ --dataset_id UUID \\
        --supabase_url https://xyz.supabase.co --class_mapping mapping.json

The data path, top to bottom (see :func:`build_pipeline`):

1. ListImages    a splittable DoFn over Roboflow's search pages -> distinct image ids
2. BatchImages   batches of ``--batch_size`` (50), grouped by sharded keys, each worker on its shards
3. FetchDetails  one details call per image, concurrent, under the worker's shared rate limiter
4. UploadImages  original bytes from the CDN to Supabase Storage, at a deterministic path
5. WriteRows     idempotent upserts of od_images, od_annotations, od_dataset_images
   and every step's failures, per image, into one dead-letter PCollection -> JSON Lines.

Exit codes: 0 every listed image is in Supabase; 3 finished, some images are in the dead letters
(or the listing came up short); 2 bad input, found before anything was written; 1 anything else,
including a run Roboflow stopped (402/423/403 during the import: one line says why and the fix).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple, NoReturn

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from pipeline import launch, plan, preflight, runs, target, validation
from pipeline.errors import InputError
from pipeline.local_runner import LocalRunner
from pipeline.options import ImportOptions, ParsedOptions, concurrency_of, help_text
from pipeline.progress import Progress, ProgressReporter, ProgressTracker, final_progress
from pipeline.summary import build_summary, counters_of, render, stop_line, write_summary
from transforms.batch_images import BatchImages
from transforms.batch_step import DEAD_LETTER, NAMESPACE, set_progress_sink
from transforms.clients.roboflow import clear_account_stops
from transforms.core.records import ImportContext, ListedImage
from transforms.core.redact import install_log_redaction, redact
from transforms.dead_letters import WriteDeadLetters, dead_letter_files, read_dead_letters, remove_dead_letters
from transforms.fetch_details import FetchDetails
from transforms.list_images import ListImages, count_listed
from transforms.prune import PruneImages
from transforms.upload_images import UploadImages
from transforms.write_rows import WriteRows

log = logging.getLogger("pipeline")

EXIT_OK, EXIT_FATAL, EXIT_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3
# Worker threads on the local runner. A batch waits for its slowest image (retries, back-off), so
# more batches in flight keep the request slots busy: the reference fault run of 2,000 images took
# 158 s with 4 workers and 62.6 s with 16 (see pipeline/testing/fault_run.py).
LOCAL_WORKERS = 16
# The default DirectRunner first tries to download and start the Prism runner, and the legacy runner it can
# fall back on fails splittable DoFns (../shared/reference/beam.md). FnApiRunner runs this pipeline correctly.
REFUSED_RUNNERS = {"directrunner", "bundlebaseddirectrunner", "switchingdirectrunner"}

# The steps that wait on Roboflow or Supabase, which the local runner spreads over its workers (the
# details' stage holds the upload and the row writes too); it runs every other stage on one worker.
SPREAD_STEPS = ("ListImages/ReadPages", "FetchDetails", "PruneImages/Prune")


def build_pipeline(p: beam.Pipeline, checked: preflight.Checked, context: ImportContext,
                   opts: ImportOptions, shards: int, retry_ids: list[str] | None = None) -> None:
    if retry_ids is None:
        listed = (p | "Project" >> beam.Create([checked.listing])
                  | "ListImages" >> ListImages(checked.roboflow, context))
    else:  # --retry_dead_letters: exactly the images an earlier run could not import
        listed = {"ok": (p | "DeadLetterIds" >> beam.Create([ListedImage(i) for i in retry_ids])
                         | "CountListed" >> beam.Map(count_listed)),
                  DEAD_LETTER: (p | "NoListing" >> beam.Create([]),)}
    batches = listed["ok"] | "BatchImages" >> BatchImages(opts.batch_size, shards)
    # The details pool holds a task per API call Little's law may let in flight (4 x 20 = 80 >= 64).
    details = batches | "FetchDetails" >> FetchDetails(checked.roboflow, context, concurrency_of(opts),
                                                       checked.supabase)
    stored = details["ok"] | "UploadImages" >> UploadImages(checked.roboflow, checked.supabase, context,
                                                            concurrency_of(opts))
    written = stored["ok"] | "WriteRows" >> WriteRows(checked.supabase, context)
    (
        (*listed[DEAD_LETTER], *details[DEAD_LETTER], *stored[DEAD_LETTER], *written[DEAD_LETTER])
        | "CollectDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(opts.dead_letter_path)
    )
    if checked.prune:  # after a complete listing only; see transforms/prune.py
        ({"listed": listed["ok"] | "ListedIds" >> beam.Map(lambda image: image.image_id),
          "lost_pages": listed[DEAD_LETTER] | "ListingDeadLetters" >> beam.Flatten()}
         | "PruneImages" >> PruneImages(checked.supabase, context, checked.prune, checked.listing.total))


# The summary's figures kept with the finished run in od_import_runs.summary.
RUN_RECORD = ("listed", "imported", "new", "changed", "unchanged", "failed", "complete", "details", "seconds")


def record_finish(checked: preflight.Checked, run: runs.Run, summary: dict) -> None:
    """Mark the run finished; if Supabase cannot be told, the rows stand and the next run resumes this one."""
    try:
        with target.target_client(checked) as sb:
            runs.finish_run(sb, run, {k: summary[k] for k in RUN_RECORD})
    except Exception as exc:
        log.warning("could not mark run %s finished (%s); the next run of this source resumes it", run.id, redact(exc))
        summary["run"]["finish_recorded"] = False


def run_facts(run: runs.Run, change_detection: str) -> dict:
    return {"id": run.id, "name": run.name, "resumed": run.resuming, "attempt": run.attempts,
            "change_detection": change_detection}


def images_to_retry(directory: str) -> list[str]:
    """The image ids of an earlier run's dead letters; read before this run replaces them."""
    letters = read_dead_letters(directory)
    if not letters:
        raise InputError(f"no dead letters under {directory}; check --retry_dead_letters (it takes the earlier "
                         "run's --dead_letter_path)")
    if any(letter.step == "list" for letter in letters):
        raise InputError(f"the run that wrote {directory} lost listing pages, so its dead letters do not name "
                         "every missing image; run the full import again instead of --retry_dead_letters")
    return sorted({letter.image_id for letter in letters})


def runner_settings(options: ParsedOptions) -> tuple[str, int]:
    """Pin the local runner (FnApiRunner, several threads) unless told otherwise; refuse the traps.

    Returns the runner's name and how many worker processes share ``--roboflow_rate_limit``.
    ``--direct_num_workers`` defaults to 1 in Beam, so only ``options.given`` tells "not given" from 1.
    """
    standard = options.pipeline.view_as(StandardOptions)
    direct = options.pipeline.view_as(DirectOptions)
    if standard.runner is None:
        standard.runner = "FnApiRunner"
    name = str(standard.runner).rsplit(".", 1)[-1].lower()
    if name in REFUSED_RUNNERS:
        raise InputError(f"--runner={standard.runner} cannot run this pipeline reliably (Beam 2.77's DirectRunner "
                         "first downloads the Prism runner, and its legacy runner fails splittable DoFns); "
                         "use --runner=FnApiRunner (the default) or DataflowRunner")
    if name == "fnapirunner":
        flush_whole_elements_only()
        if "direct_num_workers" not in options.given:
            direct.direct_num_workers = LOCAL_WORKERS
        if direct.direct_running_mode == "in_memory":
            direct.direct_running_mode = "multi_threading"
        processes = direct.direct_num_workers if direct.direct_running_mode == "multi_processing" else 1
        return name, processes
    if name == "dataflowrunner":  # the job's SDK processes, each with its share of the rate limit
        return name, launch.check_dataflow(options.pipeline)
    return name, 1


def flush_whole_elements_only() -> None:
    """Turn off the local runner's timed data-plane flush, a Beam 2.77 race that failed about one local import
    in 20-30 with ``NotImplementedError: Invalid PaneInfoEncoding: 3`` (or 6).

    In its gRPC modes the FnApiRunner and its SDK workers buffer a bundle's output in a stream that a
    thread flushes every second (``DATA_BUFFER_TIME_LIMIT_MS``; 0 in an environment's config falls back
    to it) without waiting for the element being encoded, so a chunk can end inside an element. The runner
    then deals a stage's chunks out to the 16 workers and each decodes its own: half an element fails.
    Reproduced with Beam's stream alone: 300,000 listed ids encoded under a 1 ms flush came out in ~3,100
    chunks, ~330 of which did not decode on their own (all decoded joined). With 0, every stream flushes by
    size after a whole element, or at the bundle's end; the runner runs one stage at a time, so nothing
    waited for the timed flush. Process-wide, and Beam's own setting, so it holds for every local run."""
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


class Outcome(NamedTuple):
    code: int
    summary: dict
    summary_path: str


def execute(options: ParsedOptions, progress_callback: Callable[[Progress], object] | None = None) -> Outcome:
    """The import, shared by the command line (:func:`run`) and the Python API (pipeline/import_worker.py),
    each of which parsed its options once (pipeline/validation.py).

    Raises :class:`InputError` before anything is written and prints nothing on stdout. The
    progress line goes to stderr unless ``--quiet``; ``progress_callback(Progress)`` is called as
    images complete (pipeline/progress.py) and once at the end.
    """
    started = time.monotonic()
    opts = options.importer
    if plan.requested(options):  # run() answers these before execute(); here they would write
        raise InputError("--plan only prints a plan, from the command line (python -m pipeline.main --plan ...); "
                         "this call imports, so leave --plan out of its arguments")
    if not opts.progress_interval > 0:  # also NaN
        raise InputError(f"--progress_interval must be a positive number of seconds (got {opts.progress_interval}); "
                         "omit it for the default 10")
    runner, processes = runner_settings(options)
    retry_ids = images_to_retry(opts.retry_dead_letters) if opts.retry_dead_letters else None
    checked = preflight.check(opts, workers=processes)
    if retry_ids is not None:
        checked = dataclasses.replace(checked, listing=dataclasses.replace(checked.listing, total=len(retry_ids)))
    class_ids = target.prepare_target(checked)
    with target.target_client(checked) as sb:
        run = runs.start_run(sb, checked.dataset_id, runs.source_of(checked.workspace, checked.project),
                             runs.scope_of(checked.selection, retry_ids is not None), opts.run_id,
                             opts.change_detection)
    context = ImportContext(
        dataset_id=checked.dataset_id, workspace=checked.workspace, project=checked.project,
        version=checked.version, bucket=checked.supabase.bucket, class_ids=class_ids,
        max_object_bytes=checked.max_object_bytes, skeletons=checked.skeletons,
        allowed_mime_types=checked.allowed_mime_types, tables=checked.tables,
        multilabel=bool(checked.project_type and checked.project_type.multilabel),
        bucket_public=checked.supabase.bucket_public, run_id=run.id, resuming=run.resuming,
        change_detection=opts.change_detection)
    direct_workers = options.pipeline.view_as(DirectOptions).direct_num_workers
    shards = opts.shards or 4 * max(LOCAL_WORKERS, direct_workers or 1, processes)
    remove_dead_letters(opts.dead_letter_path)
    log.info("importing %s/%s (%d images reported) into dataset %s with %s, run %s%s",
             checked.workspace, checked.project, checked.listing.total, checked.dataset_id, runner, run.id,
             f" (resumed, attempt {run.attempts})" if run.resuming else "")

    # Every DoFn in this process: the live progress line (pipeline/progress.py), and the local runner's policy
    # (with multi_processing, Beam's runner as it is: the policy is measured on threads only).
    live = runner == "fnapirunner" and processes == 1
    pipeline = beam.Pipeline(runner=LocalRunner(SPREAD_STEPS) if live else None, options=options.pipeline)
    build_pipeline(pipeline, checked, context, opts, shards, retry_ids)
    if not live:
        log.info("no live progress line with %s; watch the %s counters images_written, images_unchanged and "
                 "images_failed in the runner's monitoring", runner, NAMESPACE)
    tracker = ProgressTracker(checked.listing.total)
    reporter = ProgressReporter(tracker, stream=None if opts.quiet else sys.stderr, interval=opts.progress_interval,
                                callback=progress_callback, live=live)
    set_progress_sink(tracker.add if live else None)
    clear_account_stops()
    try:
        with reporter:
            result = pipeline.run()
            result.wait_until_finish()

            target.refresh_counters(checked)
            summary = build_summary(counters_of(result), checked=checked, seconds=time.monotonic() - started,
                                    dead_letter_files=dead_letter_files(opts.dead_letter_path),
                                    run=run_facts(run, opts.change_detection))
            record_finish(checked, run, summary)
            write_summary(opts.summary_path, summary)
            reporter.finish(final_progress(summary, tracker))
    finally:
        set_progress_sink(None)
    if summary["stopped"]:  # Roboflow refused the account mid-run: not finished, whatever got in
        return Outcome(EXIT_FATAL, summary, opts.summary_path)
    return Outcome(EXIT_OK if summary["complete"] else EXIT_INCOMPLETE, summary, opts.summary_path)


def configure_logging() -> None:
    """Redacted logs; library chatter at WARNING so one-line errors are not buried."""
    install_log_redaction()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    for chatty in ("httpx", "httpcore"):  # every HTTP request at INFO (the root logger is at INFO)
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # On Dataflow: the job id, the console link and state changes, which the user watches.
    logging.getLogger("apache_beam.runners.dataflow").setLevel(logging.INFO)


def run(argv: list[str] | None = None) -> int:
    configure_logging()
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return EXIT_OK
    try:
        options = validation.parse_command_line(argv)  # the one parse
        if plan.requested(options):  # --plan: reads only, prints what the import would do (pipeline/plan.py)
            return plan.run_plan(options)
        outcome = execute(options)
    except InputError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_INPUT
    print(render(outcome.summary))
    print(f"summary: {outcome.summary_path}")
    line = stop_line(outcome.summary)
    if line:
        print(f"error: {redact(line)}", file=sys.stderr)
    return outcome.code


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:
        code = EXIT_FATAL
    except Exception as exc:  # one redacted line for a person, the traceback only in debug logs
        log.debug("fatal error", exc_info=True)
        print(f"error: {type(exc).__name__}: {redact(exc)}", file=sys.stderr)
        code = EXIT_FATAL
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the command without Python's finalization: it tore down Beam's gRPC servers and channels and
    the runner's threads for 0.35-0.55 s after every import, once everything was written and said (stage
    trace of 2,000- and 5,000-image runs). The summary file and the dead letters are closed by now; the
    streams and the log handlers are flushed here. Only the command exits so: ``run()``, which the
    platform calls in its own process, returns."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not turn the exit code into a traceback
            stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
