"""How many 429s processes that share one key get from collisions alone, below the key's limit.

Each process paces its own calls evenly (its limiter), but the processes do not know each other's
phases, so their calls bunch at the gateway now and then. A gateway's token bucket absorbs a bunch
only up to its size; at 20/s with 0.1 s of burst that is 2 tokens, and four processes sending 5/s each
collide often enough that no controller of ours can hold the bench's 5 % target there. This script
shows how often, with no controller at all: P processes at a fixed total rate, each evenly paced from a
random phase, each call delayed by |N(0, jitter)| (threads waking, the network), against the
emulator's bucket (``pipeline/testing/roboflow_emulator/faults.py``). With turns (migration 0009,
``AdaptiveRateLimiter``), each process sends only in its turn of each second, at its rate times their
number: the gateway sees one paced process at a time.

    .venv/bin/python bench/collisions.py
"""

from __future__ import annotations

import random

SHARES = (0.6, 0.7, 0.8, 0.9)


def refused_share(total: float, processes: int, limit: float, burst_s: float, jitter: float,
                  seconds: float = 200.0, seed: int = 1, turns: bool = False) -> float:
    rng = random.Random(seed)
    capacity = max(1.0, limit * burst_s)
    per_process = total / processes
    arrivals = []
    for rank in range(processes):
        sent = rng.random() / per_process  # in turns: the process's own time, one second a frame
        while sent < seconds:
            frame, into = divmod(sent, 1.0)
            when = frame + (rank + into) / processes if turns else sent
            arrivals.append(when + abs(rng.gauss(0.0, jitter)))
            sent += 1.0 / per_process
    arrivals.sort()
    tokens, last, refused = capacity, 0.0, 0
    for now in arrivals:
        tokens = min(capacity, tokens + (now - last) * limit)
        last = now
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            refused += 1
    return refused / len(arrivals)


def main() -> None:
    print("share of calls refused (429) by collisions alone; mean of 10 random phase draws")
    print(f"| limit, bucket | processes | jitter | turns | {' | '.join(f'sent {s:.0%} of limit' for s in SHARES)} |")
    print("|---|---|---|---|" + "---|" * len(SHARES))
    for limit, burst_s in ((20.0, 0.1), (50.0, 0.1), (20.0, 1.0)):
        for processes in (1, 2, 4):
            for jitter in (0.005, 0.05):
                for turns in (False, True) if processes > 1 else (False,):
                    cells = [sum(refused_share(share * limit, processes, limit, burst_s, jitter, seed=seed,
                                               turns=turns) for seed in range(10)) / 10 for share in SHARES]
                    print(f"| {limit:.0f}/s, {burst_s} s | {processes} | {jitter * 1000:.0f} ms | "
                          f"{'yes' if turns else 'no'} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")


if __name__ == "__main__":
    main()
