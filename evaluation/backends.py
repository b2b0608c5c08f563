"""Methods under evaluation: the same prompt protocol answered in-process or by a running server.

In-process, a shared ``Predictor`` answers (``PredictorMethod``); with a server, the SDK does
(``ServerMethod``): the volume is uploaded, prompts are sent over HTTP and each round's label map is
downloaded (``GET .../segmentation``), with ``masks="stream"`` only once every prompt's diff has arrived on
the WebSocket stream (the path a user's viewer takes). Both give the same label maps for the same model,
weights and session seed.

A ``Method`` opens one ``Session`` per case (the volume is encoded there) and the runner sends it, per
class, one box and then at most one click per round, reading the session's label map of all classes back
after each round (the predictor's or the server's, with the service's overlap rule: by default the most
confident object wins, with ``overlap="recent"`` the most recently prompted). Object ids are the label values.
The classes of a case are one label map's, so sessions are exclusive by default, in-process and on the
server (``SessionState.exclusive_objects``: a class's foreground click is a background click to the others);
``exclusive_objects=False`` segments each class on its own prompts.
The model methods differ only in how clicks are answered:

    backbone   the first prompt's prediction is kept: clicks are not answered (no correction)
    gru        the paper: the GRU corrector alone (``add_clicks(mode="gru")``)
    decoder    the backbone's decoder re-run with all clicks (``mode="decoder"``)
    both       GRU step, then decoder step (``mode="both"``, ours)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from app.models.label_map import check_overlap_rule
from evaluation.cases import Box
from evaluation.click_rule import Click

if TYPE_CHECKING:
    from app.models import Predictor
    from client import Client
    from client import Session as ClientSession

# method name -> add_clicks mode (None: clicks are not answered).
MODEL_METHODS: dict[str, str | None] = {"backbone": None, "gru": "gru", "decoder": "decoder", "both": "both"}


class Session(Protocol):
    """One case's interactive session. Masks are (D, H, W) boolean arrays of the whole volume."""

    def add_box(self, object_id: int, box: Box) -> None: ...

    def add_click(self, object_id: int, click: Click) -> None: ...

    def mask(self, object_id: int) -> np.ndarray: ...

    def label_map(self, object_ids: Sequence[int], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """(D, H, W) ``dtype`` label map of the listed objects (0 elsewhere; objects never prompted are
        absent), overlaps resolved by the method's own rule, as the challenge's ``segs``."""
        ...

    def close(self) -> None: ...


class Method(Protocol):
    """Something that answers prompts; ``open`` starts a session on one (D, H, W) volume."""

    name: str

    def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> Session: ...


class _FirstPromptOnly:
    """Tracks which objects already got a prompt, for the backbone-only method."""

    def __init__(self) -> None:
        self._prompted: set[int] = set()

    def first(self, object_id: int) -> bool:
        if object_id in self._prompted:
            return False
        self._prompted.add(object_id)
        return True


class PredictorSession:
    """A session on an in-process ``Predictor`` (``mode`` None = backbone only)."""

    def __init__(self, predictor: Predictor, image: np.ndarray, spacing: tuple[float, float, float], mode: str | None,
                 overlap: str = "confidence", exclusive_objects: bool = True):
        self._predictor = predictor
        self._mode = mode
        self._overlap = overlap
        self._order: list[int] = []  # objects by last prompt, the "recent" rule's paint order
        self._state = predictor.init_state(image, spacing, exclusive_objects=exclusive_objects)
        self._first = _FirstPromptOnly()

    def add_box(self, object_id: int, box: Box) -> None:
        self._first.first(object_id)
        self._predictor.add_box(self._state, object_id, list(box))
        self._prompted(object_id)

    def add_click(self, object_id: int, click: Click) -> None:
        first = self._first.first(object_id)
        if self._mode is None and not first:
            return  # backbone only: keep the first prompt's prediction
        mode = self._mode or "decoder"  # a case without boxes starts from a click: the decoder answers it
        self._predictor.add_clicks(self._state, object_id, [list(click.point)], [click.label], mode=mode)
        self._prompted(object_id)

    def add_region(self, object_id: int, flat: np.ndarray, label: int) -> None:
        """A scribble or lasso (``evaluation.region_rule``); regions need the decoder step, so the "gru" method
        answers them in "both" mode."""
        first = self._first.first(object_id)
        if self._mode is None and not first:
            return
        mode = self._mode if self._mode in ("decoder", "both") else "both"
        self._predictor.add_region(self._state, object_id, flat, label, mode=mode)
        self._prompted(object_id)

    def mask(self, object_id: int) -> np.ndarray:
        return self._predictor.get_mask(self._state, object_id).astype(bool)

    def label_map(self, object_ids: Sequence[int], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The predictor's label map; ties (and every overlap under "recent") go to the later prompted object,
        as the server orders objects by their last change."""
        wanted = set(object_ids)
        order = [oid for oid in self._order if oid in wanted and oid in self._state.objects]
        return self._predictor.get_label_map(self._state, order, self._overlap).astype(dtype)  # type: ignore[arg-type]

    def _prompted(self, object_id: int) -> None:
        if object_id in self._order:
            self._order.remove(object_id)
        self._order.append(object_id)

    def close(self) -> None:
        self._state = None  # type: ignore[assignment]  # frees the embeddings


class PredictorMethod:
    """One model method (see ``MODEL_METHODS``) answered by a shared in-process ``Predictor``."""

    def __init__(self, predictor: Predictor, name: str, *, overlap: str = "confidence",
                 exclusive_objects: bool = True):
        if name not in MODEL_METHODS:
            raise ValueError(f"methods: unknown model method {name!r}; known: {sorted(MODEL_METHODS)}")
        check_overlap_rule(overlap)
        self.name = name
        self._predictor = predictor
        self._mode = MODEL_METHODS[name]
        self._overlap = overlap
        self._exclusive_objects = exclusive_objects

    def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> PredictorSession:
        return PredictorSession(self._predictor, image, spacing, self._mode, self._overlap, self._exclusive_objects)


class ServerSession:
    """A session on a running server through the SDK (``mode`` None = backbone only).

    ``masks="stream"`` keeps local masks from the WebSocket diff stream (``mask``) and, before each label map,
    waits there for the version each prompt returned; ``masks="get"`` downloads an object's whole mask.
    """

    def __init__(
        self,
        client: Client,
        image: np.ndarray,
        spacing: tuple[float, float, float],
        mode: str | None,
        masks: str = "stream",
        timeout: float = 120.0,
        overlap: str = "confidence",
        exclusive_objects: bool = True,
    ):
        self._mode = mode
        self._timeout = timeout
        self._overlap = overlap
        self._first = _FirstPromptOnly()
        self._versions: dict[int, int] = {}
        self._session: ClientSession = client.create_session(image, spacing=spacing,
                                                             exclusive_objects=exclusive_objects)
        try:
            self._stream = self._session.stream() if masks == "stream" else None
        except BaseException:
            self._session.close()  # do not leave the upload holding server memory
            raise

    def add_box(self, object_id: int, box: Box) -> None:
        self._first.first(object_id)
        self._versions[object_id] = self._session.box(object_id, list(box)).version

    def add_click(self, object_id: int, click: Click) -> None:
        first = self._first.first(object_id)
        if self._mode is None and not first:
            return
        reply = self._session.clicks(object_id, [list(click.point)], [click.label], mode=self._mode or "decoder")
        self._versions[object_id] = reply.version

    def mask(self, object_id: int) -> np.ndarray:
        if self._stream is None:
            return self._session.mask(object_id).astype(bool)
        return self._stream.wait_for_version(object_id, self._versions[object_id], self._timeout).astype(bool)

    def label_map(self, object_ids: Sequence[int], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The server's segmentation (its overlap rule needs the logits, which stay on the server). With the
        stream, every prompted object's last version must have arrived on it first."""
        if self._stream is not None:
            for oid in object_ids:
                if oid in self._versions:
                    self._stream.wait_for_version(oid, self._versions[oid], self._timeout)
        labels = self._session.segmentation(overlap=self._overlap)
        if labels.shape != tuple(shape):
            raise ValueError(f"segmentation: the server's shape {list(labels.shape)} is not the case's {list(shape)}")
        keep = np.isin(labels, list(object_ids))
        return np.where(keep, labels, 0).astype(dtype)

    def close(self) -> None:
        try:
            if self._stream is not None:
                self._stream.close()
        finally:
            self._session.close()


class ServerMethod:
    """One model method (see ``MODEL_METHODS``) answered by a running server through the SDK."""

    def __init__(self, client: Client, name: str, *, masks: str = "stream", overlap: str = "confidence",
                 exclusive_objects: bool = True):
        if name not in MODEL_METHODS:
            raise ValueError(f"methods: unknown model method {name!r}; known: {sorted(MODEL_METHODS)}")
        if masks not in ("stream", "get"):
            raise ValueError(f"masks: expected 'stream' or 'get', got {masks!r}")
        check_overlap_rule(overlap)
        self.name = name
        self._client = client
        self._mode = MODEL_METHODS[name]
        self._masks = masks
        self._overlap = overlap
        self._exclusive_objects = exclusive_objects

    def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> ServerSession:
        return ServerSession(self._client, image, spacing, self._mode, self._masks, overlap=self._overlap,
                             exclusive_objects=self._exclusive_objects)
