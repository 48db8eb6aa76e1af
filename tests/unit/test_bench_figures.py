"""The figures bench/throughput.py derives: the rate bound, the steady-state rate, the profile grouping."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_throughput",
                                               Path(__file__).resolve().parents[2] / "bench" / "throughput.py")
throughput = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = throughput  # dataclasses look their module up there
_spec.loader.exec_module(throughput)


def test_the_bound_is_one_details_call_per_image_plus_a_page_per_250():
    assert throughput.bound_seconds(5000, 100.0) == pytest.approx(50.2)
    assert throughput.bound_seconds(5000, None) is None


def test_steady_rate_excludes_start_up_and_tail():
    # 10 s of start-up with no rows, then 100 rows/s for 10 s, then a slow tail of 10 rows in 5 s.
    samples = [(t / 10, 0) for t in range(100)]
    samples += [(10 + t / 10, 10 * t) for t in range(101)]
    samples += [(20 + t, 1000 + 2 * t) for t in range(1, 6)]
    assert throughput.steady_rate(samples, 1010) == pytest.approx(100.0, rel=0.02)


def test_steady_rate_needs_enough_rows_and_time():
    assert throughput.steady_rate([(0.0, 0), (1.0, 5)], 5) is None
    assert throughput.steady_rate([(0.0, 0), (1.0, 100)], 100) is None  # 10 % and 90 % in one sample


@pytest.mark.parametrize(("frame", "package"), [
    ("read (httpcore/_backends/sync.py:128)", "httpcore"),
    ("acquire (transforms/core/ratelimit.py:125)", "ours: transforms"),
    ("readinto (socket.py:706)", "socket.py"),
])
def test_profile_frames_are_grouped_by_package(frame, package):
    assert throughput._package(frame) == package
