"""Last step: every dead letter of every step, as JSON Lines under ``--dead_letter_path``.

One line per image that did not make it: image id, step, error type, redacted message, attempts,
time. One file (``dead_letters-00000-of-00001.jsonl``): letters are few, and one file is what a
person opens and what ``--retry_dead_letters`` reads. Written through Beam's FileSystems, so a
``gs://`` path works the same on Dataflow.

    (listing_dead, details_dead, upload_dead, write_dead) | beam.Flatten() | WriteDeadLetters(path)
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.core.records import DeadLetter

FILE_PREFIX = "dead_letters"
FILE_SUFFIX = ".jsonl"


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


class WriteDeadLetters(beam.PTransform):
    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def expand(self, letters):
        return (
            letters
            | "ToJson" >> beam.Map(DeadLetter.to_json)
            | "Write" >> beam.io.WriteToText(FileSystems.join(self.directory, FILE_PREFIX),
                                             file_name_suffix=FILE_SUFFIX, num_shards=1)
        )
