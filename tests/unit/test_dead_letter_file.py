"""The dead-letter sink: every step's streams into one file, written whole, replaced by a rerun."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from transforms.core.records import DeadLetter
from transforms.dead_letters import (
    FILE_NAME,
    WriteDeadLetters,
    dead_letter_files,
    read_dead_letters,
    write_dead_letter_file,
)


def write(directory: str, *streams: list[DeadLetter]) -> None:
    with BeamTestPipeline(runner="FnApiRunner") as p:
        (tuple(p | f"Stream{i}" >> beam.Create(letters) for i, letters in enumerate(streams))
         | beam.Flatten() | WriteDeadLetters(directory))


def test_letters_of_several_streams_end_in_one_file(tmp_path):
    listing = [DeadLetter.of("page:offset:0", "list", "x")]
    details = [DeadLetter.of(f"img{i}", "details", "404") for i in range(3)]
    write(str(tmp_path), listing, details, [])
    assert [p.rsplit("/", 1)[-1] for p in dead_letter_files(str(tmp_path))] == [FILE_NAME]
    assert sorted(letter.image_id for letter in read_dead_letters(str(tmp_path))) == \
        ["img0", "img1", "img2", "page:offset:0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]  # no temporary left behind


def test_a_run_without_letters_writes_no_file(tmp_path):
    write(str(tmp_path), [], [])
    assert list(tmp_path.iterdir()) == []
    assert read_dead_letters(str(tmp_path)) == []


def test_a_second_write_replaces_the_first_whole(tmp_path):
    """A retried write (Dataflow retries a failed bundle) or a rerun leaves one file with its own lines."""
    first = [DeadLetter.of(f"old{i}", "upload", "x").to_json() for i in range(5)]
    write_dead_letter_file(str(tmp_path), iter(first))
    write_dead_letter_file(str(tmp_path), iter([DeadLetter.of("new", "write", "y").to_json()]))
    assert [letter.image_id for letter in read_dead_letters(str(tmp_path))] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]
