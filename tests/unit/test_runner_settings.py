"""The local runner settings main.run applies: parallel by default, the user's choice when given."""

import time

import apache_beam as beam
import pytest
from apache_beam.coders import coders
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindows

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


def test_beams_timed_flush_cuts_an_element_in_two():
    """Why the local runner's timed flush is turned off: its thread sends whatever is buffered, even half of
    an element being encoded, and a worker decodes each chunk it is dealt on its own (half an element fails
    to decode, or decodes into a wrong value: Beam's stream reads past the end). Should a Beam upgrade
    make this pass no more, flush_whole_elements_only can go."""
    chunks = []
    stream = data_plane.TimeBasedBufferingClosableOutputStream(
        close_callback=chunks.append, flush_callback=chunks.append, time_flush_threshold_ms=5)
    coder = coders.WindowedValueCoder(coders.FastPrimitivesCoder(), coders.GlobalWindowCoder()).get_impl()
    encoded = coder.encode_nested(GlobalWindows.windowed_value(("image-1", "a listing fingerprint")))
    stream.write(encoded[:len(encoded) // 2])  # the encoder is interrupted here
    deadline = time.monotonic() + 5
    while not chunks and time.monotonic() < deadline:
        time.sleep(0.01)
    stream.write(encoded[len(encoded) // 2:])
    stream.close()
    pieces = [chunk for chunk in chunks if chunk]  # the thread also sends empty ones
    assert b"".join(pieces) == encoded and len(pieces) == 2
    assert decoded_or_none(coder, pieces[0]) != decoded_or_none(coder, encoded)  # fails, or reads past the end


def decoded_or_none(coder, encoded: bytes):
    try:
        return coder.decode_nested(encoded).value
    except Exception:
        return None


def test_local_runs_flush_only_whole_elements(monkeypatch):
    """runner_settings turns the timed flush off for the runner and its in-process workers: a two-worker
    multi_threading pipeline creates no time-flushed stream (Beam's default creates one per output)."""
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)  # Beam's own, so this can fail
    timed = []

    class CountedStream(data_plane.TimeBasedBufferingClosableOutputStream):
        def __init__(self, *args, **kwargs):
            timed.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(data_plane, "TimeBasedBufferingClosableOutputStream", CountedStream)
    options = parse_command_line(["--direct_num_workers=2"])
    runner_settings(options)
    with beam.Pipeline(options=options.pipeline) as p:
        counted = (p | beam.Create(range(200)) | beam.Map(lambda n: (n % 7, n)) | beam.GroupByKey()
                   | beam.MapTuple(lambda key, values: len(list(values))) | beam.CombineGlobally(sum))
        assert_that(counted, equal_to([200]))
    assert timed == []
