import datetime
import json
import pickle
import sys

import pytest

from transforms.core.convert import DetailsError, ImageDataError
from transforms.core.records import DeadLetter
from transforms.core.redact import redact
from transforms.core.retry import PermanentError, TransientError
from transforms.core.secrets import MissingSecret, SecretRef

# ---- DeadLetter -------------------------------------------------------------------------------


def test_dead_letter_round_trips_through_json():
    letter = DeadLetter.of("IMG1", "download", TransientError("http_503", "Service Unavailable"), attempts=8)
    line = letter.to_json()
    assert "\n" not in line
    assert DeadLetter.from_json(line) == letter
    data = json.loads(line)
    assert set(data) == {"image_id", "step", "error_type", "message", "attempts", "time"}
    assert data["image_id"] == "IMG1" and data["step"] == "download" and data["attempts"] == 8


def test_dead_letter_keeps_non_ascii_text():
    letter = DeadLetter.of("IMG1", "details", ValueError("étiquette « casque » inconnue"))
    assert "étiquette « casque »" in letter.to_json()
    assert DeadLetter.from_json(letter.to_json()).message == "étiquette « casque » inconnue"


def test_dead_letter_from_json_ignores_unknown_fields_and_defaults_missing_ones():
    line = json.dumps({"image_id": "I", "step": "s", "error_type": "E", "message": "m", "extra": 1})
    assert DeadLetter.from_json(line) == DeadLetter("I", "s", "E", "m", attempts=1, time="")


@pytest.mark.parametrize(
    ("error", "expected_type"),
    [
        (TransientError("http_429", "slow down"), "http_429"),
        (PermanentError("http_404", "gone"), "http_404"),
        (ImageDataError("truncated_image", "short", retryable=True), "truncated_image"),
        (DetailsError("unmapped_class", "labels with no class mapping entry: ['dog']"), "unmapped_class"),
        (KeyError("x"), "KeyError"),
        (RuntimeError("boom"), "RuntimeError"),
        ("plain text reason", "Error"),
    ],
)
def test_dead_letter_error_type_comes_from_kind_then_class_name(error, expected_type):
    assert DeadLetter.of("I", "step", error).error_type == expected_type


def test_dead_letter_message_is_redacted():
    key = "rf-Dead_Letter-Key9"
    error = PermanentError("http_401", f'401 for url https://api.roboflow.com/ws?api_key={key} body {{"error": '
                                       f'{{"type": "OAuthException", "key": "{key}"}}}}')
    letter = DeadLetter.of("IMG", "details", error)
    assert key not in letter.message and key not in letter.to_json()
    assert letter.message == ('401 for url https://api.roboflow.com/ws?api_key=*** body '
                              '{"error": {"type": "OAuthException", "key": "***"}}')


def test_dead_letter_message_is_capped_after_redaction():
    key = "rf-Long_Message-Key1"
    letter = DeadLetter.of("IMG", "s", "x" * 1990 + f" api_key={key}")
    assert len(letter.message) == 2000
    assert "rf-Long" not in letter.message  # redacted before the cut, not a cut secret left behind


def test_dead_letter_attempts_come_from_the_error_when_present():
    error = TransientError("http_503", "down")
    error.attempts = 6
    assert DeadLetter.of("I", "s", error, attempts=1).attempts == 6
    assert DeadLetter.of("I", "s", RuntimeError("x"), attempts=3).attempts == 3


def test_dead_letter_time_is_utc_iso_seconds():
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    stamp = datetime.datetime.fromisoformat(DeadLetter.of("I", "s", "x").time)
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert stamp.microsecond == 0
    assert before <= stamp <= datetime.datetime.now(datetime.UTC)


def test_dead_letter_pickles():
    letter = DeadLetter.of("I", "s", "x")
    assert pickle.loads(pickle.dumps(letter)) == letter


# ---- SecretRef --------------------------------------------------------------------------------


def test_secret_ref_resolves_from_the_environment_and_strips(monkeypatch):
    monkeypatch.setenv("TEST_UNIT_RF_KEY", "  rf-Env_Secret-0001\n")
    assert SecretRef(env_var="TEST_UNIT_RF_KEY").resolve() == "rf-Env_Secret-0001"


def test_resolved_secret_is_registered_for_redaction(monkeypatch):
    value = "weird-shaped-env-secret-77"
    monkeypatch.setenv("TEST_UNIT_RF_KEY2", value)
    SecretRef(env_var="TEST_UNIT_RF_KEY2").resolve()
    assert redact(f"header X-Whatever: {value} end") == "header X-Whatever: *** end"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_or_blank_env_var_is_missing_secret(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("TEST_UNIT_ABSENT_KEY", raising=False)
    else:
        monkeypatch.setenv("TEST_UNIT_ABSENT_KEY", value)
    with pytest.raises(MissingSecret, match="TEST_UNIT_ABSENT_KEY"):
        SecretRef(env_var="TEST_UNIT_ABSENT_KEY").resolve()


def test_missing_secret_is_a_lookup_error():
    assert issubclass(MissingSecret, LookupError)


@pytest.mark.parametrize("kwargs", [{}, {"env_var": "A", "secret_version": "projects/p/secrets/s/versions/1"},
                                    {"env_var": "", "secret_version": ""}])
def test_secret_ref_names_exactly_one_source(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef(**kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "roboflow-key",
        "projects/p/secrets/s",
        "projects/p/secrets/s/versions/",
        "projects//secrets/s/versions/1",
        "projects/p/secrets/s/versions/1/extra",
        "projects/my project/secrets/s/versions/latest",
        "https://secretmanager.googleapis.com/v1/projects/p/secrets/s/versions/1",
    ],
)
def test_bad_secret_version_name_is_value_error(name):
    with pytest.raises(ValueError, match="not a Secret Manager version name"):
        SecretRef(secret_version=name)


def test_secret_version_name_with_trailing_newline_is_value_error():
    with pytest.raises(ValueError):
        SecretRef(secret_version="projects/p/secrets/s/versions/1\n")


def test_good_secret_version_names_are_accepted_and_described():
    ref = SecretRef(secret_version="projects/my-proj/secrets/roboflow/versions/latest")
    assert ref.describe() == "secret projects/my-proj/secrets/roboflow/versions/latest"
    assert SecretRef(env_var="ROBOFLOW_API_KEY").describe() == "$ROBOFLOW_API_KEY"


def test_secret_ref_is_safe_to_pickle_and_show():
    ref = SecretRef(env_var="ROBOFLOW_API_KEY")
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert "ROBOFLOW_API_KEY" in repr(ref)


def test_secret_version_is_read_through_beam_gcp_secret(monkeypatch):
    import apache_beam.utils.secret as beam_secret

    requested = []

    class FakeGcpSecret:
        def __init__(self, version_name):
            requested.append(version_name)

        def get_secret_bytes(self):
            return b"sm-secret-value-0099\n"

    monkeypatch.setattr(beam_secret, "GcpSecret", FakeGcpSecret)
    name = "projects/p/secrets/roboflow/versions/3"
    assert SecretRef(secret_version=name).resolve() == "sm-secret-value-0099"
    assert requested == [name]
    assert redact("leaked sm-secret-value-0099") == "leaked ***"


def test_secret_version_without_beam_gcp_is_missing_secret(monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam.utils.secret", None)  # makes the import fail
    with pytest.raises(MissingSecret, match=r"apache-beam\[gcp\]"):
        SecretRef(secret_version="projects/p/secrets/s/versions/1").resolve()
