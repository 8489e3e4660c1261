"""A one-line progress bar for interactive runs; silent when stderr is not a terminal (jobs, CI)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, prefix: str = "", enabled: bool | None = None, width: int = 24):
        self.total, self.prefix, self.width = max(total, 1), prefix, width
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()

    def update(self, done: int, suffix: str = "") -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total)
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r{self.prefix} [{bar}] {done}/{self.total} {rate:.1f} it/s {suffix}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
