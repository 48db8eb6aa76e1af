"""How a lone process holds a limit under random 429s, simulated: the tests' model of a gateway and a worker
process (``tests/unit/test_ratelimit.py``), with the import's start as the benchmark shows it (the listing's
21 pages one at a time, then the details calls, from ``LONE_START``).

Random 429s that do not depend on the rate must become the controller's floor without cutting the rate
down to a fraction of the limit first; the table gives, over many draws, the accepted rate over the first
60 s and from 40 to 90 s as a share of what the limit lets through the noise, and the share of calls
answered 429.

    .venv/bin/python bench/noise_floor.py [--draws 48]
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.unit.test_ratelimit import Client, Gateway, run, tally  # noqa: E402
from transforms.core.ratelimit import LONE_START  # noqa: E402

CASES = ((0.05, 50, 1.0), (0.1, 50, 1.0), (0.2, 50, 0.1), (0.0, 50, 1.0), (0.0, 100, 0.1), (0.0, 20, 0.1))


class ListingFirst(Client):
    """A worker whose first ``pages`` calls go one at a time and take ``page_latency`` (the listing)."""

    def __init__(self, pages: int = 21, page_latency: float = 0.12, **kwargs):
        super().__init__(**kwargs)
        self.pages, self.page_latency, self.sent = pages, page_latency, 0

    def step(self, gateway: Gateway) -> None:
        self.deliver(self.t.now)
        if self.outbox is not None:
            epoch, self.outbox = self.outbox, None
            latency = self.page_latency if self.sent <= self.pages else self.latency
            heapq.heappush(self.pending, (self.t.now + latency, epoch, gateway.answer(self.t.now + latency / 2)))
            return
        if len(self.pending) >= (1 if self.sent < self.pages else self.concurrency):
            self.t.now = self.pending[0][0]
            return
        self.limiter.acquire()
        self.sent += 1
        self.outbox = self.limiter._local.epoch


def draw(noise: float, limit: float, burst_s: float, seed: int) -> tuple[float, float, float]:
    client = ListingFirst(latency=0.05, initial_rate=LONE_START)
    run([client], Gateway(limit, burst_s, noise=noise, seed=seed), 90)
    allowed = limit * (1.0 - noise)
    start, _ = tally([client], 1000, 1060)
    later, _ = tally([client], 1040, 1090)
    _, refused = tally([client], 1000, 1090)
    return start / allowed, later / allowed, refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=48)
    args = parser.parse_args()
    print("| random 429s | limit | bucket | 0-60 s: mean (lowest) | 40-90 s: mean (lowest) "
          "| 429 share: mean (highest) |")
    print("|---|---|---|---|---|---|")
    for noise, limit, burst_s in CASES:
        draws = [draw(noise, limit, burst_s, seed) for seed in range(args.draws)]
        start, later, refused = zip(*draws, strict=True)
        print(f"| {noise:.0%} | {limit:g}/s | {burst_s:g} s | {statistics.mean(start):.3f} ({min(start):.3f}) | "
              f"{statistics.mean(later):.3f} ({min(later):.3f}) | "
              f"{statistics.mean(refused):.3f} ({max(refused):.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
