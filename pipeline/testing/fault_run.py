"""The reference fault run: the import against stand-ins that fail the way production does.

Roboflow emulator: ~20% of API calls answer 429 (half with ``Retry-After``), ~5% 5xx, ~2% connection
resets, ~1% truncated CDN bodies, 10 images deleted between listing and details, 5 images whose bytes
are no image, unstable offset ordering with duplicates. Local Supabase: ~2% Storage 5xx, ~1%
PostgREST 503. Then it checks what a user is promised:

* every listed image is either in Supabase or in the dead letters: listed = imported + dead-lettered;
* only the deleted and undecodable images are dead-lettered (every transient fault heals);
* no duplicate rows, no orphan objects.

    report = run_fault_run(images=2000, workdir=Path("/tmp/fault-run"))
    print(report.table())

``bench/fault_run.py`` runs it from the command line with a bigger N.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

from pipeline import main as importer
from pipeline.api import keys_in_environment
from pipeline.testing.roboflow_emulator import EmulatorConfig, FaultConfig, RoboflowEmulator
from pipeline.testing.supabase_stack import LocalSupabase, StackFaults
from transforms.core.convert import source_ref
from transforms.dead_letters import read_dead_letters

BUCKET = "od-images"
ROBOFLOW_FAULTS = dict(
    throttle_rate=0.20, retry_after_fraction=0.5, retry_after_seconds=1,
    server_error_rate=0.05, reset_rate=0.02, truncate_rate=0.01,
    deleted_after_listing=10, undecodable=5,
    unstable_order_rate=1.0,
)
# 1% of PostgREST requests as every 100th, not as a 1% draw: the importer makes about 5 table calls per
# batch of 50 images (~200 in a 2,000-image run), and a random 1% misses all of them with odds 0.99**200,
# about 13% (arithmetic). That failed a clean-clone CI run: a 503 landed only outside the import's steps.
STACK_FAULTS = dict(storage_5xx_rate=0.02, rest_503_every=100)


@dataclasses.dataclass
class FaultRunReport:
    exit_code: int
    summary: dict[str, Any]
    listed: int
    imported_rows: int
    dead_lettered: dict[str, int]  # error type -> images
    unexpected_dead_letters: list[str]
    missing: list[str]  # project images neither in Supabase nor dead-lettered
    duplicates: dict[str, int]
    orphan_objects: list[str]
    emulator_faults: dict[str, int]
    stack_faults: dict[str, int]

    @property
    def ok(self) -> bool:
        return (not self.unexpected_dead_letters and not self.missing and not any(self.duplicates.values())
                and not self.orphan_objects and self.listed == self.imported_rows + sum(self.dead_lettered.values()))

    def table(self) -> str:
        rows = [
            ("listed", self.listed),
            ("imported (rows in od_images)", self.imported_rows),
            ("dead-lettered", sum(self.dead_lettered.values())),
            *((f"  {kind}", n) for kind, n in sorted(self.dead_lettered.items())),
            ("unexpected dead letters", len(self.unexpected_dead_letters)),
            ("missing (neither imported nor dead-lettered)", len(self.missing)),
            *((f"duplicates: {what}", n) for what, n in self.duplicates.items()),
            ("orphan objects", len(self.orphan_objects)),
            *((f"retries: {kind}", n) for kind, n in sorted(self.summary.get("retries", {}).items())),
            *((f"emulator fault: {kind}", n) for kind, n in sorted(self.emulator_faults.items())),
            *((f"stack fault: {kind}", n) for kind, n in sorted(self.stack_faults.items())),
            ("seconds", self.summary.get("seconds")),
            ("exit code", self.exit_code),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def count_duplicates(stack: LocalSupabase, dataset_id: str) -> dict[str, int]:
    """Duplicates by every key a user would notice, including the old clean-up script's criterion."""
    queries = {
        "od_images by source_ref": "select count(*) - count(distinct source_ref) as n from od_images",
        "od_images by storage path": "select count(*) - count(distinct storage_path) as n from od_images",
        "od_dataset_images by image": f"select count(*) - count(distinct image_id) as n from od_dataset_images "
                                      f"where dataset_id = '{dataset_id}'",
        "od_annotations by content": (
            "select coalesce(sum(c - 1), 0) as n from (select count(*) as c from od_annotations "
            f"where dataset_id = '{dataset_id}' group by image_id, class_id, bbox_x, bbox_y, bbox_width, "
            "bbox_height, polygon::text) t"),
    }
    return {name: int(stack.sql(query)[0]["n"]) for name, query in queries.items()}


def orphan_objects(stack: LocalSupabase) -> list[str]:
    stored = {o["name"] for o in stack.list_objects(BUCKET)}
    referenced = {r["storage_path"] for r in stack.sql("select storage_path from od_images")}
    return sorted(stored - referenced)


def run_fault_run(images: int, workdir: Path, *, seed: int = 2024, extra_args: tuple[str, ...] = (),
                  image_kb: tuple[int, int] = (5, 20)) -> FaultRunReport:
    """Run the reference fault run with ``images`` images; the stand-ins live only for the run."""
    workdir.mkdir(parents=True, exist_ok=True)
    dataset_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fault-run/{seed}/{images}"))
    config = EmulatorConfig(workspace="fault-ws", project="fault-project", image_count=images, seed=seed,
                            api_key="rf_fault_run_key_" + uuid.uuid4().hex[:12], project_type="instance-segmentation",
                            image_kb_min=image_kb[0], image_kb_max=image_kb[1])
    with RoboflowEmulator(config, faults=FaultConfig(seed=seed, **ROBOFLOW_FAULTS)) as emulator, \
            LocalSupabase(faults=StackFaults(seed=seed, **STACK_FAULTS)) as stack:
        stack.execute_sql(f"insert into od_datasets (id, name) values ('{dataset_id}', 'fault run')")
        with keys_in_environment(config.api_key, stack.service_role_key):
            code = importer.run([
                "--roboflow_workspace", config.workspace, "--roboflow_project", config.project,
                "--roboflow_api_url", emulator.api_url, "--supabase_url", stack.url, "--dataset_id", dataset_id,
                "--class_mapping", "auto", "--dead_letter_path", str(workdir / "dead_letters"),
                "--summary_path", str(workdir / "summary.json"), *extra_args,
            ])
        stack.faults = StackFaults()  # read the results without faults
        summary = json.loads((workdir / "summary.json").read_text())
        letters = read_dead_letters(str(workdir / "dead_letters"))
        targets = emulator.fault_targets()
        expected_dead = set(targets["deleted_after_listing"]) | set(targets["undecodable"])
        dead_ids = {d.image_id for d in letters}
        imported_refs = {r["source_ref"] for r in stack.sql(
            "select source_ref from od_images where source_ref like 'roboflow:%'")}
        project_ids = set(emulator.dataset.image_ids)
        missing = sorted(i for i in project_ids if source_ref(dataset_id, i) not in imported_refs and i not in dead_ids)
        dead_by_kind: dict[str, int] = {}
        for letter in letters:
            dead_by_kind[letter.error_type] = dead_by_kind.get(letter.error_type, 0) + 1
        return FaultRunReport(
            exit_code=code,
            summary=summary,
            listed=summary["listed"],
            imported_rows=len(imported_refs),
            dead_lettered=dead_by_kind,
            unexpected_dead_letters=sorted(dead_ids - expected_dead),
            missing=missing,
            duplicates=count_duplicates(stack, dataset_id),
            orphan_objects=orphan_objects(stack),
            emulator_faults={k.split(":", 1)[1]: v for k, v in emulator.counters().items() if k.startswith("fault:")},
            stack_faults=dict(stack.counters().get("faults", {})),
        )
