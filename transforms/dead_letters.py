"""Last step: every dead letter of every step, as JSON Lines under ``--dead_letter_path``.

One line per image that did not make it: image id, step, error type, redacted message, attempts,
time. One file (``dead_letters-00000-of-00001.jsonl``, the name Beam's text sink gave it): letters are
few, and one file is what a person opens and what ``--retry_dead_letters`` reads. A run without letters
writes no file. Written through Beam's FileSystems, so a ``gs://`` path works the same on Dataflow.

    (*listing_dead, *details_dead, ...) | beam.Flatten() | WriteDeadLetters(path)

Each step hands on its letters as several streams, flattened here once: the FnApiRunner runs every
Flatten of several inputs, and every stage, one after another, and the letters' five flattens and Beam's
text sink (a stage before the listing, four after the last row) took 1.4 s of a 5,000-image run
(stage trace, 100/s). Now two stages run after the last row: the flatten with the grouping's write, then
the file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.core.records import DeadLetter

FILE_PREFIX = "dead_letters"
FILE_SUFFIX = ".jsonl"
FILE_NAME = f"{FILE_PREFIX}-00000-of-00001{FILE_SUFFIX}"


def dead_letter_glob(directory: str) -> str:
    return FileSystems.join(directory, f"{FILE_PREFIX}-*{FILE_SUFFIX}")


def dead_letter_files(directory: str) -> list[str]:
    """This run's non-empty dead-letter files."""
    return [m.path for m in FileSystems.match([dead_letter_glob(directory)])[0].metadata_list
            if m.size_in_bytes > 0]


def read_dead_letters(directory: str) -> list[DeadLetter]:
    """Every letter in the directory's dead-letter files (empty when there are none)."""
    return read_dead_letter_files([m.path for m in FileSystems.match([dead_letter_glob(directory)])[0].metadata_list])


def read_dead_letter_files(paths: list[str]) -> list[DeadLetter]:
    letters = []
    for path in paths:
        with FileSystems.open(path) as handle:
            for line in handle.read().decode("utf-8").splitlines():
                if line.strip():
                    letters.append(DeadLetter.from_json(line))
    return letters


def remove_dead_letters(directory: str) -> None:
    """Drop an earlier run's files so the directory holds this run's letters only."""
    paths = [m.path for m in FileSystems.match([dead_letter_glob(directory)])[0].metadata_list]
    if paths:
        FileSystems.delete(paths)


def write_dead_letter_file(directory: str, lines: Iterable[str]) -> str:
    """Every line into the one file, under a temporary name first: a reader never meets half a file,
    and a retried write (Dataflow retries a failed bundle) writes the whole file again."""
    path = FileSystems.join(directory, FILE_NAME)
    temporary = FileSystems.join(directory, f".{FILE_NAME}.{uuid.uuid4().hex}.tmp")  # outside the glob
    with FileSystems.create(temporary) as handle:
        for line in lines:
            handle.write(line.encode("utf-8") + b"\n")
    FileSystems.rename([temporary], [path])  # replaces an earlier attempt's file (os.rename; a GCS copy)
    return path


class WriteDeadLetters(beam.PTransform):
    """Dead letters -> the one file, written once every letter is in (a grouping on one key)."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def expand(self, letters):
        directory = self.directory
        return (
            letters
            | "ToJson" >> beam.Map(lambda letter: (0, DeadLetter.to_json(letter)))
            | "Gather" >> beam.GroupByKey()
            | "WriteFile" >> beam.MapTuple(lambda _, lines: write_dead_letter_file(directory, lines))
        )
