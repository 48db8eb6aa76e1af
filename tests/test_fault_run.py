"""The reference fault run with 2,000 images (issue 4 §1): nothing lost, nothing duplicated."""

from pipeline.testing.fault_run import ROBOFLOW_FAULTS, run_fault_run


def test_reference_fault_run_heals_every_transient_fault(tmp_path):
    report = run_fault_run(2000, tmp_path)
    print(report.table())

    assert report.listed == 2000
    assert report.missing == [] and report.unexpected_dead_letters == []
    assert report.listed == report.imported_rows + sum(report.dead_lettered.values())
    assert report.dead_lettered == {"not_found": ROBOFLOW_FAULTS["deleted_after_listing"],
                                    "undecodable_image": ROBOFLOW_FAULTS["undecodable"]}
    assert not any(report.duplicates.values()) and report.orphan_objects == []
    assert report.summary["unaccounted"] == 0 and report.exit_code == 3
    # the faults really happened, and were healed by retries
    for fault in ("throttle", "server_error", "reset", "truncate"):
        assert report.emulator_faults.get(fault, 0) > 0, fault
    assert report.stack_faults.get("storage_5xx", 0) > 0 and report.stack_faults.get("rest_503", 0) > 0
    retries = report.summary["retries"]
    assert retries.get("roboflow.rate_limited", 0) > 0 and retries.get("roboflow.cdn_truncated_body", 0) > 0
    assert any(k.startswith("supabase.postgrest") for k in retries), retries
