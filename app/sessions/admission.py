"""Load shedding before slowness: refuse new sessions while the device is already as busy as the admitted
annotators can bear.

A session count alone does not say whether the box keeps up: 12 annotators that think for seconds between clicks
leave the device idle most of the time, 12 that send clicks as fast as they can, or one other process on the
cores, do not. So a new session is refused (``CapacityExceeded``: 503 + Retry-After) while any of these holds:

- the bulk lane's queue (``DeviceExecutor.bulk.waiting``: calls waiting behind the one that runs) is longer than
  ``max_queue``;
- the 95th percentile of the device queue waits of the last ``window_s`` seconds, in the bulk or the instant
  lane (a lane with at least ``min_samples`` waits in the window), is above ``max_wait_ms``. Per lane, because
  the instant lane's many near-zero waits would otherwise hide a slow bulk lane in a pooled percentile. (The
  intake lane's waits are new sessions waiting for their encode: ``max_creating`` bounds them.);
- some call waited for the bulk lane during more than ``max_queued_share`` of the last ``window_s`` seconds.
  The lane runs one call at a time; with many annotators, the share of time its queue is not empty grows
  steadily with its use (about the square of it for random arrivals), before a percentile of finished waits
  reacts (measured with 100 simulated annotators on 2 cores: the wait rule alone admitted 62 sessions and the
  boxes reached 660 ms at p95). A lone annotator, whose calls come one after another, never makes a call
  wait, however heavy the model: the share stays 0;
- past half that share, ``paced_admissions`` sessions were already admitted in the window: a new session's load
  (its box, then a click every few seconds) shows in the lane only seconds after it is admitted, so admitting
  as fast as sessions are asked for overshoots;
- ``max_creating`` sessions are being opened (``refusal``'s ``creating``): encodes run one at a time, so more would
  only wait, each about to add load no lane measure sees yet.

All of them read what the admitted sessions experience right now; the waits leave the window by themselves, so
admission reopens a few seconds after the load drops. Existing sessions are never refused (their requests
keep their normal path): shedding applies to new work only.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from app.errors import CapacityExceeded
from app.sessions.executor import DeviceExecutor


@dataclass(frozen=True)
class AdmissionLimits:
    """When new sessions are refused (see ``app.config.Settings``, ``admission_*``); None turns a rule off."""

    max_queue: int | None = None
    max_wait_ms: float | None = None
    max_queued_share: float | None = None
    max_creating: int | None = None
    paced_admissions: int | None = None
    window_s: float = 10.0
    min_samples: int = 20


def p95(values: Iterable[float]) -> float | None:
    """The 95th percentile (nearest rank) of ``values``, None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class Admission:
    """Decides, from the executor's measured queue, whether a new session may start now."""

    def __init__(self, executor: DeviceExecutor, limits: AdmissionLimits, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.executor = executor
        self.limits = limits
        self._clock = clock
        self._admitted: deque[float] = deque(maxlen=256)  # when recent new sessions were admitted

    def recent_wait_p95_ms(self) -> float | None:
        """The higher lane p95 of the device queue waits that ended in the last ``window_s`` seconds (None: no
        lane had ``min_samples`` waits in the window)."""
        since = self._clock() - self.limits.window_s
        worst = None
        for lane in (self.executor.bulk, self.executor.instant):
            waits = [ms for at, ms in lane.recent_waits_ms if at >= since]
            if len(waits) >= self.limits.min_samples and (value := p95(waits)) is not None:
                worst = value if worst is None else max(worst, value)
        return worst

    def refusal(self, creating: int = 0) -> tuple[str, str] | None:
        """(limit, message) of the rule that refuses a new session now, or None to admit it.

        ``creating``: sessions being opened now (uploads read, not yet encoded). At ``max_creating`` a new one is
        refused: encodes run one at a time, so more would only wait, each admitted already and about to add its
        annotator's load, which none of the lane measures can see yet."""
        lim = self.limits
        if lim.max_creating is not None and creating >= lim.max_creating:
            return "creating", (f"capacity: {creating} new sessions are being opened "
                                f"(at most {lim.max_creating} at once)")
        if lim.max_queue is not None and (queued := self.executor.bulk.waiting) > lim.max_queue:
            return "queue", f"capacity: {queued} device calls are queued (at most {lim.max_queue} admit new sessions)"
        if lim.max_wait_ms is not None and (wait := self.recent_wait_p95_ms()) is not None and wait > lim.max_wait_ms:
            return "latency", (f"capacity: device queue wait p95 {wait:.0f} ms over the last {lim.window_s:g} s "
                               f"(at most {lim.max_wait_ms:g} ms admit new sessions)")
        if lim.max_queued_share is None:
            return None
        now = self._clock()
        share = self.executor.bulk.queued_share(lim.window_s, now)
        if share > lim.max_queued_share:
            return "queued", (f"capacity: device calls were queued {share:.0%} of the last {lim.window_s:g} s "
                              f"(at most {lim.max_queued_share:.0%} admit new sessions)")
        # Past half the limit, pace admissions: a new session's load (its box, then a click every few seconds)
        # shows in the lane only seconds after it is admitted, so admitting at the rate sessions are asked for
        # overshoots the limit (measured: from 36 to 59 live sessions in 20 s with the share still low).
        recent = sum(1 for at in self._admitted if at > now - lim.window_s)
        if lim.paced_admissions is not None and share > lim.max_queued_share / 2 and recent >= lim.paced_admissions:
            return "paced", (f"capacity: {recent} sessions were opened in the last {lim.window_s:g} s while device "
                             f"calls were queued {share:.0%} of it")
        return None

    def check(self, retry_after_s: int, on_refusal: Callable[[str], None] | None = None, *,
              creating: int = 0) -> None:
        """Raise ``CapacityExceeded`` (with ``retry_after_s``) when a new session must wait (``refusal``)."""
        refused = self.refusal(creating)
        if refused is None:
            self._admitted.append(self._clock())
            return
        limit, message = refused
        if on_refusal is not None:
            on_refusal(limit)
        raise CapacityExceeded(f"{message}; retry later", retry_after_s=retry_after_s)
