"""The README's --plan, filter and --prune output, reproduced against the demo stand-ins.

    .venv/bin/python bench/sync_demo.py

Starts the emulator with the demo project of ``./run_local.sh --demo`` (300 images, 100 requests/s)
and a local Supabase, then runs, printing each command's output: ``--plan`` on the empty dataset,
an import of ``--split train``, two images deleted in Roboflow, ``--plan`` again, ``--prune``, and
``--plan`` with a mapping file that maps one class only (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import main as importer  # noqa: E402
from pipeline.demo import DEMO_DATASET, DEMO_KEY  # noqa: E402
from pipeline.testing.roboflow_emulator import EmulatorConfig, FaultConfig, RoboflowEmulator  # noqa: E402
from pipeline.testing.supabase_stack import LocalSupabase  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="database and reports (default: a temp dir)")
    workdir = (parser.parse_args().workdir or Path(tempfile.mkdtemp(prefix="sync-demo-"))).resolve()
    config = EmulatorConfig(workspace="demo-ws", project="demo-shapes", image_count=300, seed=42, api_key=DEMO_KEY,
                            project_type="instance-segmentation")
    with RoboflowEmulator(config, faults=FaultConfig(rate_limit_per_s=100)) as emulator, \
            LocalSupabase(workdir / "supabase") as stack:
        stack.execute_sql(f"insert into od_datasets (id, name, annotation_type) values "
                          f"('{DEMO_DATASET}', 'Roboflow demo', 'polygon')")
        os.environ["ROBOFLOW_API_KEY"] = DEMO_KEY
        os.environ["SUPABASE_SERVICE_ROLE_KEY"] = stack.service_role_key
        base = ["--roboflow_workspace", config.workspace, "--roboflow_project", config.project,
                "--roboflow_version", "1", "--roboflow_api_url", emulator.api_url, "--supabase_url", stack.url,
                "--dataset_id", DEMO_DATASET, "--roboflow_rate_limit", "100", "--quiet",
                "--dead_letter_path", str(workdir / "dead_letters"), "--summary_path", str(workdir / "summary.json")]
        mapping = workdir / "mapping.json"
        mapping.write_text(json.dumps([{"source_name": "dog", "create_new": True}]))

        def step(title: str, *extra: str, class_mapping: str = "auto") -> None:
            print(f"=== {title}: ... {' '.join(extra)}", flush=True)
            code = importer.run([*base, "--class_mapping", class_mapping, *extra])
            print(f"(exit {code})\n", flush=True)

        step("empty dataset", "--plan")
        step("import one split", "--split", "train")
        for image_id in emulator.dataset.image_ids[:2]:
            emulator.dataset.delete_image(image_id)
        step("two images deleted in Roboflow", "--plan")
        step("sync and prune", "--prune")
        step("a mapping file that maps only 'dog'", "--plan", class_mapping=str(mapping))
    return 0


if __name__ == "__main__":
    sys.exit(main())
