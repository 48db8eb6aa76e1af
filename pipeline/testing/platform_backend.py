"""A stand-in for the platform's web service: one event loop that awaits the import while a heartbeat
task ticks every 10 ms, run as its own process (``python -m pipeline.testing.platform_backend``).

Its own process because the stand-ins (Roboflow emulator, Storage double, gateway) are Python threads
of the test process: sharing their GIL, the heartbeat would measure them, not the importer. Here the
loop shares its process with nothing but the import's parent side, as in the platform.

stdin: one JSON object, the keyword arguments of ``streaming_import_from_roboflow``. stdout: one JSON
object with the heartbeat figures, the progress calls and the result's platform fields. With
``--idle SECONDS`` it only beats for that long (the machine's own baseline, bench/api_heartbeat.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

from pipeline.api import streaming_import_from_roboflow

TICK = 0.01


def heartbeat_figures(ticks: list[float]) -> dict:
    """Fewest ticks in any one-second window inside the run, and the longest gap between two ticks."""
    end = ticks[-1]
    per_second = [sum(1 for t in ticks[i:i + 200] if t < start + 1.0)
                  for i, start in enumerate(ticks) if start + 1.0 <= end]
    gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)]
    return {"ticks": len(ticks), "seconds": end - ticks[0], "min_ticks_per_second": min(per_second),
            "max_gap": max(gaps)}


async def heartbeat(ticks: list[float]) -> None:
    while True:
        ticks.append(time.monotonic())
        await asyncio.sleep(TICK)


async def idle(seconds: float) -> dict:
    ticks: list[float] = []
    beating = asyncio.ensure_future(heartbeat(ticks))
    await asyncio.sleep(seconds)
    beating.cancel()
    return {"heartbeat": heartbeat_figures(ticks)}


async def serve(arguments: dict) -> dict:
    loop_thread = threading.get_ident()
    ticks: list[float] = []
    calls: list[list] = []

    def progress_callback(processed: int, total: int, message: str) -> None:
        calls.append([processed, total, message, threading.get_ident() == loop_thread])

    beating = asyncio.ensure_future(heartbeat(ticks))
    await asyncio.sleep(TICK)
    result = await streaming_import_from_roboflow(**arguments, progress_callback=progress_callback)
    ticks.append(time.monotonic())
    beating.cancel()
    fields = ("success", "images_imported", "annotations_imported", "images_skipped", "images_failed", "errors")
    return {"heartbeat": heartbeat_figures(ticks), "calls": calls,
            "result": {name: getattr(result, name) for name in fields}}


def main() -> None:
    if sys.argv[1:2] == ["--idle"]:
        print(json.dumps(asyncio.run(idle(float(sys.argv[2])))))
        return
    arguments = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(serve(arguments))))


if __name__ == "__main__":
    main()
