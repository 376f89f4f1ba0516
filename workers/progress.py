"""Progress of long work on one line of stderr."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Progress:
    """events/s and ETA on one line of stderr (a new line per update when not a terminal)."""

    label: str
    total: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    interval: float = 0.5
    done: int = 0
    _start: float = field(default_factory=time.monotonic)
    _shown: float = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self._shown >= self.interval:
            self._show()

    def finish(self) -> None:
        self._show(final=True)

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self._start, 1e-9)

    def _show(self, final: bool = False) -> None:
        self._shown = time.monotonic()
        rate = self.rate
        left = max(self.total - self.done, 0)
        eta = "--" if not rate else time.strftime("%H:%M:%S", time.gmtime(left / rate))
        line = (f"{self.label}: {self.done}/{max(self.total, self.done)} events"
                f"  {rate:,.0f} ev/s  ETA {eta}")
        tty = self.out.isatty()
        self.out.write(("\r" + line) if tty else line + "\n")
        if final and tty:
            self.out.write("\n")
        self.out.flush()
