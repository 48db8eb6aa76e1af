"""Where a key comes from, without the key: an environment variable locally, Secret Manager on Dataflow.

A :class:`SecretRef` is what pipeline options and DoFns carry (it is safe to pickle, log and show in
the Dataflow console); :meth:`SecretRef.resolve` reads the value inside the worker's ``setup()``.

    ref = SecretRef(env_var="ROBOFLOW_API_KEY")
    ref = SecretRef(secret_version="projects/p/secrets/roboflow/versions/latest")
    key = ref.resolve()
"""

from __future__ import annotations

import dataclasses
import os
import re

from transforms.core.redact import register_secret

_VERSION_NAME = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")


class MissingSecret(LookupError):
    pass


@dataclasses.dataclass(frozen=True)
class SecretRef:
    env_var: str | None = None
    secret_version: str | None = None

    def __post_init__(self) -> None:
        if bool(self.env_var) == bool(self.secret_version):
            raise ValueError("a SecretRef names exactly one of env_var or secret_version")
        if self.secret_version and not _VERSION_NAME.fullmatch(self.secret_version):
            raise ValueError(
                f"{self.secret_version!r} is not a Secret Manager version name "
                "(projects/PROJECT/secrets/NAME/versions/VERSION)"
            )

    def describe(self) -> str:
        return f"${self.env_var}" if self.env_var else f"secret {self.secret_version}"

    def resolve(self) -> str:
        if self.env_var:
            value = os.environ.get(self.env_var, "").strip()
            if not value:
                raise MissingSecret(f"environment variable {self.env_var} is not set")
        else:
            try:
                from apache_beam.utils.secret import GcpSecret
            except ImportError as exc:  # the [gcp] extra is not installed
                raise MissingSecret(
                    f"reading {self.secret_version} needs apache-beam[gcp] on the workers"
                ) from exc
            try:
                value = GcpSecret(version_name=self.secret_version).get_secret_bytes().decode("utf-8").strip()
            except RuntimeError as exc:  # Beam wraps every failure (no credentials, no access, not found)
                cause = str(exc).rsplit(" with exception ", 1)[-1]
                raise MissingSecret(f"cannot read {self.secret_version} from Secret Manager ({cause[:200]})") from None
            if not value:
                raise MissingSecret(f"{self.secret_version} is empty")
        register_secret(value)
        return value
