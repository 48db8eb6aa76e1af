"""Resume and sync benchmark (issue 17): what a re-run costs after a kill, and a listing-mode sync.

    .venv/bin/python bench/resume_sync.py --images 5000

Against the stand-ins of bench/throughput.py (emulator at 100 requests/s per key with 429 above it,
100 ms API and 50 ms CDN latency; the local Supabase stack), each as its own process, it runs
``python -m pipeline.main`` as a third process:

1. a full import into dataset A (the reference wall time);
2. an import into dataset B killed with SIGKILL once half its rows are in, then the same command
   again: its details calls against the images left (target: at most left + 2 x batch size) and its
   wall time against the full import's (target: at most 0.6 x);
3. a sync of the unchanged dataset A with ``--change_detection listing`` (target: at most one
   Roboflow call per 200 images, wall at most 10 s), and with ``exact`` (today: one call per image);
4. 1 % of the images relabelled in Roboflow (7 boxes: more than the emulator ever generates, so the
   class counts change), then a listing sync: exactly those images fetched and re-imported.

Wall times include the importer's start-up (about 5 s of Beam). Prints a table, writes JSON under
``bench/results/``; exits 1 when a target is missed or something could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import API_ROUTES, PYTHON, ROOT, Bench, Workload  # noqa: E402

BATCH_SIZE = 50


def import_once(bench: Bench, dataset_id: str, name: str, *extra: str, kill_at: int | None = None) -> dict[str, Any]:
    """One importer process; with ``kill_at``, SIGKILL once that many rows are in. Returns its figures."""
    out = bench.workdir / name
    argv = ["-m", "pipeline.main", "--roboflow_workspace", "demo-ws", "--roboflow_project", "demo-project",
            "--roboflow_api_url", bench.api_url, "--supabase_url", bench.stack.info["url"], "--dataset_id",
            dataset_id, "--class_mapping", "auto", "--dead_letter_path", str(out / "dead"), "--summary_path",
            str(out / "summary.json"), "--roboflow_rate_limit", str(bench.workload.rate_limit), "--quiet",
            "--batch_size", str(BATCH_SIZE), *extra]
    env = {**os.environ, "ROBOFLOW_API_KEY": bench.keys["pipeline"],
           "SUPABASE_SERVICE_ROLE_KEY": bench.stack.info["service_role_key"]}
    bench.reset_emulator_counters()
    rows_before = bench.count_rows(dataset_id)
    started = time.monotonic()
    with open(bench.workdir / f"{name}.log", "w") as log:
        process = subprocess.Popen([PYTHON, *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if kill_at is not None:
                while process.poll() is None and bench.count_rows(dataset_id) < kill_at:
                    time.sleep(0.2)
                process.send_signal(signal.SIGKILL)
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.monotonic() - started
    counters = bench.emulator_counters()
    summary = json.loads((out / "summary.json").read_text()) if kill_at is None else {}
    return {
        "name": name,
        "exit_code": code,
        "wall_seconds": round(wall, 1),
        "rows_before": rows_before,
        "rows_after": bench.count_rows(dataset_id),
        "api_calls": sum(counters.get(route, 0) for route in API_ROUTES),
        "details_calls": counters.get("image_details", 0),
        "listing_calls": counters.get("search", 0) + counters.get("search_v1", 0),
        "api_429s": counters.get("status:429", 0),
        "summary": {k: summary.get(k) for k in ("listed", "new", "changed", "unchanged", "failed", "details", "run")},
    }


def plan_lines(bench: Bench, dataset_id: str, *extra: str) -> list[str]:
    """The ``--plan`` lines about details calls and the resume (the plan reads only)."""
    argv = ["-m", "pipeline.main", "--roboflow_workspace", "demo-ws", "--roboflow_project", "demo-project",
            "--roboflow_api_url", bench.api_url, "--supabase_url", bench.stack.info["url"], "--dataset_id",
            dataset_id, "--class_mapping", "auto", "--roboflow_rate_limit", str(bench.workload.rate_limit),
            "--plan", *extra]
    env = {**os.environ, "ROBOFLOW_API_KEY": bench.keys["pipeline"],
           "SUPABASE_SERVICE_ROLE_KEY": bench.stack.info["service_role_key"]}
    done = subprocess.run([PYTHON, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return [line for line in done.stdout.splitlines()
            if line.strip().startswith(("details calls", "resumes run", "time "))]


def relabel(bench: Bench, count: int) -> list[str]:
    """Give ``count`` images spread over the project 7 boxes of one class (their class counts change)."""
    import requests

    dataset = requests.get(f"{bench.api_url}/__emulator/dataset", timeout=30).json()
    ids, label = dataset["image_ids"], dataset["classes"][0]
    chosen = [ids[int(i * len(ids) / count)] for i in range(count)]
    boxes = [{"label": label, "x": 20 + 10 * k, "y": 30, "width": 16, "height": 16} for k in range(7)]
    for image_id in chosen:
        requests.put(f"{bench.api_url}/__emulator/images/{image_id}/boxes", json=boxes, timeout=30).raise_for_status()
    return chosen


def written_by_run(bench: Bench, dataset_id: str, run_id: str) -> set[str]:
    """Roboflow ids of the images whose rows the run wrote (od_dataset_images.import_run_id)."""
    url = f"{bench.stack.info['url']}/rest/v1/od_dataset_images"
    rows = bench.rest.get(url, params={"dataset_id": f"eq.{dataset_id}", "import_run_id": f"eq.{run_id}",
                                       "select": "od_images(source_ref)"}, timeout=30).json()
    return {r["od_images"]["source_ref"].removeprefix("roboflow:").split("@")[0] for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rate-limit", type=float, default=100.0)
    parser.add_argument("--image-kb", type=int, nargs=2, default=(100, 300), metavar=("MIN", "MAX"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/resume-sync-<time>.json")
    args = parser.parse_args()
    n = args.images
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="resume-sync-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workload = Workload(n, args.rate_limit, 100.0, 50.0, tuple(args.image_kb), adaptive=False)
    results: dict[str, Any] = {"images": n, "rate_limit": args.rate_limit, "batch_size": BATCH_SIZE}
    with Bench(workload, workdir) as bench:
        full_target, killed_target = bench.new_dataset("full"), bench.new_dataset("killed")
        full = import_once(bench, full_target, "full")
        killed = import_once(bench, killed_target, "killed", kill_at=n // 2)
        results["plan_after_kill"] = plan_lines(bench, killed_target)
        resumed = import_once(bench, killed_target, "resumed")
        listing = import_once(bench, full_target, "listing-unchanged", "--change_detection", "listing")
        exact = import_once(bench, full_target, "exact-unchanged")
        changed_ids = relabel(bench, max(1, n // 100))
        results["plan_after_relabel"] = plan_lines(bench, full_target, "--change_detection", "listing")
        changed = import_once(bench, full_target, "listing-1pct", "--change_detection", "listing")
        rewritten = written_by_run(bench, full_target, changed["summary"]["run"]["id"])
    left = n - killed["rows_after"]
    checks = {
        "resume: details calls <= left + 2 x batch": resumed["details_calls"] <= left + 2 * BATCH_SIZE,
        "resume: wall <= 0.6 x full import": resumed["wall_seconds"] <= 0.6 * full["wall_seconds"],
        "listing unchanged: <= 1 call per 200 images": listing["api_calls"] <= n / 200,
        "listing unchanged: wall <= 10 s": listing["wall_seconds"] <= 10,
        # Images fetched, as the importer counts them: the calls also count the retries of a 429.
        "exact unchanged: one details call per image": (exact["summary"]["details"] or {}).get("fetched") == n,
        "listing 1%: exactly the relabelled images re-imported": (
            rewritten == set(changed_ids) and changed["details_calls"] == len(changed_ids)
            and changed["summary"]["changed"] == len(changed_ids)),
    }
    results.update(runs=[full, killed, resumed, listing, exact, changed], left_after_kill=left, checks=checks)
    print(table(results))
    path = args.json or ROOT / "bench" / "results" / f"resume-sync-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")
    return 0 if all(checks.values()) else 1


def table(results: dict[str, Any]) -> str:
    lines = [f"{results['images']:,} images, {results['rate_limit']:g} requests/s, batch {results['batch_size']}",
             "| run | wall | Roboflow API calls | of them 429 | details calls | saved (why) | rows after |",
             "|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        details = (run["summary"] or {}).get("details") or {}
        why = ", ".join(f"{k} {v:,}" for k, v in (details.get("skipped") or {}).items())
        saved = f"{details.get('saved', 0):,}" + (f" ({why})" if why else "") if details else "-"
        lines.append(f"| {run['name']} | {run['wall_seconds']:.1f} s | {run['api_calls']:,} | {run['api_429s']:,} | "
                     f"{run['details_calls']:,} | {saved} | {run['rows_after']:,} |")
    lines.append(f"images left after the kill: {results['left_after_kill']:,}")
    for key in ("plan_after_kill", "plan_after_relabel"):
        lines += [f"{key}:", *results.get(key, [])]
    lines += [f"{'met ' if ok else 'MISSED'}  {name}" for name, ok in results["checks"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
