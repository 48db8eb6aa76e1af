"""One parse: the command line (or the API's request) becomes the import's options once, and every
step after it (the plan, preflight, the runner settings, the pipeline) reads that one object."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from pipeline import api, import_worker, main, preflight, validation
from pipeline.class_mapping import MappingEntry, load_class_mapping
from pipeline.errors import InputError

DATASET = "22222222-3333-4444-8555-666666666666"
ARGV = ["--roboflow_workspace", "ws", "--roboflow_project", "p", "--dataset_id", DATASET,
        "--supabase_url", "http://127.0.0.1:9", "--class_mapping", "auto", "--quiet"]
ROBOFLOW_KEY, SUPABASE_KEY = "rf_one_parse_unit_key_5c1e", "sb_secret_one_parse_unit_key_9f2a"
ENTRIES = [{"source_name": "helmet", "create_new": True, "color": "#C7FC00"},
           {"source_name": "background", "skip": True}]


@pytest.mark.parametrize("extra", [[], ["--plan"], ["--plan_json"]], ids=["import", "plan", "plan_json"])
def test_the_command_line_is_checked_and_parsed_once(extra, monkeypatch, capsys):
    checks, parsed, seen = [], [], []
    check, parse = validation.check_command_line, validation.parse_command_line
    monkeypatch.setattr(validation, "check_command_line", lambda flags: checks.append(flags) or check(flags))
    monkeypatch.setattr(validation, "parse_command_line", lambda argv: parsed.append(parse(argv)) or parsed[-1])

    def stop_at_preflight(opts, workers=1):
        seen.append(opts)
        raise InputError("stopped at preflight")

    monkeypatch.setattr(preflight, "check", stop_at_preflight)
    assert main.run(ARGV + extra) == main.EXIT_INPUT
    assert "error: stopped at preflight" in capsys.readouterr().err
    assert checks == [ARGV + extra] and len(parsed) == len(seen) == 1
    assert seen[0]._all_options is parsed[0].pipeline._all_options  # a view of the one parse, not a re-parse
    assert seen[0].plan is bool(extra)


def fake_worker(monkeypatch) -> list[dict]:
    """The worker process replaced by a recorder of its request and of the output directory at that moment."""
    requests = []

    async def run(self):
        out = Path(self.request["options"]["dead_letter_path"]).parent
        requests.append({"request": json.loads(json.dumps(self.request)), "out": out, "files": sorted(out.rglob("*"))})
        summary = {"complete": True, "new": 0, "changed": 0, "unchanged": 0, "failed": 0, "listed": 0,
                   "imported": 0, "annotations": 0, "seconds": 0.1}
        return summary, []

    monkeypatch.setattr(api.WorkerRun, "run", run)
    return requests


@pytest.mark.parametrize("given_dir", [True, False], ids=["output_dir", "temporary"])
def test_the_api_sends_option_values_with_the_class_mapping_inline_and_writes_no_file(given_dir, monkeypatch,
                                                                                       tmp_path):
    requests = fake_worker(monkeypatch)
    result = asyncio.run(api.streaming_import_from_roboflow(
        ROBOFLOW_KEY, "ws", "p", DATASET, ENTRIES, concurrency=7, job_id="job-9", version=3,
        supabase_url="http://127.0.0.1:9", supabase_key=SUPABASE_KEY,
        output_dir=str(tmp_path / "out") if given_dir else None,
        pipeline_args=["--batch_size", "20", "--concurrency", "4"]))
    assert result.success and len(requests) == 1
    request, out, files = requests[0]["request"], requests[0]["out"], requests[0]["files"]
    assert files == [] and "argv" not in request  # no mapping file, no argv strings
    assert out == tmp_path / "out" if given_dir else not out.exists()  # a temporary one is removed
    assert request["options"]["class_mapping"] == ENTRIES
    options_json = json.dumps(request["options"]) + json.dumps(request["pipeline_args"])
    assert ROBOFLOW_KEY not in options_json and SUPABASE_KEY not in options_json
    assert (request["roboflow_key"], request["supabase_key"]) == (ROBOFLOW_KEY, SUPABASE_KEY)

    # The worker's side: the same values, parsed once; the caller's flags win as a later flag does.
    options = validation.options_from_values(request["options"], request["pipeline_args"])
    opts = options.importer
    assert load_class_mapping(opts.class_mapping) == [MappingEntry("helmet", create_new=True, color="#C7FC00"),
                                                      MappingEntry("background", skip=True)]
    assert (opts.concurrency, opts.batch_size, opts.roboflow_version, opts.run_id) == (4, 20, 3, "job-9")
    assert (opts.quiet, opts.roboflow_api_url, opts.dead_letter_path) == (True, "https://api.roboflow.com",
                                                                           str(out / "dead_letters"))


def test_a_bad_inline_class_mapping_is_refused_by_the_file_checks_before_the_worker(monkeypatch):
    requests = fake_worker(monkeypatch)
    with pytest.raises(api.ImportInputError, match=r"^class mapping in the request entry 1 \('background'\) must "
                                                   r"set exactly one of"):
        asyncio.run(api.streaming_import_from_roboflow(
            ROBOFLOW_KEY, "ws", "p", DATASET, [ENTRIES[0], {"source_name": "background"}],
            supabase_url="http://127.0.0.1:9", supabase_key=SUPABASE_KEY))
    assert requests == []


@pytest.mark.parametrize("values,flags,match", [
    ({"concurrency": "10"}, [], r"^option concurrency must be an integer \(got str\)$"),
    ({"quiet": 1}, [], r"^option quiet must be true or false \(got int\)$"),
    ({"roboflow_rate_limit": True}, [], r"^option roboflow_rate_limit must be a number \(got bool\)$"),
    ({"roboflow_listing": "fast"}, [], r"^option roboflow_listing must be one of auto, token, offset"),
    ({"class_mapping": {"helmet": "x"}}, [], r"^option class_mapping must be a string or a list of entries"),
    ({"runner": "DirectRunner"}, [], r"^unknown option runner; "),
    ({}, ["--batch-size", "5"], r"^unknown option --batch-size; did you mean --batch_size\?$"),
])
def test_values_from_python_are_checked_like_flags(values, flags, match):
    with pytest.raises(InputError, match=match):
        validation.options_from_values(values, flags)


def test_the_worker_answers_a_bad_request_with_one_input_error_line(monkeypatch):
    """Nothing reaches the pipeline: the worker's parse is the one check, its error the caller's."""
    monkeypatch.setattr(main, "execute", lambda *args: pytest.fail("execute reached"))
    stream = io.StringIO()
    request = {"options": {"concurrency": 4}, "pipeline_args": ["--create-bucket"], "roboflow_key": ROBOFLOW_KEY,
               "supabase_key": SUPABASE_KEY}
    assert import_worker.run_import(request, import_worker.Channel(stream)) == import_worker.EXIT_INPUT
    messages = [json.loads(line) for line in stream.getvalue().splitlines()]
    error = "unknown option --create-bucket; did you mean --create_bucket?"
    assert messages == [{"kind": "input_error", "body": error}]
