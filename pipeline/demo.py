"""The built-in demo: a generated Roboflow project imported into a local Supabase, end to end.

    ./run_local.sh --demo            # 300 images, then prints the summary and where to look
    ./run_local.sh --demo --images 2000 --keep-running
    ./run_local.sh --demo --project_type classification [--multilabel]   # into the cls_* tables

It starts the Roboflow emulator (by default an instance-segmentation project: boxes, polygons, images
with no boxes, PNGs served as .jpg, odd file names) and the local Supabase stack (PostgreSQL 15,
PostgREST, Storage double, gateway), creates a dataset (a ``cls_datasets`` row with the matching
``task_type`` and the platform's ``cls-images`` bucket for a classification project), and runs the
real pipeline with ``--class_mapping auto``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from pipeline import main as importer
from pipeline.testing.roboflow_emulator import EmulatorConfig, FaultConfig, RoboflowEmulator
from pipeline.testing.roboflow_emulator.config import PROJECT_TYPES
from pipeline.testing.supabase_stack import LocalSupabase
from pipeline.testing.supabase_stack.stack import CLS_BUCKET, DEFAULT_BUCKETS

DEMO_DATASET = "00000000-0000-4000-8000-00000000de30"
DEMO_KEY = "rf_demo_private_key_0123456789"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run_local.sh --demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images in the generated project")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated project")
    parser.add_argument("--rate-limit", type=float, default=100.0,
                        help="the emulator's Roboflow rate limit, requests/s (429 above it)")
    parser.add_argument("--project_type", "--project-type", choices=PROJECT_TYPES, default="instance-segmentation",
                        help="the generated project's Roboflow type")
    parser.add_argument("--multilabel", action="store_true", help="classification: several labels per image")
    parser.add_argument("--workdir", default=".cache/demo", help="where the database, objects and reports go")
    parser.add_argument("--keep-running", action="store_true",
                        help="keep the stand-ins up after the import, to look around (Ctrl-C stops)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    classification = args.project_type == "classification"
    config = EmulatorConfig(workspace="demo-ws", project="demo-shapes", image_count=args.images, seed=args.seed,
                            api_key=DEMO_KEY, project_type=args.project_type, multilabel=args.multilabel)
    faults = FaultConfig(rate_limit_per_s=args.rate_limit)
    print(f"demo: starting the Roboflow emulator ({args.images} images, {args.project_type}) and the local "
          "Supabase stack ...", flush=True)
    buckets = {**DEFAULT_BUCKETS, **CLS_BUCKET} if classification else None
    with RoboflowEmulator(config, faults=faults) as emulator, LocalSupabase(workdir / "supabase",
                                                                            buckets=buckets) as stack:
        if classification:
            task_type = "multi_label" if args.multilabel else "single_label"
            stack.execute_sql(f"insert into cls_datasets (id, name, task_type) values "
                              f"('{DEMO_DATASET}', 'Roboflow demo', '{task_type}')")
        else:
            stack.execute_sql(f"insert into od_datasets (id, name, annotation_type) values "
                              f"('{DEMO_DATASET}', 'Roboflow demo', 'polygon')")
        os.environ["ROBOFLOW_API_KEY"] = DEMO_KEY
        os.environ["SUPABASE_SERVICE_ROLE_KEY"] = stack.service_role_key
        code = importer.run([
            "--roboflow_workspace", config.workspace, "--roboflow_project", config.project,
            "--roboflow_version", "1", "--roboflow_api_url", emulator.api_url,
            "--supabase_url", stack.url, "--dataset_id", DEMO_DATASET, "--class_mapping", "auto",
            "--roboflow_rate_limit", str(args.rate_limit),
            "--dead_letter_path", str(workdir / "dead_letters"), "--summary_path", str(workdir / "summary.json"),
        ])
        if classification:
            counts = stack.sql(
                "select (select count(*) from cls_images) as images, "
                "(select count(*) from cls_labels) as labels, "
                "(select count(*) from cls_classes where dataset_id is not null) as classes, "
                f"(select image_count from cls_datasets where id = '{DEMO_DATASET}') as dataset_image_count, "
                f"(select labeled_image_count from cls_datasets where id = '{DEMO_DATASET}') as labeled")[0]
        else:
            counts = stack.sql(
                "select (select count(*) from od_images) as images, "
                "(select count(*) from od_annotations) as annotations, "
                "(select count(*) from od_annotations where polygon is not null) as polygons, "
                "(select count(*) from od_classes where dataset_id is not null) as classes, "
                f"(select image_count from od_datasets where id = '{DEMO_DATASET}') as dataset_image_count")[0]
        bucket = "cls-images" if classification else "od-images"
        print("\nWhere to look:")
        print(f"  rows:     {counts}")
        print(f"  objects:  {stack.storage.root / 'objects' / bucket}  (the Storage double's files: "
              f"{DEMO_DATASET}/roboflow/<image id>.<ext> is stored as <...>.d/<image id>.<ext>.obj)")
        print(f"  summary:  {workdir / 'summary.json'}")
        if args.keep_running:
            print(f"  Supabase: {stack.url}  (service key in $SUPABASE_SERVICE_ROLE_KEY of this process)")
            print(f"  database: {stack.db_url}")
            print("Ctrl-C to stop.", flush=True)
            try:
                import threading

                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    return code


if __name__ == "__main__":
    sys.exit(main())
