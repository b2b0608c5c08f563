"""Exactly-once prompts: a client's idempotency key and the reply it got, per session.

A mutating prompt may carry a client-chosen key (the ``Idempotency-Key`` header). The key is recorded in the
prompt history together with the reply (``PromptRecord.key`` / ``PromptRecord.reply``), so a retry of the same
request, on this process or on one that restored the session from its history, gets the recorded reply
back without running the prompt again. A key reused for a different request is refused: answering it with
another prompt's reply would hide that the new prompt was never applied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidInput
from app.schemas.paths import IDEMPOTENCY_KEY_HEADER
from app.sessions.store import PromptRecord


def request_fingerprint(op: str, object_id: int, args: dict[str, Any]) -> str:
    """Hex sha256 of what a prompt asks for (op, object, normalized arguments as recorded in the history)."""
    text = json.dumps({"op": op, "object_id": object_id, "args": args}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RecordedReply:
    """What one key was used for (``fingerprint``) and the reply the client got (``PromptOutcome.to_json``)."""

    fingerprint: str
    reply: dict[str, Any]


def replies_from_history(history: Iterable[PromptRecord]) -> dict[str, RecordedReply]:
    """Key -> recorded reply of every keyed prompt in ``history`` (a restored session answers retries too)."""
    out: dict[str, RecordedReply] = {}
    for p in history:
        if p.key is not None and p.reply is not None:
            out[p.key] = RecordedReply(request_fingerprint(p.op, p.object_id, p.args), p.reply)
        elif p.op == "refine" and p.reply is not None:
            # A deferred refinement completes the replies of the "both" clicks it covered (app.sessions.refinement).
            for key, reply in p.reply.get("completes", {}).items():
                if key in out:
                    out[key] = RecordedReply(out[key].fingerprint, reply)
    return out


def recorded_reply(replies: dict[str, RecordedReply], key: str | None, fingerprint: str) -> dict[str, Any] | None:
    """The reply already given for ``key`` (None: a new key, or no key); ``InvalidInput`` when the key was
    used for a different request."""
    if key is None or (recorded := replies.get(key)) is None:
        return None
    if recorded.fingerprint != fingerprint:
        raise InvalidInput(f"{IDEMPOTENCY_KEY_HEADER}: key {key!r} was already used for a different prompt; "
                           "send a new key for a new prompt", field=IDEMPOTENCY_KEY_HEADER)
    return recorded.reply
