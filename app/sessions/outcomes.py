"""What an acknowledged prompt returns: one outcome per request, one step outcome per model step.

The same shape is recorded with a prompt's idempotency key (``to_json``) and read back for a retry
(``from_json``), so a resent prompt gets exactly the reply the first send got.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.sessions.changes import Bbox


@dataclass(frozen=True)
class StepOutcome:
    """One model step of an acknowledged prompt: the object's version after it, its changed voxel count and
    their inclusive bbox (None when nothing changed), its stage timings."""

    step: str
    version: int
    changed: int
    bbox: Bbox | None
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class PromptOutcome:
    """The result of one acknowledged prompt.

    ``changed``/``bbox`` are the net change of the whole request; ``steps`` has one entry per model step.
    ``replayed``: a retry with a known idempotency key, answered from the history (nothing ran).
    """

    object_id: int
    version: int
    changed: int
    bbox: Bbox | None
    steps: list[StepOutcome]
    timings_ms: dict[str, float]
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The reply as recorded with the prompt's idempotency key (``replayed`` is not part of it)."""
        d = asdict(self)
        del d["replayed"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PromptOutcome:
        """A recorded reply, marked ``replayed``."""

        def box(b: Any) -> Bbox | None:
            return None if b is None else tuple(int(v) for v in b)  # type: ignore[return-value]

        steps = [StepOutcome(s["step"], int(s["version"]), int(s["changed"]), box(s["bbox"]), dict(s["timings_ms"]))
                 for s in d["steps"]]
        return cls(int(d["object_id"]), int(d["version"]), int(d["changed"]), box(d["bbox"]), steps,
                   dict(d["timings_ms"]), replayed=True)
