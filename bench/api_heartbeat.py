"""Does the platform's awaited call leave its event loop free? A heartbeat on the caller's loop, measured.

    PYTHONPATH=$PWD .venv/bin/python bench/api_heartbeat.py [--images 300]

Runs the platform's call (``streaming_import_from_roboflow``) in a stand-in web service
(pipeline/testing/platform_backend.py: its own process, a task ticking every 10 ms on the loop that
awaits the import) against the emulator and a local Supabase, then the same service idle for as long
(the machine's own baseline: what a loaded machine does to a 10 ms timer without any import). Prints
one table row each; the load average is printed with it because other work on the machine shows up
in both rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.testing.roboflow_emulator import EmulatorConfig, RoboflowEmulator  # noqa: E402
from pipeline.testing.supabase_stack import LocalSupabase  # noqa: E402

DATASET = "44444444-5555-4666-8777-888888888888"


def backend(*args: str, request: dict | None = None) -> dict:
    run = subprocess.run([sys.executable, "-m", "pipeline.testing.platform_backend", *args],
                         input=json.dumps(request) if request else "", capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return json.loads(run.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    images = parser.parse_args().images
    with RoboflowEmulator(EmulatorConfig(image_count=images, seed=31, image_kb_max=6)) as emulator, \
            LocalSupabase() as stack:
        stack.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'heartbeat')")
        request = {"api_key": emulator.config.api_key, "workspace": emulator.config.workspace,
                   "project": emulator.config.project, "dataset_id": DATASET, "class_mapping": "auto",
                   "concurrency": 10, "job_id": "bench", "checkpoint": None, "supabase_url": stack.url,
                   "supabase_key": stack.service_role_key, "roboflow_api_url": emulator.api_url}
        during = backend(request=request)
        assert during["result"]["images_imported"] == images, during["result"]
        idle = backend("--idle", str(round(during["heartbeat"]["seconds"], 1)))
    print(f"load average before the idle row: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores)")
    print(f"{'loop':<28}{'seconds':>9}{'ticks':>8}{'min ticks/s':>13}{'max gap (s)':>13}")
    for name, report in ((f"awaiting a {images}-image import", during), ("idle (baseline)", idle)):
        beat = report["heartbeat"]
        print(f"{name:<28}{beat['seconds']:>9.1f}{beat['ticks']:>8}{beat['min_ticks_per_second']:>13}"
              f"{beat['max_gap']:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
