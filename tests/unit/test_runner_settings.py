"""The local runner settings main.run applies: parallel by default, the user's choice when given."""

import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from pipeline.errors import InputError
from pipeline.main import LOCAL_WORKERS, runner_settings
from pipeline.options import ParsedOptions
from pipeline.validation import options_from_values, parse_command_line


def settle_options(options: ParsedOptions) -> tuple[str, int, DirectOptions, StandardOptions]:
    name, processes = runner_settings(options)
    return name, processes, options.pipeline.view_as(DirectOptions), options.pipeline.view_as(StandardOptions)


def settle(argv: list[str]) -> tuple[str, int, DirectOptions, StandardOptions]:
    return settle_options(parse_command_line(argv))


def test_default_is_the_fnapi_runner_with_parallel_threads():
    """Beam's own default of one worker would run every stage on one thread (measured: R/2 at R=100)."""
    name, processes, direct, standard = settle([])
    assert (name, processes, standard.runner) == ("fnapirunner", 1, "FnApiRunner")
    assert direct.direct_num_workers == LOCAL_WORKERS > 1
    assert direct.direct_running_mode == "multi_threading"


@pytest.mark.parametrize("argv", [["--direct_num_workers=2"], ["--direct_num_workers", "2"]])
def test_an_explicit_worker_count_is_kept(argv):
    _, _, direct, _ = settle(argv)
    assert direct.direct_num_workers == 2


@pytest.mark.parametrize("argv", [["--direct_num_workers=1"], ["--direct_num_workers", "1", "--quiet"]])
def test_an_explicit_single_worker_is_kept_although_it_is_beams_default(argv):
    """Beam cannot tell 1 given from its default 1 (get_all_options(drop_default=True) drops both)."""
    _, _, direct, _ = settle(argv)
    assert direct.direct_num_workers == 1


def test_options_from_python_values_get_the_local_default_and_keep_a_worker_count_in_their_flags():
    _, _, direct, _ = settle_options(options_from_values({"concurrency": 4, "quiet": True}))
    assert direct.direct_num_workers == LOCAL_WORKERS
    _, _, direct, _ = settle_options(options_from_values({"concurrency": 4}, ["--direct_num_workers=1"]))
    assert direct.direct_num_workers == 1


def test_multi_processing_reports_its_processes_for_the_rate_share():
    _, processes, _, _ = settle(["--direct_running_mode=multi_processing", "--direct_num_workers=3"])
    assert processes == 3


def test_the_direct_runner_is_refused_with_the_fix():
    with pytest.raises(InputError, match="--runner=FnApiRunner"):
        settle(["--runner=DirectRunner"])
