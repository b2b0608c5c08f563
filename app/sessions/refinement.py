"""Deferred, coalesced decoder refinement of ``both`` clicks, per session.

A ``both`` click is two steps: the GRU corrector (about a millisecond, the annotator's instant feedback) and the
decoder (tens to hundreds of ms). The manager runs and records the GRU step at once (its own history entry and
version, its frame streamed right after that commit) and leaves the decoder step here: one refinement per
session waits for the device's bulk lane and, when its turn comes, refines every object that is due once, from
its latest state. A newer prompt of the same session makes a waiting refinement withdraw (``interrupt``), so
five quick clicks on an object cost five GRU steps and one decoder step, not five of each. The refinement is
recorded as a ``refine`` history entry (``Predictor.refine`` on replay), so restores stay exact.

Each ``both`` click's reply waits for the refinement that covered it (``Waiter.future``). A later prompt on the
object that is not a ``both`` click (undo, box, reset, mask, a ``decoder`` click ...) drops the object's
pending refinement: refining now would undo the user's later intent; those waiters get None (their reply is
their GRU step). This module holds only the bookkeeping; the manager runs the refinement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

OutcomeT = TypeVar("OutcomeT")  # the GRU step's outcome, as the manager replies it

MAX_WITHDRAWALS = 8
"""A waiting refinement makes way for at most this many prompts in a row; then it keeps its place in the bulk
queue (the next prompt of the session waits for it). Without a bound, a client clicking faster than the device
frees up would never get the reply of its first ``both`` click."""


@dataclass
class Waiter(Generic[OutcomeT]):
    """One acknowledged ``both`` click waiting for its object's refinement.

    Attributes:
        gru: what the click's GRU step replied (``PromptOutcome``).
        steps: the click's GRU step changes (for the net change of click + refinement).
        key / fingerprint: the click's idempotency key and request fingerprint (the refinement records the
            complete reply under the key).
        started: ``time.perf_counter()`` when the click arrived (the complete reply's ``total``).
        future: set to the complete outcome, or None when the refinement was dropped or failed.
    """

    gru: OutcomeT
    steps: list[Any]
    key: str | None
    fingerprint: str
    started: float
    future: asyncio.Future[OutcomeT | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PendingRefinements(Generic[OutcomeT]):
    """The objects of one session waiting for a decoder refinement, and the clicks waiting on them.

    Event loop thread only. ``prompts_arriving`` counts the prompts of the session between their arrival and
    the end of their work under the session lock: while it is non-zero a refinement does not start, unless it
    made way ``MAX_WITHDRAWALS`` times in a row already (``withdrawals``).
    """

    def __init__(self) -> None:
        self.due: dict[int, list[Waiter[OutcomeT]]] = {}
        self.prompts_arriving = 0
        self.withdrawals = 0
        self.give_up = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._by_key: dict[str, Waiter[OutcomeT]] = {}

    def arriving(self) -> None:
        """A prompt of this session arrived: a refinement waiting for the device withdraws (within the bound)."""
        self.prompts_arriving += 1
        if self.withdrawals < MAX_WITHDRAWALS:
            self.give_up.set()

    def withdrew(self) -> None:
        """The refinement made way for a prompt."""
        self.withdrawals += 1

    def refined(self) -> None:
        self.withdrawals = 0

    def started(self) -> None:
        """The prompt announced by ``arriving`` runs now (or failed before running)."""
        self.prompts_arriving -= 1

    def add(self, object_id: int, waiter: Waiter[OutcomeT]) -> None:
        self.due.setdefault(object_id, []).append(waiter)
        # Resolved waiters leave the key index here (their complete reply is in the record by then).
        self._by_key = {k: w for k, w in self._by_key.items() if not w.future.done()}
        if waiter.key is not None:
            self._by_key[waiter.key] = waiter

    def unresolved(self, key: str | None) -> Waiter[OutcomeT] | None:
        """The waiting click sent with idempotency key ``key``, while its refinement has not answered it: a
        resend of that click waits for the same complete reply rather than returning the GRU step alone."""
        waiter = self._by_key.get(key) if key is not None else None
        return waiter if waiter is not None and not waiter.future.done() else None

    def take(self) -> dict[int, list[Waiter[OutcomeT]]]:
        """Every due object with its waiters (the refinement about to run owns them now)."""
        due, self.due = self.due, {}
        return due

    def drop(self, object_id: int) -> None:
        """A later prompt on the object supersedes its pending refinement: its waiters get None."""
        finish(self.due.pop(object_id, []), None)

    def drop_all(self) -> None:
        """The session ended: every waiter gets None (the GRU steps were recorded; no refinement follows)."""
        for waiters in self.take().values():
            finish(waiters, None)

    def may_start(self) -> bool:
        return bool(self.due) and (self.prompts_arriving == 0 or self.withdrawals >= MAX_WITHDRAWALS)

    def schedule(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``run`` (the manager's refinement loop) unless one runs already or nothing may start."""
        if self.task is None and self.may_start():
            self.task = asyncio.get_running_loop().create_task(run())


def finish(waiters: list[Waiter[OutcomeT]], outcome: OutcomeT | None) -> None:
    """Resolve ``waiters`` with ``outcome``, skipping any already resolved."""
    for w in waiters:
        if not w.future.done():
            w.future.set_result(outcome)
