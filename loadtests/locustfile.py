"""Simulated annotators for locust: upload a CT volume, segment a few objects with a box and clicks, leave.

    locust -f loadtests/locustfile.py --headless -u 20 -r 2 -t 3m --host http://127.0.0.1:8000 \\
        --csv benchmarks/results/load --html benchmarks/results/load.html

Each user, over and over: uploads the run's synthetic NIfTI volume (``loadtests.volume``, made once per
run), maybe opens the WebSocket diff stream (``--stream-prob``), then per object (``--objects``): draws a
box around it (the true box, imprecisely), and clicks (``--clicks``) where the current mask is most wrong
against the truth (``loadtests.annotator``), thinking ``--think`` seconds before each click; it undoes a
click that made the mask worse, and now and then one on a whim (``--undo-prob``); it downloads the mask as
NIfTI when done with the object. Finally it deletes the session, or walks away and lets it expire
(``--abandon-prob``).

Requests are named by step so that locust reports latency per step: ``create``, ``box``, ``click``,
``undo``, ``download``, ``delete``; ``mask`` is the viewer's refresh (GET npz after a prompt) when no
stream is open; with a stream, ``stream_open`` (connect + hello) and ``frame`` (click sent -> the mask
mirrored from the diff frames is at the click's version) are reported as WS requests. A step that fails
is reported with its status and error code and the user moves on to a new session. A 503 on ``create``
(server full) is a failure too: the user waits the Retry-After and tries again.

Per finished object, ``--object-log FILE`` appends a JSON line (Dice after the box and at the end, clicks,
undos), which shows that the clicks do what an annotator wants.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# locust puts this file's folder on sys.path, not the repository root that holds ``loadtests``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import HttpUser, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from app.schemas.prompts import MaskFormat, PromptReply  # noqa: E402
from app.schemas.sessions import SessionCreated  # noqa: E402
from client import _protocol as proto  # noqa: E402
from client._stream import MaskStream  # noqa: E402
from loadtests.annotator import choose_click, dice, jittered_box  # noqa: E402
from loadtests.volume import Workload, synthetic_workload, write_nifti  # noqa: E402

# The run's workload: built once in the ``init`` event (module state: locust builds its users in this process).
_WORKLOAD: dict[str, Any] = {}


def _range(text: str) -> tuple[float, float]:
    """"2-5" -> (2.0, 5.0); "3" -> (3.0, 3.0)."""
    lo, _, hi = text.partition("-")
    low, high = float(lo), float(hi or lo)
    if low < 0 or high < low:
        raise ValueError(f"expected MIN-MAX with 0 <= MIN <= MAX, got {text!r}")
    return low, high


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("annotators (loadtests/locustfile.py)")
    group.add_argument("--think", default="2-5", help="seconds of thought before each click, MIN-MAX")
    group.add_argument("--objects", default="2-4", help="objects per session, MIN-MAX")
    group.add_argument("--clicks", default="5-10", help="clicks per object, MIN-MAX")
    group.add_argument("--undo-prob", type=float, default=0.1, help="chance of undoing a click on a whim")
    group.add_argument("--stream-prob", type=float, default=0.3, help="chance a session keeps a stream open")
    group.add_argument("--abandon-prob", type=float, default=0.05,
                       help="chance a session is left to expire instead of deleted")
    group.add_argument("--click-mode", default="both", choices=["gru", "decoder", "both"])
    group.add_argument("--volume-shape", default="64,192,192", help="D,H,W of the synthetic volume")
    group.add_argument("--blobs", type=int, default=6, help="objects in the synthetic volume")
    group.add_argument("--object-log", default="", help="append one JSON line per finished object here")


@events.init.add_listener
def _build_workload(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # a library user that built its own Environment: defaults
        options = argparse.Namespace(volume_shape="64,192,192", blobs=6)
    shape = tuple(int(s) for s in options.volume_shape.split(","))
    if len(shape) != 3:
        raise ValueError(f"--volume-shape: expected D,H,W, got {options.volume_shape!r}")
    workload = synthetic_workload(shape, n_blobs=options.blobs)  # type: ignore[arg-type]
    folder = Path(tempfile.mkdtemp(prefix="loadtest-volume-"))
    _WORKLOAD.update(workload=workload, path=write_nifti(workload, folder / "ct.nii.gz"))
    # gevent's loop clock is only refreshed when the loop runs; after this file's imports and the volume
    # above (seconds on a busy machine) it is stale, and locust's --run-time timer, set right after this
    # event from that clock, would fire that much too early.
    gevent.get_hub().loop.update_now()


class StepFailed(Exception):
    """A request of the session's flow failed (already reported to locust); the session is given up."""


class Annotator(HttpUser):
    """One person annotating volume after volume."""

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self.think = _range(o.think)
        self.n_objects = tuple(int(v) for v in _range(o.objects))
        self.n_clicks = tuple(int(v) for v in _range(o.clicks))
        self.rng = np.random.default_rng()
        self.sid: str | None = None
        self.token = ""

    def wait_time(self) -> float:
        """Between two sessions: a think time (the next volume is being opened)."""
        return float(self.rng.uniform(*self.think))

    # -- plumbing ---------------------------------------------------------------------------------------

    def _send(self, name: str, request: proto.Request, *, refusable: bool = False) -> Any:
        """Send ``request`` as step ``name``; a non-2xx reply is a failure (status + error code). ``refusable``:
        a 503 + Retry-After (load shedding, the server at capacity) is the server working as designed, counted
        as step ``<name>_refused`` and not as a failure."""
        with self.client.request(request.method, request.path, name=name, catch_response=True,
                                 **request.kwargs()) as response:
            if not response.status_code:  # no reply at all (connection refused / reset, timeout)
                response.failure(f"no reply: {getattr(response, 'error', None)!r}")
                raise StepFailed(name, 0, None)
            if refusable and response.status_code == 503 and response.headers.get("Retry-After"):
                response.request_meta["name"] = f"{name}_refused"
                response.success()
                raise StepFailed(name, 503, response.headers["Retry-After"])
            if response.status_code >= 400:
                try:
                    code = response.json()["error"]["code"]
                except Exception:
                    code = "?"
                response.failure(f"HTTP {response.status_code} {code}")
                raise StepFailed(name, response.status_code, response.headers.get("Retry-After"))
            response.success()
            return response

    def _fire(self, name: str, started: float, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=(time.perf_counter() - started) * 1e3,
            response_length=0, exception=exception, context={})

    def _prompt(self, name: str, request: proto.Request) -> PromptReply:
        return PromptReply.model_validate_json(self._send(name, request).content)

    def _current_mask(self, oid: int, version: int, stream: MaskStream | None, sent_at: float | None) -> np.ndarray:
        """What the viewer shows after a prompt: the streamed mirror, else a GET of the mask."""
        if stream is None:
            response = self._send("mask", proto.get_mask(self.sid or "", self.token, oid, MaskFormat.NPZ))
            return proto.parse_npz(response, "mask")
        try:
            mask = stream.wait_for_version(oid, version, timeout=60.0)
        except Exception as exc:
            if sent_at is not None:
                self._fire("frame", sent_at, exc)
            raise StepFailed("frame") from exc
        if sent_at is not None:
            self._fire("frame", sent_at)
        return mask

    def _watch_gru_frame(self, stream: MaskStream, oid: int, version: int, sent: float) -> None:
        """Report step ``gru_frame``: click sent -> its GRU step's frame applied to the mirror."""
        try:
            stream.wait_for_version(oid, version, timeout=60.0)
        except Exception as exc:
            self._fire("gru_frame", sent, exc)
            return
        self._fire("gru_frame", sent)

    def _think(self) -> None:
        time.sleep(float(self.rng.uniform(*self.think)))

    # -- the flow ---------------------------------------------------------------------------------------

    def _create(self) -> None:
        while True:
            try:
                reply = self._send("create", proto.create_session(_WORKLOAD["path"], None, "CT"), refusable=True)
            except StepFailed as exc:
                status, retry_after = exc.args[1], exc.args[2]
                if status != 503:
                    raise
                time.sleep(float(retry_after or 5))
                continue
            created = SessionCreated.model_validate_json(reply.content)
            self.sid, self.token = created.session_id, created.token
            return

    def _delete(self) -> None:
        if self.sid is not None:
            sid, self.sid = self.sid, None
            self._send("delete", proto.close_session(sid, self.token))

    def _annotate_object(self, oid: int, blob_index: int, stream: MaskStream | None) -> None:
        workload: Workload = _WORKLOAD["workload"]
        blob = workload.blobs[blob_index]
        sid, mode = self.sid or "", self.environment.parsed_options.click_mode
        box = jittered_box(blob.bbox, workload.volume.shape, self.rng)  # type: ignore[arg-type]
        reply = self._prompt("box", proto.box(sid, self.token, oid, box, False))
        mask = self._current_mask(oid, reply.version, stream, None)
        dice_box = score = dice(mask, blob.truth)
        clicks = undos = 0
        just_undone = False
        for _ in range(int(self.rng.integers(self.n_clicks[0], self.n_clicks[1] + 1))):
            click = choose_click(mask, blob.truth, self.rng, avoid_deepest=just_undone)
            if click is None:
                break
            self._think()
            sent = time.perf_counter()
            watcher = None
            if stream is not None and mode == "both":
                # The instant feedback: the GRU step's frame (version + 1) leaves before the reply, which waits
                # for the decoder refinement.
                watcher = gevent.spawn(self._watch_gru_frame, stream, oid, reply.version + 1, sent)
            try:
                reply = self._prompt("click", proto.clicks(sid, self.token, oid, [list(click.point)], [click.label],
                                                           mode, False))
            except BaseException:  # a failed click, or the run stopping (GreenletExit): no frame to wait for
                if watcher is not None:
                    watcher.kill()
                raise
            if watcher is not None:
                watcher.join(timeout=60)
            mask = self._current_mask(oid, reply.version, stream, sent)
            clicks += 1
            new_score = dice(mask, blob.truth)
            just_undone = new_score < score - 0.01 or self.rng.random() < self.environment.parsed_options.undo_prob
            if just_undone:
                time.sleep(float(self.rng.uniform(0.3, 1.0)))  # noticing it takes a moment
                reply = self._prompt("undo", proto.undo(sid, self.token, oid))
                mask = self._current_mask(oid, reply.version, stream, None)
                undos += 1
                new_score = dice(mask, blob.truth)
            score = new_score
        self._send("download", proto.get_mask(sid, self.token, oid, MaskFormat.NIFTI_GZ))
        log = self.environment.parsed_options.object_log
        if log:
            record = {"blob": blob_index, "clicks": clicks, "undos": undos, "stream": stream is not None,
                      "dice_box": round(dice_box, 4), "dice_final": round(score, 4)}
            with open(log, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    @task
    def annotate_volume(self) -> None:
        o = self.environment.parsed_options
        try:
            self._create()
            stream = None
            if self.rng.random() < o.stream_prob:
                started = time.perf_counter()
                try:
                    stream = MaskStream(self.host, self.sid or "", self.token, open_timeout=30.0)
                    self._fire("stream_open", started)
                except Exception as exc:
                    self._fire("stream_open", started, exc)
                    raise StepFailed("stream_open") from exc
            try:
                n_blobs = len(_WORKLOAD["workload"].blobs)
                count = min(int(self.rng.integers(self.n_objects[0], self.n_objects[1] + 1)), n_blobs)
                for oid, blob_index in enumerate(self.rng.choice(n_blobs, size=count, replace=False), start=1):
                    self._annotate_object(oid, int(blob_index), stream)
            finally:
                if stream is not None:
                    stream.close()
            if self.rng.random() < o.abandon_prob:
                self.sid = None  # walk away: the server's idle clock ends the session
            else:
                self._delete()
        except StepFailed:
            self._cleanup()

    def _cleanup(self) -> None:
        try:
            self._delete()
        except StepFailed:
            self.sid = None

    def on_stop(self) -> None:
        """The run is over: delete the session in progress, as a person closing the viewer would."""
        self._cleanup()
