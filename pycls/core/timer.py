"""Timer (as pycls): wall-clock time of repeated calls."""

import time


class Timer:
    """Accumulates the time between tic() and toc() over many calls."""

    def __init__(self):
        self.reset()

    def tic(self):
        """Starts timing a call."""
        self.start_time = time.perf_counter()

    def toc(self):
        """Stops timing a call and updates the totals."""
        self.diff = time.perf_counter() - self.start_time
        self.total_time += self.diff
        self.calls += 1
        self.average_time = self.total_time / self.calls

    def reset(self):
        """Clears the totals."""
        self.total_time, self.calls, self.average_time = 0.0, 0, 0.0
        self.start_time, self.diff = 0.0, 0.0
