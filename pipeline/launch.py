"""What the importer needs from a Dataflow launch: a worker cap, keys from Secret Manager, remote dead
letters, and each SDK process's share of the job's Roboflow rate limit.

Roboflow limits requests per API key, not per worker. There is no global token bucket: every SDK
process holds its own (shared by all its threads, see ``transforms/clients/resources.py``), sized
``--roboflow_rate_limit / (workers x SDK processes per worker)`` until the processes' beats
(``transforms/clients/rate_peers.py``, migration 0008) say how many send on the key, and then the
limit divided among those. Dataflow's Python workers start one SDK process per vCPU unless
``--experiments=no_use_multiple_sdk_containers`` is given, hence the machine type matters:

    >>> sdk_processes_per_worker(PipelineOptions(["--machine_type=n1-standard-4"]))
    4
    >>> dataflow_processes(PipelineOptions(["--max_num_workers=5", "--machine_type=n1-standard-4"]))
    20

Threads do not divide the share: they draw from their process's bucket. The static split is where a
process starts and what it keeps without migration 0008: it never exceeds the limit, whatever the
autoscaler does, but while the autoscaler runs fewer workers than ``--max_num_workers`` the job stays
below it. With the beats, a new process starts at the static split and announces itself at once; the
others lower their part at their next beat and a part grows only when two beats agree, so the job can
exceed its limit by one static part for at most a beat (2 s); 429s are waited out. With migration 0009,
processes at a few calls a second each take turns on the wall clock (``transforms/core/ratelimit.py``),
which takes the workers' clocks to agree to a few milliseconds: inferred from their VMs keeping NTP
time, not measured (nothing here reaches Dataflow).
"""

from __future__ import annotations

import re

from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, WorkerOptions

from pipeline.errors import InputError
from pipeline.options import ImportOptions

SINGLE_SDK_PROCESS = "no_use_multiple_sdk_containers"
SECRET_EXAMPLE = "projects/PROJECT/secrets/NAME/versions/latest"
# Shared-core machine types (Compute Engine docs): e2-micro/small/medium have 2 vCPUs, f1/g1 one.
SHARED_CORE_VCPUS = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "f1-micro": 1, "g1-small": 1}
_CUSTOM = re.compile(r"^(?:[a-z0-9]+-)?custom-(\d+)-\d+(?:-ext)?$")
_PREDEFINED = re.compile(r"^[a-z][a-z0-9]*-(?:standard|highmem|highcpu|megamem|ultramem|hypermem)-(\d+)(?:-lssd)?$")


def vcpus(machine_type: str) -> int:
    """vCPUs of a Compute Engine machine type: ``n1-standard-4`` -> 4, ``custom-8-30720`` -> 8."""
    name = machine_type.strip().lower().rsplit("/", 1)[-1]  # also a full machineTypes/... URL
    if name in SHARED_CORE_VCPUS:
        return SHARED_CORE_VCPUS[name]
    match = _CUSTOM.fullmatch(name) or _PREDEFINED.fullmatch(name)
    if not match or int(match.group(1)) <= 0:
        raise InputError(f"cannot tell the vCPUs of --machine_type {machine_type} (they set how many SDK "
                         "processes share --roboflow_rate_limit); use a type like n1-standard-4, or add "
                         f"--experiments={SINGLE_SDK_PROCESS} for one SDK process per worker")
    return int(match.group(1))


def sdk_processes_per_worker(options: PipelineOptions) -> int:
    """One SDK process per vCPU (Dataflow's default for Python), or one with the experiment."""
    if options.view_as(DebugOptions).lookup_experiment(SINGLE_SDK_PROCESS):
        return 1
    machine_type = options.view_as(WorkerOptions).machine_type
    if not machine_type:
        raise InputError("--machine_type is required on Dataflow (its vCPUs set how many SDK processes share "
                         "--roboflow_rate_limit); pass e.g. --machine_type n1-standard-2")
    return vcpus(machine_type)


def max_workers(options: PipelineOptions) -> int:
    """The most workers the job can have: ``--max_num_workers`` (autoscaling) or ``--num_workers``."""
    worker = options.view_as(WorkerOptions)
    cap = worker.max_num_workers or 0
    if worker.autoscaling_algorithm == "NONE":
        cap = max(cap, worker.num_workers or 0)
    if cap <= 0:
        raise InputError("--max_num_workers is required on Dataflow: Roboflow's rate limit is per key, so the "
                         "job's workers must be capped to share it; pass e.g. --max_num_workers 4")
    return cap


def dataflow_processes(options: PipelineOptions) -> int:
    """SDK processes the job can run at most; each gets this fraction of ``--roboflow_rate_limit``."""
    return max_workers(options) * sdk_processes_per_worker(options)


def check_dataflow(options: PipelineOptions) -> int:
    """Refuse a Dataflow launch that would leak keys or lose dead letters; return the SDK process count."""
    opts = options.view_as(ImportOptions)
    for flag, value, env_var in (("--roboflow_api_key_secret", opts.roboflow_api_key_secret, "ROBOFLOW_API_KEY"),
                                 ("--supabase_key_secret", opts.supabase_key_secret, "SUPABASE_SERVICE_ROLE_KEY")):
        if not value:
            raise InputError(f"{flag} is required on Dataflow: workers cannot see ${env_var} and pipeline "
                             f"options are shown in the Dataflow console; store the key in Secret Manager and "
                             f"pass {flag} {SECRET_EXAMPLE}")
    path = opts.dead_letter_path or ""
    if "://" not in path or path.startswith("file://"):
        raise InputError(f"--dead_letter_path {path} is on the launching machine, Dataflow workers cannot "
                         "write there; pass a bucket path, e.g. --dead_letter_path gs://BUCKET/import/dead_letters")
    return dataflow_processes(options)
