"""The progress tracker, line and reporter, on a fake clock (no sleeps, no timing assertions)."""

import io
import threading

import pytest

from pipeline.progress import (
    FAILED,
    LISTED,
    UNCHANGED,
    WRITTEN,
    Progress,
    ProgressReporter,
    ProgressTracker,
    final_progress,
    format_duration,
    render_line,
)
from tests.unit.fake_time import FakeTime
from transforms import batch_step
from transforms.core.tally import collecting, count
from transforms.list_images import count_listed


def tracker_at(reported=1000, **kwargs):
    clock = FakeTime()
    return clock, ProgressTracker(reported, clock=clock.clock, **kwargs)


# ---- render_line ---------------------------------------------------------------------------------


def test_line_shows_done_total_rate_failures_and_eta():
    line = render_line(Progress(done=1234, total=10000, failed=3, elapsed=60, rate=45.25, eta=194))
    assert line == "1,234/10,000 images (12%) | 45.2 img/s | 3 failed | ETA 3m14s"


def test_line_without_a_rate_says_so_instead_of_guessing():
    assert render_line(Progress(done=0, total=80, failed=0, elapsed=0.5)) == \
        "0/80 images (0%) | - img/s | 0 failed | ETA -"


def test_line_while_listing_shows_the_reported_total():
    line = render_line(Progress(done=0, total=5000, failed=0, elapsed=75, listing=True))
    assert line == "listing images (5,000 reported by Roboflow) | 1m15s elapsed"


def test_final_line_says_how_long_it_took():
    line = render_line(Progress(done=120, total=120, failed=2, elapsed=3725, rate=0.03, eta=0, final=True))
    assert line == "120/120 images (100%) | 0.0 img/s | 2 failed | done in 1h02m"


def test_empty_project_line_has_no_percentage():
    assert render_line(Progress(done=0, total=0, failed=0, elapsed=2, rate=0.0)) == \
        "0/0 images | 0.0 img/s | 0 failed | ETA -"


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600, "1h00m"),
                                          (86399, "23h59m")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


# ---- ProgressTracker -----------------------------------------------------------------------------


def test_done_counts_written_unchanged_and_failed_and_nothing_else():
    clock, tracker = tracker_at()
    for name, n in ((WRITTEN, 5), (UNCHANGED, 3), (FAILED, 2), ("annotations_written", 40), ("bytes_uploaded", 9)):
        tracker.add(name, n)
    p = tracker.snapshot()
    assert (p.done, p.failed, p.imported) == (10, 2, 8)


def test_total_is_reported_until_the_listing_arrives_then_the_listed_count():
    clock, tracker = tracker_at(reported=1000)
    assert tracker.snapshot().total == 1000 and tracker.snapshot().listing
    for _ in range(990):
        tracker.add(LISTED)
    p = tracker.snapshot()
    assert p.total == 990 and not p.listing


def test_total_never_below_done():
    clock, tracker = tracker_at(reported=5)
    tracker.add(WRITTEN, 8)
    assert tracker.snapshot().total == 8


def test_rate_and_eta_over_the_recent_window():
    clock, tracker = tracker_at(reported=1000, window=30)
    for _ in range(60):  # 10 images/s for 60 s
        clock.now += 1
        tracker.add(WRITTEN, 10)
    p = tracker.snapshot()
    assert p.done == 600 and p.rate == pytest.approx(10, rel=0.05)
    assert p.eta == pytest.approx(40, rel=0.05)
    for _ in range(30):  # slows to 2 images/s: the window forgets the fast minute
        clock.now += 1
        tracker.add(WRITTEN, 2)
    p = tracker.snapshot()
    assert p.rate == pytest.approx(2, rel=0.1) and p.eta == pytest.approx(340 / p.rate)


def test_stalled_run_has_zero_rate_and_no_eta():
    clock, tracker = tracker_at(reported=100, window=30)
    clock.now += 5
    tracker.add(WRITTEN, 10)
    clock.now += 120
    p = tracker.snapshot()
    assert p.rate == 0 and p.eta is None


def test_no_rate_in_the_first_second():
    clock, tracker = tracker_at()
    clock.now += 0.2
    tracker.add(WRITTEN, 5)
    assert tracker.snapshot().rate is None


def test_milestones_every_10_images_in_order():
    clock, tracker = tracker_at(reported=200)
    for _ in range(135):
        clock.now += 0.1
        tracker.add(WRITTEN)
    milestones, current = tracker.drain()
    assert [m.done for m in milestones] == list(range(10, 131, 10))
    assert current.done == 135
    assert tracker.drain()[0] == []


def test_a_burst_crossing_several_milestones_is_one_milestone():
    clock, tracker = tracker_at(reported=200)
    tracker.add(FAILED, 120)  # a crashed batch: its images are dead-lettered at once
    milestones, _ = tracker.drain()
    assert [(m.done, m.failed) for m in milestones] == [(120, 120)]


def test_concurrent_adds_lose_nothing():
    clock, tracker = tracker_at(reported=8000)

    def work():
        for _ in range(1000):
            tracker.add(WRITTEN)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.snapshot().done == 8000
    assert len(tracker.drain()[0]) == 800  # one milestone per 10 images


def test_final_progress_comes_from_the_summary():
    clock, tracker = tracker_at(reported=100)
    tracker.add(WRITTEN, 7)  # the live mirror may lag; the summary is authoritative
    clock.now += 10
    final = final_progress({"listed": 98, "imported": 95, "failed": 3}, tracker)
    assert (final.done, final.total, final.failed, final.final) == (98, 98, 3, True)
    assert final.rate == pytest.approx(9.8)


# ---- batch_step's hook -----------------------------------------------------------------------------


def test_step_counters_reach_the_installed_tracker_only():
    clock, tracker = tracker_at(reported=10)
    count("images_written")  # no sink installed: nothing to tell
    batch_step.set_progress_sink(tracker.add)
    try:
        count("images_written", 2)
        count("images_failed")
        assert count_listed("abc") == "abc"
        with collecting() as tally:  # a task's counts wait in its tally until the DoFn thread folds them
            count("images_written", 5)
        assert tracker.snapshot().done == 3
        batch_step.fold_tally(tally, None)
    finally:
        batch_step.set_progress_sink(None)
    count("images_written")
    p = tracker.snapshot()
    assert (p.done, p.failed, p.listing, p.total) == (8, 1, False, 8)


# ---- ProgressReporter ------------------------------------------------------------------------------


def test_plain_lines_only_every_interval_when_not_a_terminal():
    clock, tracker = tracker_at(reported=100)
    out = io.StringIO()
    reporter = ProgressReporter(tracker, stream=out, interval=10, tty=False)
    for _ in range(25):
        clock.now += 1
        tracker.add(WRITTEN, 2)
        reporter.report()
    lines = out.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["20/100 images (20%)", "40/100 images (40%)"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_terminal_gets_one_redrawn_line_and_a_newline_at_the_end():
    clock, tracker = tracker_at(reported=4)
    out = io.StringIO()
    reporter = ProgressReporter(tracker, stream=out, tty=True)
    for _ in range(4):
        clock.now += 1
        tracker.add(WRITTEN)
        reporter.report()
    reporter.finish(final_progress({"listed": 4, "imported": 4, "failed": 0}, tracker))
    text = out.getvalue()
    assert text.count("\r") == 5 and text.count("\n") == 1 and text.endswith("done in 4s\x1b[K\n")
    assert "\r3/4 images (75%)" in text


def test_interrupted_terminal_line_is_ended_without_a_final_claim():
    clock, tracker = tracker_at(reported=10)
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with ProgressReporter(tracker, stream=out, tty=True, tick=0.01) as reporter:
            tracker.add(WRITTEN, 3)
            reporter.report()
            raise KeyboardInterrupt
    assert reporter._thread is None  # the thread was stopped and joined
    assert out.getvalue().endswith("\n") and "done in" not in out.getvalue()


def test_callback_gets_every_milestone_in_order_and_the_final():
    clock, tracker = tracker_at(reported=175)
    calls = []
    reporter = ProgressReporter(tracker, callback=calls.append, interval=1000)
    for i in range(175):
        clock.now += 0.01
        tracker.add(FAILED if i % 25 == 0 else WRITTEN)
        if i % 70 == 0:
            reporter.report()
    reporter.report()
    reporter.finish(final_progress({"listed": 175, "imported": 168, "failed": 7}, tracker))
    done = [p.done for p in calls]
    assert done == sorted(done) and done[-1] == 175 and calls[-1].final
    assert {50, 100, 150} <= set(done)
    assert all(b - a <= 50 for a, b in zip([0, *done], done, strict=False))


def test_callback_exceptions_do_not_stop_the_reports(caplog):
    clock, tracker = tracker_at(reported=100)
    seen = []

    def flaky(progress):
        seen.append(progress.done)
        raise RuntimeError("platform hiccup")

    reporter = ProgressReporter(tracker, callback=flaky, interval=1000)
    tracker.add(WRITTEN, 50)
    reporter.report()
    tracker.add(WRITTEN, 50)
    reporter.report()
    reporter.finish(final_progress({"listed": 100, "imported": 100, "failed": 0}, tracker))
    assert seen == [50, 100, 100]
    assert "progress callback failed (the import goes on): RuntimeError: platform hiccup" in caplog.text


def test_not_live_reports_only_the_final():
    clock, tracker = tracker_at(reported=10)
    calls, out = [], io.StringIO()
    with ProgressReporter(tracker, stream=out, callback=calls.append, live=False, tty=False) as reporter:
        assert reporter._thread is None
        reporter.finish(final_progress({"listed": 10, "imported": 10, "failed": 0}, tracker))
    assert [p.done for p in calls] == [10] and out.getvalue().count("\n") == 1


def test_reporter_thread_runs_and_stops():
    tracker = ProgressTracker(10)
    calls = []
    with ProgressReporter(tracker, callback=calls.append, interval=0.05, tick=0.01) as reporter:
        tracker.add(WRITTEN, 3)
        deadline = threading.Event()
        for _ in range(500):
            if calls:
                break
            deadline.wait(0.01)
        thread = reporter._thread
    assert calls and calls[0].done == 3
    assert not thread.is_alive()


def test_finish_reports_the_milestones_the_thread_had_not_reached_yet():
    """The last images of a run can complete within one tick of the thread: their milestones come before the
    final report, so the platform never sees a jump of more than one milestone at the end."""
    clock, tracker = tracker_at(reported=40)
    calls = []
    reporter = ProgressReporter(tracker, callback=calls.append, interval=1000)
    for _ in range(12):
        clock.now += 0.01
        tracker.add(WRITTEN)
    reporter.report()
    for _ in range(28):
        clock.now += 0.01
        tracker.add(WRITTEN)
    reporter.finish(final_progress({"listed": 40, "imported": 40, "failed": 0}, tracker))
    assert [p.done for p in calls] == [10, 20, 30, 40] and calls[-1].final
