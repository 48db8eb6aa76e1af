"""Throughput benchmark: the importer at Roboflow's rate limit, next to the two ways users import without it.

    .venv/bin/python bench/throughput.py --images 5000              # the reference workload (issue 5)
    .venv/bin/python bench/throughput.py --images 20000 --baselines none
    .venv/bin/python bench/throughput.py --images 5000 --adaptive    # the limit is not given to the importer
    .venv/bin/python bench/throughput.py --images 5000 --unthrottled --profile
    .venv/bin/python bench/throughput.py --matrix --images 2000  # limit shapes, limit not given (issue 12)
    .venv/bin/python bench/throughput.py --matrix --images 2000 --cases "imports at once"  # N importers, one key

Starts the Roboflow emulator (rate limit, latencies and image sizes from the flags) and the local Supabase
stack as their own processes, runs ``python -m pipeline.main`` against them as a third process, and
watches it from outside: wall time, rows landing in ``od_dataset_images`` (time to first row, steady-state
images/s between 10 % and 90 % of the rows), peak RSS of its process tree, its CPU seconds, and the
emulator's request counters (Roboflow API calls per image, 429s). Then, against the same emulator and
stack, the baselines of ``bench/baselines.py``: (a) the serial SDK script and (b) the ZIP export path,
each on a sample of images whose per-image cost is projected to N (said so in the table).

The lower bound is N·(1 + 1/250)/R seconds: one details call per image plus one 250-image listing page
per 250 images, at R requests per second. Prints a table, writes JSON under ``bench/results/``. Exits
non-zero only when something could not run (a stand-in did not start, the importer crashed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PAGE_SIZE = 250
API_ROUTES = ("root", "workspace", "project", "version", "export", "search", "search_v1", "image_details",
              "unknown_route")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def bound_seconds(images: int, rate: float | None) -> float | None:
    """No importer can beat this: one details call per image plus one listing page per 250, at R calls/s."""
    return images * (1 + 1 / PAGE_SIZE) / rate if rate else None


def steady_rate(samples: list[tuple[float, int]], final_rows: int) -> float | None:
    """Images/s between the moments 10 % and 90 % of the final rows had landed (start-up and tail excluded)."""
    if final_rows < 10:
        return None
    low, high = 0.1 * final_rows, 0.9 * final_rows
    t_low = next((t for t, rows in samples if rows >= low), None)
    first_high = next(((t, rows) for t, rows in samples if rows >= high), None)
    rows_low = next((rows for t, rows in samples if rows >= low), None)
    if t_low is None or first_high is None or first_high[0] <= t_low:
        return None
    return (first_high[1] - rows_low) / (first_high[0] - t_low)


# -- processes -------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(_children(current))
    return tree


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a live tree so far, including its reaped children (utime + stime + cutime + cstime)."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


class StandIn:
    """A stand-in started as its own process; it prints one JSON line once it serves."""

    def __init__(self, name: str, argv: list[str], log_dir: Path):
        self.name = name
        self.log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([PYTHON, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} did not start; see {self.log.name}")
        self.info = json.loads(line)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


class Watcher(threading.Thread):
    """Samples a process tree's RSS and the dataset's row count until stopped."""

    def __init__(self, pid: int, count_rows, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.count_rows, self.interval = pid, count_rows, interval
        self.started = time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self.rss_samples: list[tuple[float, int]] = []
        self.peak_rss = 0
        self.first_row_at: float | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = tree_rss_bytes(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            self.rss_samples.append((time.monotonic() - self.started, rss))
            try:
                rows = self.count_rows()
            except requests.RequestException:
                rows = None
            now = time.monotonic() - self.started
            if rows is not None:
                self.samples.append((now, rows))
                if rows and self.first_row_at is None:
                    self.first_row_at = now
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# -- the benchmark ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    images: int
    rate_limit: float | None
    api_latency_ms: float
    cdn_latency_ms: float
    image_kb: tuple[int, int]
    adaptive: bool
    export_size_ratio: float = 1.0
    seed: int = 5
    emulator_flags: tuple[str, ...] = ()  # the limit's shape (burst, Retry-After, changes, random 429s)


class Bench:
    def __init__(self, workload: Workload, workdir: Path):
        self.workload = workload
        self.workdir = workdir
        self.keys = {way: f"rf_bench_{way}_{uuid.uuid4().hex[:10]}" for way in ("pipeline", "sdk", "zip")}
        self.emulator: StandIn | None = None
        self.stack: StandIn | None = None

    def __enter__(self) -> Bench:
        w = self.workload
        argv = ["-m", "pipeline.testing.roboflow_emulator", "--images", str(w.images), "--seed", str(w.seed),
                "--api-key", self.keys["pipeline"], "--extra-api-keys", f"{self.keys['sdk']},{self.keys['zip']}",
                "--image-kb-min", str(w.image_kb[0]), "--image-kb-max", str(w.image_kb[1]), "--versions", "1",
                "--api-latency-ms", str(w.api_latency_ms), "--cdn-latency-ms", str(w.cdn_latency_ms),
                "--export-size-ratio", str(w.export_size_ratio)]
        if w.rate_limit:
            argv += ["--rate-limit", str(w.rate_limit)]
        argv += list(w.emulator_flags)
        self.emulator = StandIn("emulator", argv, self.workdir)
        self.stack = StandIn("supabase", ["-m", "pipeline.testing.supabase_stack", "--bucket", "od-images",
                                          "--bucket", "baseline-sdk", "--bucket", "baseline-zip"], self.workdir)
        self.rest = requests.Session()
        key = self.stack.info["service_role_key"]
        self.rest.headers.update({"apikey": key, "Authorization": f"Bearer {key}"})
        return self

    def __exit__(self, *exc) -> None:
        for stand_in in (self.emulator, self.stack):
            if stand_in is not None:
                stand_in.stop()

    @property
    def api_url(self) -> str:
        return self.emulator.info["api_url"]

    def new_dataset(self, name: str) -> str:
        dataset_id = str(uuid.uuid4())
        response = self.rest.post(f"{self.stack.info['url']}/rest/v1/od_datasets", json={"id": dataset_id,
                                                                                         "name": name})
        response.raise_for_status()
        return dataset_id

    def count_rows(self, dataset_id: str) -> int:
        response = self.rest.get(f"{self.stack.info['url']}/rest/v1/od_dataset_images",
                                 params={"dataset_id": f"eq.{dataset_id}", "select": "image_id", "limit": "1"},
                                 headers={"Prefer": "count=exact"}, timeout=10)
        response.raise_for_status()
        return int(response.headers["Content-Range"].rsplit("/", 1)[1])

    def emulator_counters(self) -> dict[str, int]:
        return requests.get(f"{self.api_url}/__emulator/counters", timeout=10).json()

    def emulator_timeline(self) -> list[dict[str, float]]:
        return requests.get(f"{self.api_url}/__emulator/timeline", timeout=10).json()

    def reset_emulator_counters(self) -> None:
        requests.delete(f"{self.api_url}/__emulator/counters", timeout=10).raise_for_status()

    def stand_in_cpu(self) -> float:
        return self.emulator.cpu_seconds() + self.stack.cpu_seconds()

    def run_pipeline(self, extra: list[str], profile: Path | None, imports: int = 1) -> dict[str, Any]:
        """``imports`` importer processes at once on the one key, each importing the project into its own
        dataset: independent processes with full demand, as Dataflow's workers or the platform's concurrent
        imports are. Rows, calls and dead letters are their totals; the wall time is the last one's."""
        w = self.workload
        datasets = [self.new_dataset(f"bench pipeline {i}") for i in range(imports)]
        outs = [self.workdir / ("pipeline" if i == 0 else f"pipeline-{i}") for i in range(imports)]
        logs = [self.workdir / ("pipeline.log" if i == 0 else f"pipeline-{i}.log") for i in range(imports)]
        commands = []
        for dataset_id, out in zip(datasets, outs, strict=True):
            argv = ["-m", "pipeline.main", "--roboflow_workspace", "demo-ws", "--roboflow_project", "demo-project",
                    "--roboflow_api_url", self.api_url, "--supabase_url", self.stack.info["url"],
                    "--dataset_id", dataset_id, "--class_mapping", "auto", "--dead_letter_path", str(out / "dead"),
                    "--summary_path", str(out / "summary.json"), *extra]
            if w.rate_limit and not w.adaptive:
                argv += ["--roboflow_rate_limit", str(w.rate_limit)]
            commands.append([PYTHON, *argv])
        if profile is not None:
            commands[0] = [str(Path(PYTHON).parent / "py-spy"), "record", "--gil", "--format", "raw", "--rate", "50",
                           "--output", str(profile), "--nonblocking", "--", *commands[0]]
        env = {**os.environ, "ROBOFLOW_API_KEY": self.keys["pipeline"],
               "SUPABASE_SERVICE_ROLE_KEY": self.stack.info["service_role_key"]}

        def count_rows() -> int:
            return sum(self.count_rows(dataset_id) for dataset_id in datasets)

        self.reset_emulator_counters()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        stand_in_cpu_before = self.stand_in_cpu()
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(log, "w")) for log in logs]
            processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=file, stderr=subprocess.STDOUT)
                         for command, file in zip(commands, files, strict=True)]
            watcher = Watcher(processes[0].pid, count_rows)  # RSS: the first importer's tree
            watcher.started = started
            watcher.start()
            try:
                codes = [process.wait() for process in processes]
            finally:  # interrupted: the importers must not outlive the benchmark
                for process in processes:
                    if process.poll() is None:
                        process.terminate()
                        process.wait()
            wall = time.monotonic() - started
            watcher.stop()
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        counters = self.emulator_counters()
        rows = count_rows()
        summaries = [json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
                     for out in outs]
        api_calls = sum(counters.get(route, 0) for route in API_ROUTES)
        return {
            "exit_code": max(codes, key=lambda code: (code != 0, code)),
            "wall_seconds": wall,
            "rows": rows,
            "steady_images_per_s": steady_rate(watcher.samples, rows),
            "mean_images_per_s": rows / wall if wall else None,
            "time_to_first_row_s": watcher.first_row_at,
            "api_calls": api_calls,
            "api_calls_per_image": api_calls / rows if rows else None,
            "api_429s": counters.get("status:429", 0),
            "details_calls": counters.get("image_details", 0),
            "listing_calls": counters.get("search", 0) + counters.get("search_v1", 0),
            "cdn_downloads": counters.get("cdn_original", 0),
            "importer_retries": summaries[0].get("retries", {}),
            "dead_letters": None if any(not s for s in summaries) else sum(s.get("failed") or 0 for s in summaries),
            "peak_rss_mb": watcher.peak_rss / 2**20,
            "cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
            "stand_in_cpu_seconds": self.stand_in_cpu() - stand_in_cpu_before,
            "log": str(logs[0]),
            "row_samples": [(round(t, 2), n) for t, n in watcher.samples],
            "rss_mb_samples": [(round(t, 2), round(b / 2**20, 1)) for t, b in watcher.rss_samples],
        }

    def run_baseline(self, way: str, images: int) -> dict[str, Any]:
        dataset_id = self.new_dataset(f"bench baseline {way}")
        env = {**os.environ, "API_URL": self.api_url, "ROBOFLOW_API_KEY": self.keys[way],
               "SUPABASE_SERVICE_ROLE_KEY": self.stack.info["service_role_key"],
               "ROBOFLOW_CONFIG_DIR": str(self.workdir / f"roboflow-{way}.json"), "HOME": str(self.workdir)}
        argv = [PYTHON, str(ROOT / "bench" / "baselines.py"), way, "--workspace", "demo-ws", "--project",
                "demo-project", "--version", "1", "--supabase_url", self.stack.info["url"], "--dataset_id",
                dataset_id, "--bucket", f"baseline-{way}", "--images", str(images)]
        done = subprocess.run(argv, cwd=self.workdir, env=env, capture_output=True, text=True)
        (self.workdir / f"baseline-{way}.log").write_text(done.stdout + done.stderr)
        results = [line[len("RESULT "):] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            raise RuntimeError(f"baseline {way} failed; see {self.workdir / f'baseline-{way}.log'}")
        result = json.loads(results[-1])
        result["rows"] = self.count_rows(dataset_id)
        per_image = result["per_image_seconds"] / max(1, result["images"])
        listing = result["listing_seconds"]
        if way == "sdk":  # listing a sample costs its pages; the whole project costs N/250 of them
            listing *= max(1.0, self.workload.images / max(1, result["listed"]))
        result["projected_seconds"] = listing + per_image * self.workload.images
        return result


# -- report ----------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(workload: Workload, pipeline: dict, baselines: dict[str, dict]) -> str:
    bound = bound_seconds(workload.images, workload.rate_limit)
    rate = workload.rate_limit
    limit = f"R={_fmt(rate, 0)} req/s" if rate else "no rate limit"
    if workload.adaptive:
        limit += " (not told to the importer)"
    rows = [
        ("workload", f"{workload.images} images, {workload.image_kb[0]}-{workload.image_kb[1]} KB, {limit}, "
                     f"API {workload.api_latency_ms:g} ms, CDN {workload.cdn_latency_ms:g} ms, "
                     f"export images {workload.export_size_ratio:g}x the originals' bytes"),
        ("importer exit code", pipeline["exit_code"]),
        ("rows in od_dataset_images", pipeline["rows"]),
        ("wall time (s)", _fmt(pipeline["wall_seconds"])),
        ("bound N(1+1/250)/R (s)", _fmt(bound)),
        ("wall - bound (s)", _fmt(pipeline["wall_seconds"] - bound if bound else None)),
        ("bound / wall", _fmt(bound / pipeline["wall_seconds"] if bound else None, 3)),
        ("steady state (images/s)", _fmt(pipeline["steady_images_per_s"])),
        ("steady state / R", _fmt(pipeline["steady_images_per_s"] / rate
                                  if rate and pipeline["steady_images_per_s"] else None, 3)),
        ("mean (images/s)", _fmt(pipeline["mean_images_per_s"])),
        ("time to first row (s)", _fmt(pipeline["time_to_first_row_s"])),
        ("Roboflow API calls", pipeline["api_calls"]),
        ("  details / listing", f"{pipeline['details_calls']} / {pipeline['listing_calls']}"),
        ("  answered 429", pipeline["api_429s"]),
        ("API calls per image", _fmt(pipeline["api_calls_per_image"], 4)),
        ("importer retries", ", ".join(f"{k} {v}" for k, v in sorted(pipeline["importer_retries"].items()))
         or "0"),
        ("dead letters", pipeline["dead_letters"]),
        ("peak RSS, importer tree (MB)", _fmt(pipeline["peak_rss_mb"], 0)),
        ("CPU, importer (s)", _fmt(pipeline["cpu_seconds"])),
        ("CPU, stand-ins (s)", _fmt(pipeline["stand_in_cpu_seconds"])),
    ]
    for way, label in (("sdk", "(a) serial SDK"), ("zip", "(b) ZIP export")):
        result = baselines.get(way)
        if not result:
            continue
        rows += [
            (f"{label}: images measured", f"{result['images']} (rows {result['rows']})"),
            (f"{label}: measured (s)", _fmt(result["seconds"])),
            (f"{label}: projected to N (s)", _fmt(result["projected_seconds"])),
            (f"{label} / importer", _fmt(result["projected_seconds"] / pipeline["wall_seconds"], 2) + "x"),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def profile_table(raw: Path, top: int = 20) -> str:
    """Where the importer's Python time went: py-spy's samples of the thread holding the GIL (one process
    runs its Python one thread at a time), by innermost function and by package."""
    by_function: dict[str, int] = {}
    by_package: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        by_function[leaf] = by_function.get(leaf, 0) + n
        by_package[_package(leaf)] = by_package.get(_package(leaf), 0) + n
    lines = [f"on-CPU samples: {total}", "", "by package of the innermost frame:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in sorted(by_package.items(), key=lambda kv: -kv[1])]
    lines += ["", f"top {top} innermost functions:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}"
              for name, n in sorted(by_function.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def _package(frame: str) -> str:
    """'fn (httpcore/_sync/http11.py:12)' -> 'httpcore'; our code as 'ours: transforms'; single files as is."""
    location = frame.rsplit("(", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    top = location.split("/", 1)[0] if "/" in location else location
    return f"ours: {top}" if top in ("transforms", "pipeline") else top or "native"


# -- the rate-limit matrix (issue 12): limit shapes the importer is not told about -----------------------


@dataclasses.dataclass(frozen=True)
class LimitCase:
    name: str
    rate: float
    flags: tuple[str, ...] = ()
    api_latency_ms: float = 50.0
    importer: tuple[str, ...] = ()
    noise: float = 0.0  # random 429s on top of the limit
    hard: bool = False  # pictured in the README
    imports: int = 1  # importer processes at once on the key, each importing the whole project


MATRIX = (
    LimitCase("50/s, 1 s burst, Retry-After on all", 50,
              ("--rate-limit-burst-s", "1", "--rate-limit-retry-after", "all")),
    LimitCase("100/s, 0.1 s burst, no Retry-After, 100 ms", 100, ("--rate-limit-retry-after", "none"), 100.0),
    LimitCase("50/s + 10% random 429s", 50, ("--throttle-rate", "0.1"), noise=0.1, hard=True),
    LimitCase("100/s dropping to 30/s after 1,000 calls", 100,
              ("--rate-limit-change-per-s", "30", "--rate-limit-change-after-calls", "1000"), 100.0, hard=True),
    LimitCase("30/s rising to 100/s after 600 calls", 30,
              ("--rate-limit-change-per-s", "100", "--rate-limit-change-after-calls", "600"), 100.0),
    LimitCase("100/s, 10 s burst, 150 ms", 100, ("--rate-limit-burst-s", "10"), 150.0),
    LimitCase("100/s, 300 ms", 100, (), 300.0, hard=True),
    LimitCase("50/s, 2 processes on one key", 50, (), 50.0,
              ("--direct_running_mode=multi_processing", "--direct_num_workers=2")),
    LimitCase("50/s, 4 processes on one key", 50, (), 50.0,
              ("--direct_running_mode=multi_processing", "--direct_num_workers=4"), hard=True),
    LimitCase("50/s dropping to 20/s after 1,500 calls, 4 processes on one key", 50,
              ("--rate-limit-change-per-s", "20", "--rate-limit-change-after-calls", "1500"), 50.0,
              ("--direct_running_mode=multi_processing", "--direct_num_workers=4")),
    LimitCase("50/s, 2 imports at once on one key", 50, (), 50.0, imports=2),
    LimitCase("100/s, 4 imports at once on one key", 100, (), 100.0, imports=4),
)


def case_figures(case: LimitCase, pipeline: dict, timeline: list[dict]) -> dict[str, Any]:
    """The matrix's columns from the importer's run and the emulator's per-second timeline."""
    figures: dict[str, Any] = {"exit_code": pipeline["exit_code"], "dead_letters": pipeline["dead_letters"],
                               "rows": pipeline["rows"], "wall_s": pipeline["wall_seconds"],
                               "whole_run_img_s": pipeline["mean_images_per_s"],
                               "share_429": pipeline["api_429s"] / max(1, pipeline["api_calls"])}
    if not timeline:
        return figures
    seconds = len(timeline)
    figures["api_seconds"] = seconds
    figures["api_run_img_s"] = pipeline["rows"] / seconds  # from the first Roboflow call: Beam's start-up left out
    # The whole-run target (>= 0.85): rows over the whole wall time against what the limit in force let
    # through on average while the importer called, less the random 429s' share.
    available = sum(s["limit"] for s in timeline) / seconds * (1.0 - case.noise)
    figures["whole_of_limit"] = pipeline["mean_images_per_s"] / available
    changes = [s["t"] for prev, s in zip(timeline, timeline[1:], strict=False) if s["limit"] != prev["limit"]]
    change = changes[0] if changes else None
    # Steady: after the first 10 s (and 10 s after a change), before the last 10 % of the run.
    quiet = [s for s in timeline if 10 <= s["t"] < 0.9 * seconds
             and (change is None or not change <= s["t"] < change + 10)]
    if quiet:
        figures["steady_of_limit"] = sum(s["passed"] for s in quiet) / sum(s["limit"] for s in quiet)
    if change is not None:
        figures["change_at_s"] = change
        after = [s for s in timeline if s["t"] >= change]
        rose = after and after[0]["limit"] > timeline[0]["limit"]
        for i in range(len(after)):
            # A drop: the first second from which 3 s running hold <= 5 % 429s (noise excluded). A rise: the
            # first from which 3 s running get >= 0.9 of the new limit through.
            window = after[i:i + 3]
            calls = sum(s["passed"] + s["limited"] for s in window)
            if len(window) < 3 or not calls:
                continue
            if (sum(s["passed"] for s in window) >= 0.9 * sum(s["limit"] for s in window) if rose
                    else sum(s["limited"] for s in window) / calls <= 0.05):
                figures["converged_after_change_s"] = window[0]["t"] - change
                break
    return figures


def plot_case(case: LimitCase, figures: dict, timeline: list[dict], path: Path) -> None:
    import matplotlib  # a dev dependency: only the benchmark draws

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    t = [s["t"] for s in timeline]
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    ax.step(t, [s["limit"] for s in timeline], where="post", color="black", lw=1.5, label="limit enforced")
    ax.plot(t, [s["passed"] + s["limited"] for s in timeline], color="tab:blue", lw=1, label="sent by the importer")
    ax.plot(t, [s["passed"] for s in timeline], color="tab:green", lw=1, label="let through")
    ax.bar(t, [s["limited"] for s in timeline], width=1.0, color="tab:red", alpha=0.6, label="answered 429 (limit)")
    ax.set_xlabel("seconds since the first Roboflow call")
    ax.set_ylabel("API calls / s")
    ax.set_title(f"{case.name}: 429 share {figures['share_429']:.1%}, dead letters {figures['dead_letters']}, "
                 f"steady {figures.get('steady_of_limit', 0):.2f} of the limit", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_matrix(args, importer_args: list[str]) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = ROOT / "bench" / "results" / f"ratelimit-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    # A comma that a space or a digit follows is part of a name ("50/s, 4 processes", "after 1,500 calls").
    wanted = re.split(r",(?![ \d])", args.cases) if args.cases else []
    cases = [c for c in MATRIX if not wanted or any(k in c.name for k in wanted)]
    results = []
    seed_flags = ("--fault-seed", str(args.fault_seed)) if args.fault_seed is not None else ()
    for number, case in enumerate(cases, 1):
        workload = Workload(images=args.images, rate_limit=case.rate, api_latency_ms=case.api_latency_ms,
                            cdn_latency_ms=args.cdn_latency_ms, image_kb=tuple(args.image_kb), adaptive=True,
                            emulator_flags=(*case.flags, *seed_flags))
        workdir = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
        load = os.getloadavg()[0]
        try:
            with Bench(workload, workdir) as bench:
                pipeline = bench.run_pipeline([*case.importer, *importer_args], None, case.imports)
                timeline = bench.emulator_timeline()
        except (RuntimeError, OSError, requests.RequestException) as exc:
            print(f"{case.name}: could not run: {exc}", file=sys.stderr)
            return 1
        figures = {**case_figures(case, pipeline, timeline), "load_1min_before": load}
        picture = out_dir / f"case{number}.png"
        plot_case(case, figures, timeline, picture)
        results.append({"case": dataclasses.asdict(case), "figures": figures, "timeline": timeline,
                        "picture": str(picture), "log": pipeline["log"]})
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
        print(f"{case.name}: {json.dumps(shown)}", flush=True)
    (out_dir / "matrix.json").write_text(json.dumps(results, indent=2))
    print()
    print(matrix_table(results))
    print(f"\npictures and json: {out_dir}")
    return 0 if all(r["figures"]["exit_code"] == 0 for r in results) else 3


def matrix_table(results: list[dict]) -> str:
    head = ("| limit shape (not given to the importer) | API latency | exit | dead letters | whole-run img/s "
            "(from 1st API call) | whole-run / limit | steady / limit | 429 share | converged after change | load |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        c, f = r["case"], r["figures"]
        conv = f.get("converged_after_change_s")
        converged = "-" if "change_at_s" not in f else f"{conv:.0f} s" if conv is not None else "not in the run"
        noise = f" (random {c['noise']:.0%})" if c["noise"] else ""
        lines.append(
            f"| {c['name']} | {c['api_latency_ms']:g} ms | {f['exit_code']} | {f['dead_letters']} | "
            f"{_fmt(f['whole_run_img_s'])} ({_fmt(f.get('api_run_img_s'))}) | "
            f"{_fmt(f.get('whole_of_limit'), 2)} | {_fmt(f.get('steady_of_limit'), 2)} | "
            f"{100 * f['share_429']:.1f}%{noise} | {converged} | {f['load_1min_before']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rate-limit", type=float, default=100.0, help="emulator requests/s per key")
    parser.add_argument("--api-latency-ms", type=float, default=100.0)
    parser.add_argument("--cdn-latency-ms", type=float, default=50.0)
    parser.add_argument("--image-kb", type=int, nargs=2, default=(100, 300), metavar=("MIN", "MAX"))
    parser.add_argument("--unthrottled", action="store_true",
                        help="no rate limit and 10 ms latencies: the importer's own ceiling")
    parser.add_argument("--adaptive", action="store_true", help="do not tell the importer the rate limit")
    parser.add_argument("--baselines", default="sdk,zip", help="comma list of sdk, zip, or 'none'")
    parser.add_argument("--sdk-images", type=int, default=300, help="images the serial SDK baseline imports")
    parser.add_argument("--zip-images", type=int, default=None,
                        help="images the ZIP baseline uploads after downloading the whole export (default: all)")
    parser.add_argument("--export-size-ratio", type=float, default=1.0,
                        help="bytes of an exported image per byte of its original (0: no picture content)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the importer with py-spy (the thread holding the GIL)")
    parser.add_argument("--matrix", action="store_true",
                        help="run the rate-limit matrix (limit shapes, limit not given); one PNG per case")
    parser.add_argument("--cases", default=None, help="with --matrix: comma list of substrings of case names (a comma "
                        "followed by a space or a digit belongs to the name)")
    parser.add_argument("--fault-seed", type=int, default=None,
                        help="with --matrix: the emulator's fault seed (its random 429s are one fixed draw otherwise)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/throughput-<time>.json")
    args, importer_args = parser.parse_known_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind, so the stand-ins and importer stop too
    if args.matrix:
        return run_matrix(args, importer_args)

    workload = Workload(images=args.images, rate_limit=None if args.unthrottled else args.rate_limit,
                        api_latency_ms=10.0 if args.unthrottled else args.api_latency_ms,
                        cdn_latency_ms=10.0 if args.unthrottled else args.cdn_latency_ms,
                        image_kb=tuple(args.image_kb), adaptive=args.adaptive,
                        export_size_ratio=args.export_size_ratio)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ways = [] if args.baselines == "none" else [w for w in args.baselines.split(",") if w]
    profile = workdir / "profile.txt" if args.profile else None
    try:
        with Bench(workload, workdir) as bench:
            pipeline = bench.run_pipeline(importer_args, profile)
            baselines = {}
            for way in ways:
                images = args.sdk_images if way == "sdk" else (args.zip_images or args.images)
                baselines[way] = bench.run_baseline(way, min(images, args.images))
    except (RuntimeError, OSError, requests.RequestException) as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return 1
    print(table(workload, pipeline, baselines))
    if profile is not None and profile.exists():
        print()
        print(profile_table(profile))
    result_path = args.json or ROOT / "bench" / "results" / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps({"workload": dataclasses.asdict(workload), "bound_seconds": bound_seconds(
        workload.images, workload.rate_limit), "pipeline": pipeline, "baselines": baselines}, indent=2))
    print(f"\njson: {result_path}\nlogs: {workdir}")
    if pipeline["exit_code"] not in (0, 3):
        print(f"the importer failed (exit {pipeline['exit_code']}); see {pipeline['log']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
