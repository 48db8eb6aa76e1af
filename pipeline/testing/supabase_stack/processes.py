"""Child processes that cannot outlive the stack, and a sweep for leftovers of crashed runs.

Two layers, because neither is enough alone:

* every child gets PR_SET_PDEATHSIG, so the kernel signals it when its parent dies (even on SIGKILL).
  The signal is tied to the *thread* that forked the child, so all children are forked from one
  long-lived spawner thread. `subprocess.Popen(user=...)` calls setreuid() before preexec_fn, and a
  credential change clears the death signal, so setting it in preexec_fn (after setreuid) is the
  order that sticks.
* a registry of running stacks (one JSON file per stack in the temp dir) lets the next stack start-up
  kill what a crashed owner left behind (the small window before prctl, or a frozen child) and remove
  its temporary workdir.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

REGISTRY_DIR = Path(tempfile.gettempdir()) / "supabase-stack-registry"


def process_start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot), None if it is gone or a zombie.

    Pairs with the pid to tell a leftover child from an unrelated process that reused its pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(pid: int, start_time: int | None = None) -> bool:
    """Whether `pid` is alive (and, when given, still the process that started at `start_time`)."""
    current = process_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def _death_signal_preexec(death_signal: int, parent_pid: int):
    def set_death_signal() -> None:
        _prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return set_death_signal


class ChildSpawner:
    """Forks every child from one dedicated thread so PR_SET_PDEATHSIG follows the stack's lifetime."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supabase-stack-spawner")

    def popen(self, args: list[str], *, death_signal: int = signal.SIGKILL, **kwargs) -> subprocess.Popen:
        preexec = _death_signal_preexec(death_signal, os.getpid())
        future = self._executor.submit(subprocess.Popen, args, preexec_fn=preexec, **kwargs)
        return future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def terminate(proc: subprocess.Popen, first_signal: int, timeout: float) -> None:
    """Send `first_signal`, wait up to `timeout`, then SIGKILL; always reaps the child."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(first_signal)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class StackRegistry:
    """One JSON record per live stack: owner pid, children, and the temp workdir to remove."""

    def __init__(self, stack_id: str, directory: Path = REGISTRY_DIR) -> None:
        self.directory = directory
        self.path = directory / f"{stack_id}.json"

    def write(self, *, children: dict[str, int], workdir: Path, remove_workdir: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        owner = os.getpid()
        record = {
            "owner_pid": owner,
            "owner_start_time": process_start_time(owner),
            "children": [
                {"name": name, "pid": pid, "start_time": process_start_time(pid)} for name, pid in children.items()
            ],
            "workdir": str(workdir),
            "remove_workdir": remove_workdir,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def sweep_orphans(directory: Path = REGISTRY_DIR) -> list[int]:
    """Kill the children of stacks whose owner died, remove their temp workdirs; returns killed pids."""
    killed: list[int] = []
    if not directory.is_dir():
        return killed
    for record_path in directory.glob("*.json"):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        if is_running(record["owner_pid"], record.get("owner_start_time")):
            continue
        for child in record.get("children", []):
            if is_running(child["pid"], child.get("start_time")):
                _kill_leftover(child["pid"], child.get("name", ""))
                killed.append(child["pid"])
        if record.get("remove_workdir"):
            shutil.rmtree(record["workdir"], ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            record_path.unlink()
    return killed


def _kill_leftover(pid: int, name: str) -> None:
    """SIGQUIT lets a postmaster take its backends down; SIGKILL whatever is still there after 3 s."""
    first = signal.SIGQUIT if name == "postgres" else signal.SIGKILL
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and process_start_time(pid) is not None:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def log_tail(path) -> str:
    """The end of a child's log, for an error message."""
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""
