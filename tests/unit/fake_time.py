"""A fake clock for the retry and rate-limit tests: time moves only when someone sleeps."""


class FakeTime:
    """A clock whose ``sleep`` advances it.

    A real sleep always lets some time pass; a fake one that advanced by 1e-14 s could be absorbed by
    float rounding at t=1000 and never let the clock move, so each sleep advances at least 1 µs.
    """

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += max(seconds, 1e-6)
