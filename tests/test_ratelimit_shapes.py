"""Each limit shape of the rate-limit matrix (bench/throughput.py --matrix) at a size CI can afford, with
``--roboflow_rate_limit`` not given: no image lost, few calls wasted. Speed is the benchmark's business."""

from __future__ import annotations

import json

import pytest

from pipeline.testing.roboflow_emulator import FaultConfig
from tests.importer import run_import, start_import

DATASET = "00000000-0000-4000-8000-0000000012aa"
IMAGES = 160


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'rate limit shapes')")
    return clean_supabase


def share_429(emu) -> float:
    counters = emu.counters()
    api = counters.get("image_details", 0) + counters.get("search", 0) + counters.get("search_v1", 0)
    return counters.get("fault:rate_limit", 0) / max(1, api)


SHAPES = {
    "one_second_burst_retry_after_on_all": (FaultConfig(rate_limit_per_s=40, rate_limit_burst_s=1.0,
                                                        rate_limit_retry_after="all"), ()),
    "no_burst_no_retry_after": (FaultConfig(rate_limit_per_s=40, rate_limit_retry_after="none"), ()),
    # A bucket of 2 s of rate hides the limit from the climb until it drains (the matrix's 10 s at 100/s,
    # scaled to a run this size: 20/s, 240 images), and answers come slowly.
    "big_burst_slow_answers": (FaultConfig(rate_limit_per_s=20, rate_limit_burst_s=2.0, api_latency_ms=150.0), ()),
    # At 300 ms an answer, 40/s needs a dozen calls in flight (Little's law), more than a fixed pool's first guess.
    "slow_answers": (FaultConfig(rate_limit_per_s=40, api_latency_ms=300.0), ()),
    "drop_after_n_calls": (FaultConfig(rate_limit_per_s=60, rate_limit_change_per_s=20,
                                       rate_limit_change_after_calls=60), ()),
    "rise_after_n_calls": (FaultConfig(rate_limit_per_s=20, rate_limit_change_per_s=80,
                                       rate_limit_change_after_calls=60), ()),
    "random_429s_on_top": (FaultConfig(rate_limit_per_s=40, throttle_rate=0.1, throttle_routes=("image_details",)),
                           ()),
    "two_processes_one_key": (FaultConfig(rate_limit_per_s=40),
                              ("--direct_running_mode=multi_processing", "--direct_num_workers=2")),
    "four_processes_one_key": (FaultConfig(rate_limit_per_s=40),
                               ("--direct_running_mode=multi_processing", "--direct_num_workers=4")),
    "four_processes_one_key_drop": (FaultConfig(rate_limit_per_s=40, rate_limit_change_per_s=20,
                                                rate_limit_change_after_calls=100),
                                    ("--direct_running_mode=multi_processing", "--direct_num_workers=4")),
}


def limited_from(timeline: list[dict], start: float, since: str) -> tuple[int, int]:
    """The calls the emulator's limit answered 429, and all its calls, from ``start`` (the timeline's seconds)."""
    after = [s for s in timeline if s["t"] >= start]
    limited, calls = sum(s["limited"] for s in after), sum(s["passed"] + s["limited"] for s in after)
    print(f"from {since}: {limited} of {calls} calls answered 429")
    return limited, calls


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_unknown_limit_loses_no_image_and_wastes_few_calls(roboflow_emulator, target, tmp_path, monkeypatch,
                                                               shape):
    faults, extra = SHAPES[shape]
    # After the drop, enough calls to judge a share: with 160 images about 70 came after the settling
    # time, and one 429 more or less decided the test (it failed once in a full suite, 7 of 73).
    images = 2 * IMAGES if "drop" in shape else 3 * IMAGES // 2 if "big_burst" in shape else IMAGES
    emu = roboflow_emulator(image_count=images, seed=12, faults=faults)
    code, summary, letters = run_import(emu, target, tmp_path, DATASET, *extra, monkeypatch=monkeypatch)
    assert (code, summary["failed"], letters) == (0, 0, [])
    assert summary["imported"] == images
    print(f"{shape}: {share_429(emu):.1%} of API calls answered 429 by the limit")
    if shape == "drop_after_n_calls":  # one round of 429s tells the limit dropped; 3 s later they are rare
        timeline = emu.timeline()
        drop = next(s["t"] for s in timeline if s["limit"] == 20)
        limited, calls = limited_from(timeline, drop + 3, "3 s after the drop")
        assert limited <= 0.1 * calls, timeline
        assert share_429(emu) <= 0.3
    elif shape == "four_processes_one_key_drop":
        # Four processes on 20/s meet a 2-token bucket, whose collisions no per-process controller removes
        # (bench/collisions.py: 8-17 % at 0.6-0.9 of it); they take turns (migration 0009) once each sends at
        # most 10/s. With turns: 0, 1, 2, 8 and 16 of 102-126 calls in five runs (before them 0-8 of 76-114 in
        # nine runs, 13 of 109 and 18 of 105 in two more), so 10 % would still fail a run now and then. Over the
        # run 15-21 %: four slow starts meet on the 40/s key, and the drop's first seconds, in a run this small.
        timeline = emu.timeline()
        drop = next(s["t"] for s in timeline if s["limit"] == 20)
        limited, calls = limited_from(timeline, drop + 10, "10 s after the drop")
        assert calls >= 40 and limited <= 0.2 * calls, timeline
        assert share_429(emu) <= 0.4, emu.counters()
    elif shape == "four_processes_one_key":
        # Four slow starts from 20/s each meet on a 40/s key: their first round is half 429s, a fixed cost that
        # weighs 10-13 % of a run this small (3.9 % over 2,000 images in the benchmark). From 3 s later, few.
        timeline = emu.timeline()
        first = next(s["t"] for s in timeline if s["limited"])
        limited, calls = limited_from(timeline, first + 3, "3 s after the first 429")
        assert limited <= 0.08 * calls, timeline
        assert share_429(emu) <= 0.2, emu.counters()
    elif shape == "big_burst_slow_answers":
        # The bucket hides the limit until it drains, under a slow start at 3 times the limit: that round's
        # overshoot, 50-60 429s whatever the run's size, is 20-24 % of this one (measured 23.6, 20.8) and 3.9 %
        # of 5,000 images at 100/s with a 10 s bucket (bench matrix).
        assert emu.counters().get("fault:rate_limit", 0) > 0, emu.timeline()  # it drained: there was a limit
        assert share_429(emu) <= 0.3, emu.counters()
    else:
        assert share_429(emu) <= 0.12, emu.counters()  # the old controller wasted ~40 % at full size


def test_a_key_that_only_answers_429_stops_the_run_with_every_image_dead_lettered(roboflow_emulator, target,
                                                                                   tmp_path, monkeypatch, caplog):
    emu = roboflow_emulator(image_count=30, seed=12, faults=FaultConfig(throttle_rate=1.0,
                                                                        throttle_routes=("image_details",)))
    code, summary, letters = run_import(emu, target, tmp_path, DATASET, "--roboflow_stall_timeout", "3",
                                        monkeypatch=monkeypatch)
    assert code == 3 and summary["failed"] == 30
    assert {d.error_type for d in letters} == {"rate_limited"} and len(letters) == 30
    assert all("--roboflow_stall_timeout" in d.message for d in letters)
    assert emu.counters().get("image_details", 0) < 30 * 8  # the rest failed at once, not after a wait each
    stall_lines = [r for r in caplog.records if r.levelname == "ERROR" and "--roboflow_stall_timeout" in r.getMessage()]
    assert len(stall_lines) == 1  # one line says the run stops; the letters are warnings, one per image


@pytest.mark.parametrize("imports, rate, images", [(2, 40, 2 * IMAGES), (4, 80, IMAGES)])
def test_imports_at_once_on_one_key_share_its_limit_without_losing_an_image(roboflow_emulator, target, tmp_path,
                                                                            imports, rate, images):
    """Independent processes with full demand, as Dataflow workers or the platform's concurrent imports:
    none knows of the others, and only the gateway's 429s tell them the key's limit is shared. Two slow starts
    overshoot together: a longer run judges the share on the rest. Four at 20/s each start at 80/s."""
    datasets = [DATASET] + [f"00000000-0000-4000-8000-0000000012b{i}" for i in range(1, imports)]
    for i, dataset in enumerate(datasets[1:], 2):
        target.execute_sql(f"insert into od_datasets (id, name) values ('{dataset}', 'rate limit shapes {i}')")
    emu = roboflow_emulator(image_count=images, seed=12, faults=FaultConfig(rate_limit_per_s=rate))
    names = [f"import{i}" for i in range(imports)]
    children = [start_import(emu, target, tmp_path / name, dataset)
                for name, dataset in zip(names, datasets, strict=True)]
    codes = [child.wait(timeout=300) for child in children]
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in names]
    assert codes == [0] * imports, [(tmp_path / name / "stderr.txt").read_text()[-2000:] for name in names]
    assert [(s["imported"], s["failed"]) for s in summaries] == [(images, 0)] * imports
    assert emu.counters().get("image_details", 0) >= imports * images
    print(f"{imports} imports: {share_429(emu):.1%} of API calls answered 429 by the limit")
    assert share_429(emu) <= 0.12, emu.counters()
