"""Durable sessions: files on disk, the replay of a prompt history, and a manager restoring another's sessions.

The replay tests drive the real tiny predictor directly; the restore tests run two managers over one store
(each store kind, Redis included) and one storage folder, the first one left without shutdown as a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch

import app.sessions.persistence as persistence_module
from app.errors import CapacityExceeded, SessionExpired, StoreUnavailable
from app.models import regions
from app.sessions.executor import DeviceExecutor
from app.sessions.manager import SessionManager
from app.sessions.persistence import (
    Persistence,
    ReplayError,
    SessionStorage,
    VolumeMeta,
    model_fingerprint,
    replay_history,
)
from app.sessions.session import Geometry, SessionLimits
from app.sessions.store import InProcessStore, MetadataStore, PromptRecord

SHAPE = (24, 64, 64)
SPACING = (2.0, 1.0, 1.0)
GEOMETRY = Geometry(spacing=SPACING, origin=(-5.0, 3.0, 10.5), direction=(1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
BOX = [6, 20, 20, 17, 43, 43]


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 10, SHAPE).astype(np.float32)
    vol[6:18, 20:44, 20:44] += 200.0
    return vol


def _square_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[8:16, 10:30, 34:60] = 1
    return mask


def _sha(mask: np.ndarray) -> str:
    return hashlib.sha256(mask.astype(np.uint8).tobytes()).hexdigest()


# --- storage ------------------------------------------------------------------------------------------------


def test_volume_and_mask_roundtrip_exactly(tmp_path: Path) -> None:
    storage = SessionStorage(tmp_path)
    volume = (np.random.default_rng(1).normal(0, 300, SHAPE)).astype(np.int16)
    meta = VolumeMeta(spacing=SPACING, origin=GEOMETRY.origin, direction=GEOMETRY.direction, seed=7, model="m")
    storage.save_volume("abc_-1", volume, meta)
    stored = storage.load_volume("abc_-1")
    assert stored.array.dtype == np.int16 and np.array_equal(stored.array, volume) and stored.meta == meta
    mask = _square_mask()
    digest = storage.save_mask("abc_-1", mask)
    assert digest == _sha(mask)
    assert storage.save_mask("abc_-1", mask.astype(bool)) == digest  # same content, same file
    assert np.array_equal(storage.load_mask("abc_-1", digest, SHAPE), mask)
    assert storage.has_volume("abc_-1") and storage.session_ids() == ["abc_-1"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))  # no temporary file left behind
    storage.delete("abc_-1")
    assert not storage.has_volume("abc_-1") and storage.session_ids() == []
    storage.delete("abc_-1")  # nothing there: no error


def test_volume_meta_keeps_the_object_exclusivity_and_reads_older_files_as_independent() -> None:
    meta = VolumeMeta(spacing=SPACING, origin=GEOMETRY.origin, direction=GEOMETRY.direction, seed=7, model="m",
                      exclusive_objects=False)
    assert VolumeMeta.from_json(meta.to_json()) == meta
    older = json.loads(meta.to_json())
    del older["exclusive_objects"]  # written before the setting existed, when objects were independent
    assert VolumeMeta.from_json(json.dumps(older)).exclusive_objects is False
    assert VolumeMeta(spacing=SPACING, origin=GEOMETRY.origin, direction=GEOMETRY.direction, seed=7,
                      model="m").exclusive_objects is True


def test_damaged_or_foreign_files_are_replay_errors(tmp_path: Path) -> None:
    storage = SessionStorage(tmp_path)
    digest = storage.save_mask("s1", _square_mask())
    mask_file = tmp_path / "s1" / "masks" / f"{digest}.npy"
    packed = np.load(mask_file)
    packed[3] ^= 0xFF
    np.save(mask_file, packed)
    with pytest.raises(ReplayError, match="corrupt"):
        storage.load_mask("s1", digest, SHAPE)
    with pytest.raises(ReplayError, match="does not fit"):
        storage.load_mask("s1", digest, (2, 2, 2))
    with pytest.raises(ReplayError, match="cannot read stored mask"):
        storage.load_mask("s1", "0" * 64, SHAPE)
    with pytest.raises(ReplayError, match="cannot read the stored volume"):
        storage.load_volume("s1")
    with pytest.raises(ValueError, match="session_id"):  # an id from the store never becomes a path
        storage.session_dir("../etc")


def test_storage_folders_masks_and_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"
    storage = SessionStorage(root)  # made with its parents
    meta = VolumeMeta(spacing=SPACING, origin=GEOMETRY.origin, direction=GEOMETRY.direction, seed=7, model="m")
    storage.save_volume("s1", _volume(), meta)
    storage.save_volume("s1", _volume(1), meta)  # not exclusive by default: rewritten
    assert np.array_equal(storage.load_volume("s1").array, _volume(1))
    with pytest.raises(FileExistsError):
        storage.save_volume("s1", _volume(), meta, exclusive=True)
    storage.save_volume("s2", _volume(), meta, exclusive=True)
    shutil.rmtree(root)  # the storage folder went away under the process: made again
    storage.save_volume("s3", _volume(), meta)
    assert storage.has_volume("s3")
    odd_shape = (3, 5, 7)  # 105 voxels: the packed bits end mid-byte
    first = (np.arange(105).reshape(odd_shape) % 3 == 0).astype(np.uint8)
    second = 1 - first  # a second mask of the same session: its masks folder exists
    for mask in (first, second):
        digest = storage.save_mask("s3", mask)
        assert np.array_equal(storage.load_mask("s3", digest, odd_shape), mask)
    with pytest.raises(ValueError, match="allow_pickle=False"):  # never writes a pickle
        storage.save_volume("s4", np.empty((1, 1, 1), dtype=object), meta)


def test_session_ids_lists_session_folders_only_and_by_age(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SessionStorage(tmp_path)
    for name in ("young", "old", "edge"):
        (tmp_path / name).mkdir()
    (tmp_path / "stray-file").write_bytes(b"")  # a file with a session-like name
    (tmp_path / ".hidden dir").mkdir()  # a folder no session id names
    now = float(int(time.time()))
    os.utime(tmp_path / "old", (now - 101, now - 101))
    os.utime(tmp_path / "edge", (now - 100, now - 100))
    os.utime(tmp_path / "young", (now, now))
    monkeypatch.setattr(persistence_module, "time", types.SimpleNamespace(time=lambda: now))
    assert storage.session_ids() == ["edge", "old", "young"]
    assert storage.session_ids(older_than_s=100) == ["old"]  # older than: not exactly as old


def test_stored_files_are_read_without_pickles_and_errors_name_the_reason(tmp_path: Path) -> None:
    storage = SessionStorage(tmp_path)
    meta = VolumeMeta(spacing=SPACING, origin=GEOMETRY.origin, direction=GEOMETRY.direction, seed=7, model="m")
    with pytest.raises(ReplayError, match=r"cannot read the stored volume \(No such file or directory\)"):
        storage.load_volume("s1")
    storage.save_volume("s1", _volume(), meta)
    pickled = np.empty((1, 1, 1), dtype=object)
    pickled[0, 0, 0] = {"a": 1}
    np.save(tmp_path / "s1" / "volume.npy", pickled, allow_pickle=True)
    with pytest.raises(ReplayError, match=r"cannot read the stored volume \(ValueError: .*pickle"):
        storage.load_volume("s1")
    (tmp_path / "s1" / "volume.json").write_text("{", encoding="utf-8")
    with pytest.raises(ReplayError, match=r"cannot read the stored volume \(JSONDecodeError: "):
        storage.load_volume("s1")

    digest = storage.save_mask("s1", _square_mask())
    mask_file = tmp_path / "s1" / "masks" / f"{digest}.npy"
    np.save(mask_file, np.array([b"x", 1], dtype=object), allow_pickle=True)
    with pytest.raises(ReplayError, match=rf"^mask: cannot read stored mask {digest[:12]} \(ValueError: .*pickle"):
        storage.load_mask("s1", digest, SHAPE)
    missing = "0" * 64
    with pytest.raises(ReplayError, match=rf"^mask: cannot read stored mask {missing[:12]} \(No such file"):
        storage.load_mask("s1", missing, SHAPE)
    mask_file.unlink()
    storage.save_mask("s1", _square_mask())
    with pytest.raises(ReplayError, match=rf"^mask: stored mask {digest[:12]} does not fit the volume \[2, 2, 2\]$"):
        storage.load_mask("s1", digest, (2, 2, 2))
    packed = np.load(mask_file)
    packed[3] ^= 0xFF
    np.save(mask_file, packed)
    with pytest.raises(ReplayError, match=rf"^mask: stored mask {digest[:12]} is corrupt"):
        storage.load_mask("s1", digest, SHAPE)
    assert persistence_module._describe(OSError()) == "OSError"  # an OS error without a message


def test_files_are_written_through_a_hidden_temporary_beside_them(tmp_path: Path) -> None:
    """A crash mid-write leaves a '.NAME.*.tmp' file beside the target, never a partial file under its name."""
    target = tmp_path / "masks" / "volume.npy"
    target.parent.mkdir()
    seen: list[str] = []

    def write(f: BinaryIO) -> None:
        seen.extend(p.name for p in target.parent.iterdir())
        f.write(b"data")

    persistence_module._atomic_write(target, write)
    assert len(seen) == 1 and re.fullmatch(r"\.volume\.npy\..+\.tmp", seen[0]), seen
    assert target.read_bytes() == b"data" and [p.name for p in target.parent.iterdir()] == ["volume.npy"]


def test_a_failed_write_leaves_nothing_and_raises_the_writers_error(tmp_path: Path) -> None:
    target = tmp_path / "volume.npy"

    def fail(f: BinaryIO) -> None:
        raise RuntimeError("disk full")

    def remove_then_fail(f: BinaryIO) -> None:
        for p in tmp_path.iterdir():  # its own temporary already gone: the cleanup must not hide the error
            p.unlink()
        raise RuntimeError("disk full")

    for write in (fail, remove_then_fail):
        with pytest.raises(RuntimeError, match="disk full"):
            persistence_module._atomic_write(target, write)
        assert list(tmp_path.iterdir()) == []


def test_a_directory_that_cannot_be_synced_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int) -> None:
        raise OSError(22, "Invalid argument")  # some file systems refuse fsync on a directory

    monkeypatch.setattr(os, "fsync", refuse)
    persistence_module._fsync_dir(tmp_path)


def test_fingerprint_covers_the_config_and_bfloat16_weights() -> None:
    """A model without a backbone still hashes its corrector."""
    part = torch.nn.Linear(2, 2).to(torch.bfloat16)
    model = types.SimpleNamespace(config_name="tiny", config={"zoom": 1}, backbone=None, corrector=part)
    before = model_fingerprint(model)  # type: ignore[arg-type]
    assert model_fingerprint(types.SimpleNamespace(**{**vars(model), "config": {"zoom": 2}})) != before  # type: ignore[arg-type]
    with torch.no_grad():
        part.weight[0, 0] += 1.0
    assert model_fingerprint(model) != before  # type: ignore[arg-type]


def test_fingerprint_changes_with_any_weight(predictor) -> None:  # noqa: ANN001
    before = model_fingerprint(predictor)
    assert model_fingerprint(predictor) == before
    param = next(predictor.backbone.parameters())  # the shared test model: put the exact value back
    original = param.detach().view(-1)[0].clone()
    with torch.no_grad():
        param.view(-1)[0] += 1.0
    try:
        assert model_fingerprint(predictor) != before
    finally:
        with torch.no_grad():
            param.view(-1)[0] = original
    assert model_fingerprint(predictor) == before


# --- replay -------------------------------------------------------------------------------------------------


def _session_prompts(predictor, state) -> list[PromptRecord]:  # noqa: ANN001
    """Every kind of prompt on three objects, recorded the way the manager records them."""
    records: list[PromptRecord] = []

    def rec(op: str, oid: int, args: dict, version: int) -> None:
        records.append(PromptRecord(op=op, object_id=oid, args=args, version=version, at=time.time()))

    rec("box", 1, {"box": BOX}, predictor.add_box(state, 1, BOX).version)
    for point, label, mode in [((10, 30, 30), 1, "gru"), ((12, 25, 38), 0, "both"), ((8, 40, 24), 1, "decoder"),
                               ((14, 22, 22), 1, "gru")]:
        args = {"points": [list(point)], "labels": [label], "mode": mode}
        rec("clicks", 1, args, predictor.add_clicks(state, 1, [point], [label], mode=mode)[-1].version)
    rec("undo", 1, {}, predictor.undo(state, 1).version)
    region = regions.fill_lasso(0, 10, [[20, 20], [20, 40], [40, 40]], SHAPE)  # a lasso on slice 10
    rec("region", 1, {"runs": regions.to_runs(region), "label": 1, "mode": "decoder"},  # not the default
        predictor.add_region(state, 1, region, 1, mode="decoder")[-1].version)
    mask = _square_mask()
    rec("mask", 2, {"sha256": _sha(mask), "voxels": int(mask.sum())}, predictor.set_mask(state, 2, mask).version)
    rec("clicks", 2, {"points": [[12, 20, 50]], "labels": [0], "mode": "gru"},
        predictor.add_clicks(state, 2, [[12, 20, 50]], [0], mode="gru")[-1].version)
    rec("reset", 2, {}, predictor.reset(state, 2).version)
    rec("undo", 2, {}, predictor.undo(state, 2).version)
    rec("box", 3, {"box": [0, 0, 0, 5, 10, 10]}, predictor.add_box(state, 3, [0, 0, 0, 5, 10, 10]).version)
    rec("remove", 3, {}, predictor.remove_object(state, 3).version)
    return records


def _same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def test_replay_rebuilds_every_object_bit_for_bit(predictor) -> None:  # noqa: ANN001
    original = predictor.init_state(_volume(), SPACING, seed=5)
    history = _session_prompts(predictor, original)
    masks = {_sha(_square_mask()): _square_mask()}

    rebuilt = predictor.init_state(_volume(), SPACING, seed=5)
    versions = replay_history(predictor, rebuilt, history, masks.__getitem__)

    assert versions == {1: original.objects[1].version, 2: original.objects[2].version}
    assert sorted(rebuilt.objects) == sorted(original.objects) == [1, 2]  # object 3 was removed
    for oid in (1, 2):
        a, b = original.objects[oid], rebuilt.objects[oid]
        assert (a.version, a.roi, a.box, a.clicks, a.rounds) == (b.version, b.roi, b.box, b.clicks, b.rounds)
        assert _same_tensor(a.logits, b.logits) and _same_tensor(a.hidden, b.hidden)
        assert len(a.undo_stack) == len(b.undo_stack)
        for ea, eb in zip(a.undo_stack, b.undo_stack, strict=True):
            assert ea.step == eb.step and ea.roi == eb.roi and ea.rounds == eb.rounds
            for ta, tb in ((ea.logits, eb.logits), (ea.hidden, eb.hidden), (ea.sparse_index, eb.sparse_index),
                           (ea.sparse_values, eb.sparse_values)):
                assert _same_tensor(ta, tb)
        assert np.array_equal(predictor.get_mask(original, oid), predictor.get_mask(rebuilt, oid))
    # The rebuilt session goes on exactly like the original.
    go_on = [predictor.add_clicks(st, 1, [[11, 33, 30]], [1], mode="gru")[0] for st in (original, rebuilt)]
    assert go_on[0].version == go_on[1].version and np.array_equal(go_on[0].indices, go_on[1].indices)
    assert torch.equal(original.objects[1].logits, rebuilt.objects[1].logits)


def test_replay_rebuilds_text_prompts() -> None:
    from app.models import PredictorConfig, build_predictor

    predictor = build_predictor("segvol-test", weights=None, with_text=True,
                                predictor_config=PredictorConfig(zoom_in="segvol"))
    original = predictor.init_state(_volume(), SPACING, seed=5)
    box, point = [4, 16, 16, 18, 46, 46], [10, 30, 30]
    history = [
        PromptRecord(op="text", object_id=1, args={"text": "liver", "box": box, "points": [point], "labels": [1]},
                     version=predictor.add_text(original, 1, "liver", box, [point], [1]).version),
        PromptRecord(op="text", object_id=2, args={"text": "spleen", "box": None, "points": [], "labels": []},
                     version=predictor.add_text(original, 2, "spleen").version),
    ]
    rebuilt = predictor.init_state(_volume(), SPACING, seed=5)
    assert replay_history(predictor, rebuilt, history, {}.__getitem__) == {1: 1, 2: 1}
    for oid in (1, 2):
        a, b = original.objects[oid], rebuilt.objects[oid]
        assert (a.text, a.box, a.clicks) == (b.text, b.box, b.clicks)
        assert np.array_equal(predictor.get_mask(rebuilt, oid), predictor.get_mask(original, oid))


def test_replay_with_another_seed_or_a_forged_version_fails_loudly(predictor) -> None:  # noqa: ANN001
    state = predictor.init_state(_volume(), SPACING)
    predictor.add_box(state, 1, BOX)
    history = [PromptRecord(op="box", object_id=1, args={"box": BOX}, version=1),
               PromptRecord(op="clicks", object_id=1, args={"points": [[10, 30, 30]], "labels": [1],
                                                            "mode": "both"}, version=4)]  # really 3
    with pytest.raises(ReplayError, match=r"history\[1\] \(clicks on object 1\).*version 3.*says 4"):
        replay_history(predictor, predictor.init_state(_volume(), SPACING), history, {}.__getitem__)
    with pytest.raises(ReplayError, match=r"history\[0\].*refused"):
        replay_history(predictor, predictor.init_state(_volume(), SPACING),
                       [PromptRecord(op="undo", object_id=1, version=1)], {}.__getitem__)
    with pytest.raises(ReplayError, match="unknown op"):
        replay_history(predictor, predictor.init_state(_volume(), SPACING),
                       [PromptRecord(op="teleport", object_id=1, version=1)], {}.__getitem__)


# --- a manager restores another manager's sessions --------------------------------------------------------------

@pytest.fixture
async def managers(predictor, tmp_path: Path) -> AsyncIterator[Callable[..., SessionManager]]:  # noqa: ANN001
    """Managers over one storage folder; each one is a 'process' (its own executor), never shut down."""
    executors: list[DeviceExecutor] = []
    fingerprint = model_fingerprint(predictor)

    def make(store: MetadataStore, clock: Callable[[], float] = time.monotonic, **limits: object) -> SessionManager:
        executor = DeviceExecutor()
        executors.append(executor)
        persistence = Persistence(SessionStorage(tmp_path / "storage"), fingerprint, keep_on_shutdown=True)
        return SessionManager(predictor, store, executor, SessionLimits(**limits), clock=clock,
                              persistence=persistence)

    yield make
    for e in executors:
        e.shutdown()


async def _snapshot(manager: SessionManager, session) -> dict[int, tuple[int, bytes]]:  # noqa: ANN001
    out = {}
    for oid in sorted(session.state.objects):
        mask, version = await manager.get_mask(session, oid)
        out[oid] = (version, mask.tobytes())
    return out


@pytest.mark.anyio
async def test_a_new_manager_restores_sessions_exactly(managers, store: MetadataStore, tmp_path: Path) -> None:  # noqa: ANN001
    first = managers(store)
    session, token = await first.create(_volume(), GEOMETRY, modality="CT")
    await first.add_box(session, 1, BOX)
    for point, label, mode in [((10, 30, 30), 1, "gru"), ((12, 25, 38), 0, "both"), ((8, 40, 24), 1, "decoder")]:
        await first.add_clicks(session, 1, [point], [label], mode=mode)
    await first.undo(session, 1)
    await first.set_mask(session, 2, _square_mask())
    await first.add_box(session, 3, [0, 0, 0, 5, 10, 10])
    await first.remove_object(session, 3)
    before = await _snapshot(first, session)
    labels_before, order_before = await first.segmentation(session)
    storage_dir = tmp_path / "storage" / session.session_id
    assert (storage_dir / "masks" / f"{_sha(_square_mask())}.npy").is_file()

    second = managers(store)  # the first one "crashed": never shut down
    summary = await second.restore_sessions()
    assert summary.restored == [session.session_id] and not summary.failed
    restored = second.authenticate(session.session_id, token)  # the client's token keeps working
    assert restored.record.shape == SHAPE and restored.record.origin == GEOMETRY.origin
    assert restored.record.direction == GEOMETRY.direction and restored.record.modality == "CT"
    assert await _snapshot(second, restored) == before
    stored_versions = await store.object_versions(session.session_id)
    assert restored.versions == {o: v for o, v in stored_versions.items() if o != 3}  # 3 was removed
    labels_after, order_after = await second.segmentation(restored)
    assert np.array_equal(labels_after, labels_before) and list(order_after) == list(order_before)
    click = await second.add_clicks(restored, 1, [(11, 33, 30)], [1], mode="both")
    assert click.version == before[1][0] + 2  # gru + decoder steps continue the old versions
    assert (await store.prompt_history(session.session_id))[-1].version == click.version

    await second.close(restored)  # DELETE: record and files go
    assert not storage_dir.exists() and await store.get_session(session.session_id) is None


@pytest.mark.anyio
async def test_a_restore_keeps_the_sessions_object_exclusivity(managers, store: MetadataStore) -> None:  # noqa: ANN001
    first = managers(store, exclusive_objects=False)  # served with independent objects
    session, token = await first.create(_volume(), GEOMETRY)
    assert session.state.exclusive_objects is False
    await first.add_box(session, 1, BOX)
    await first.add_box(session, 2, [8, 25, 25, 14, 38, 38])
    await first.add_clicks(session, 2, [(11, 30, 30)], [1], mode="both")
    await first.add_clicks(session, 1, [(7, 22, 22)], [1], mode="both")  # would see object 2's click if exclusive
    before = await _snapshot(first, session)
    chosen, chosen_token = await first.create(_volume(1), GEOMETRY, exclusive_objects=True)  # its own choice

    second = managers(store, exclusive_objects=True)  # today's setting differs from the first session's
    summary = await second.restore_sessions()
    assert sorted(summary.restored) == sorted([session.session_id, chosen.session_id]) and not summary.failed
    assert second.authenticate(chosen.session_id, chosen_token).state.exclusive_objects is True
    restored = second.authenticate(session.session_id, token)
    assert restored.state.exclusive_objects is False
    assert await _snapshot(second, restored) == before
    fresh, _ = await second.create(_volume(), GEOMETRY)
    assert fresh.state.exclusive_objects is True
    own, _ = await second.create(_volume(), GEOMETRY, exclusive_objects=False)
    assert own.state.exclusive_objects is False


@pytest.mark.anyio
async def test_expired_damaged_and_orphaned_sessions_on_restore(managers, store: MetadataStore,  # noqa: ANN001
                                                                 tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    first = managers(store, idle_timeout_s=30, max_session_age_s=60)
    kept, kept_token = await first.create(_volume(), GEOMETRY)
    damaged, damaged_token = await first.create(_volume(1), GEOMETRY)
    await first.set_mask(damaged, 1, _square_mask())
    idle, idle_token = await first.create(_volume(2), GEOMETRY)
    await store.touch_session(idle.session_id, time.time() - 31)  # unused for 31 s by the wall clock
    truncated, truncated_token = await first.create(_volume(3), GEOMETRY)
    storage_root = tmp_path / "storage"
    for f in (storage_root / damaged.session_id / "masks").iterdir():
        f.unlink()
    volume_file = storage_root / truncated.session_id / "volume.npy"
    volume_file.write_bytes(volume_file.read_bytes()[:1000])
    (storage_root / "orphan-dir").mkdir()  # a crash between the volume and the store record

    second = managers(store, idle_timeout_s=30, max_session_age_s=60)
    caplog.set_level(logging.INFO, logger="app.sessions.restore")
    started = time.perf_counter()
    summary = await second.restore_sessions()
    elapsed = time.perf_counter() - started
    assert 0.0 <= summary.seconds <= elapsed  # measured inside the call
    assert summary.restored == [kept.session_id]
    assert sorted(summary.failed) == sorted([damaged.session_id, truncated.session_id])
    assert summary.expired == [idle.session_id] and summary.orphans_removed == 1
    assert not (storage_root / "orphan-dir").exists()
    assert second.authenticate(kept.session_id, kept_token).versions == {}
    with pytest.raises(SessionExpired, match=r"could not be restored after a server restart: .*mask"):
        second.authenticate(damaged.session_id, damaged_token)
    assert (storage_root / damaged.session_id).is_dir()  # kept for a later process (nothing is lost)
    with pytest.raises(SessionExpired, match="could not be restored"):
        second.authenticate(truncated.session_id, truncated_token)
    with pytest.raises(SessionExpired, match=r"expired \(idle\)$"):
        second.authenticate(idle.session_id, idle_token)
    assert await store.get_session(idle.session_id) is None and not (storage_root / idle.session_id).exists()

    # The operator's log names each session and what became of it.
    lines = {r.args[0]: r for r in caplog.records if r.name == "app.sessions.restore"}  # type: ignore[index]
    assert lines[idle.session_id].getMessage() == (f"session {idle.session_id} expired (idle) while the server "
                                                   "was down: deleted")
    assert lines[damaged.session_id].getMessage().startswith(
        f"session {damaged.session_id}: cannot restore it (record and files kept): history[0] (mask on object 1)")
    restored_line = lines[kept.session_id]
    assert restored_line.getMessage().startswith(f"restored session {kept.session_id}: 0 history entries, "
                                                 "0 objects, in ")
    assert 0.0 <= restored_line.args[-1] <= elapsed  # type: ignore[index]


@pytest.mark.anyio
async def test_an_expired_session_first_in_line_does_not_stop_the_restore(managers, store: MetadataStore,  # noqa: ANN001
                                                                          tmp_path: Path) -> None:
    """Sessions are restored most recently used first; one past its maximum age but used a moment ago comes
    first, is deleted, and the ones after it are still restored. Every orphan folder goes, not only one."""
    first = managers(store, max_session_age_s=60)
    old, old_token = await first.create(_volume(), GEOMETRY)
    young, young_token = await first.create(_volume(1), GEOMETRY)
    now = time.time()
    await store.create_session(replace(old.record, created_at=now - 61, last_used_at=now + 5))
    await store.touch_session(young.session_id, now)
    storage_root = tmp_path / "storage"
    for name in ("orphan-a", "orphan-b"):
        (storage_root / name).mkdir()

    second = managers(store, max_session_age_s=60)
    summary = await second.restore_sessions()
    assert summary.expired == [old.session_id] and summary.restored == [young.session_id]
    assert summary.orphans_removed == 2 and not (storage_root / "orphan-a").exists()
    with pytest.raises(SessionExpired, match=r"expired \(max_age\)$"):
        second.authenticate(old.session_id, old_token)
    assert second.authenticate(young.session_id, young_token).session_id == young.session_id


@pytest.mark.anyio
async def test_shutdown_keeps_durable_sessions_and_delete_forgets_them(managers, store: MetadataStore,  # noqa: ANN001
                                                                        tmp_path: Path) -> None:
    first = managers(store)
    kept, _ = await first.create(_volume(), GEOMETRY)
    gone, _ = await first.create(_volume(1), GEOMETRY)
    await first.close(gone)
    await first.shutdown()  # a graceful restart (redeploy)
    assert not (tmp_path / "storage" / gone.session_id).exists()
    assert (tmp_path / "storage" / kept.session_id / "volume.npy").is_file()
    second = managers(store)
    assert (await second.restore_sessions()).restored == [kept.session_id]


class _OutageStore(InProcessStore):
    """The in-process store with a switchable outage (as a Redis that went away and came back)."""

    down = False

    async def commit_prompt(self, session_id: str, prompt: PromptRecord) -> None:
        if self.down:
            raise StoreUnavailable("store: Redis failed: connection refused")
        await super().commit_prompt(session_id, prompt)

    async def delete_session(self, session_id: str) -> bool:
        if self.down:
            raise StoreUnavailable("store: Redis failed: connection refused")
        return await super().delete_session(session_id)


@pytest.mark.anyio
async def test_a_session_closed_by_a_store_outage_comes_back_after_a_restart(managers) -> None:  # noqa: ANN001
    store = _OutageStore()
    first = managers(store)
    session, token = await first.create(_volume(), GEOMETRY)
    await first.add_box(session, 1, BOX)
    acknowledged = await first.get_mask(session, 1)
    store.down = True
    with pytest.raises(StoreUnavailable):
        await first.add_clicks(session, 1, [(10, 30, 30)], [1], mode="gru")  # not acknowledged
    with pytest.raises(SessionExpired):
        first.authenticate(session.session_id, token)  # closed here, as documented
    store.down = False
    second = managers(store)
    assert (await second.restore_sessions()).restored == [session.session_id]
    mask, version = await second.get_mask(second.authenticate(session.session_id, token), 1)
    assert version == acknowledged[1] == 1 and np.array_equal(mask, acknowledged[0])


@pytest.mark.anyio
async def test_a_restore_replays_with_the_sessions_own_seed_and_undo_goes_on(managers,  # noqa: ANN001
                                                                           store: MetadataStore) -> None:
    first = managers(store, seed=3)
    session, token = await first.create(_volume(), GEOMETRY)
    await first.add_box(session, 1, BOX)
    masks = [await first.get_mask(session, 1)]
    for point, label in [((10, 30, 30), 1), ((12, 25, 38), 0), ((8, 40, 24), 1)]:
        await first.add_clicks(session, 1, [point], [label], mode="gru")  # sampled with the session's seed
        masks.append(await first.get_mask(session, 1))

    second = managers(store, seed=4)  # today's seed differs from the one the session was created with
    assert (await second.restore_sessions()).restored == [session.session_id]
    restored = second.authenticate(session.session_id, token)
    mask, version = await second.get_mask(restored, 1)
    assert version == masks[-1][1] and np.array_equal(mask, masks[-1][0])
    for expected_mask, expected_version in reversed(masks[:-1]):  # the undo stack came back too
        await second.undo(restored, 1)
        mask, version = await second.get_mask(restored, 1)
        assert np.array_equal(mask, expected_mask) and version > expected_version  # undo is a new version


class _VersionsAhead(InProcessStore):
    """A store whose versions hash says more than its history holds (a history entry lost)."""

    async def object_versions(self, session_id: str) -> dict[int, int]:
        return {oid: v + 1 for oid, v in (await super().object_versions(session_id)).items()}


@pytest.mark.anyio
async def test_a_replay_that_misses_the_stored_versions_is_refused(managers) -> None:  # noqa: ANN001
    store = _VersionsAhead()
    first = managers(store)
    session, token = await first.create(_volume(), GEOMETRY)
    await first.add_box(session, 1, BOX)
    second = managers(store)
    summary = await second.restore_sessions()
    assert summary.failed == [session.session_id] and not summary.restored
    with pytest.raises(SessionExpired, match=r"versions: replay and store differ.*\{1: \(1, 2\)\}"):
        second.authenticate(session.session_id, token)


@pytest.mark.anyio
async def test_short_of_room_the_most_recently_used_session_is_restored(managers,  # noqa: ANN001
                                                                        store: MetadataStore) -> None:
    first = managers(store)
    older, older_token = await first.create(_volume(), GEOMETRY)
    recent, recent_token = await first.create(_volume(1), GEOMETRY)
    await store.touch_session(older.session_id, time.time() - 20)
    await store.touch_session(recent.session_id, time.time() - 5)
    second = managers(store, max_sessions=1)
    summary = await second.restore_sessions()
    assert summary.restored == [recent.session_id] and summary.failed == [older.session_id]
    assert second.authenticate(recent.session_id, recent_token).session_id == recent.session_id
    with pytest.raises(SessionExpired, match="could not be restored"):
        second.authenticate(older.session_id, older_token)


@pytest.mark.anyio
async def test_a_restore_needs_room_for_the_sessions_device_bytes(managers, store: MetadataStore) -> None:  # noqa: ANN001
    first = managers(store)
    session, token = await first.create(_volume(), GEOMETRY)
    await first.add_box(session, 1, BOX)
    needed = session.state.nbytes  # the replay rebuilds the same state
    short = managers(store, max_device_bytes=needed - 1)
    summary = await short.restore_sessions()
    assert summary.failed == [session.session_id] and not summary.restored
    with pytest.raises(SessionExpired, match=f"capacity: the session needs {needed} device bytes, {needed - 1} "):
        short.authenticate(session.session_id, token)
    exact = managers(store, max_device_bytes=needed)  # the limit itself is allowed
    assert (await exact.restore_sessions()).restored == [session.session_id]


@pytest.mark.anyio
async def test_a_restore_counts_the_sessions_already_restored(managers, store: MetadataStore) -> None:  # noqa: ANN001
    first = managers(store)
    recent, _ = await first.create(_volume(), GEOMETRY)
    older, older_token = await first.create(_volume(1), GEOMETRY)
    await store.touch_session(older.session_id, time.time() - 20)
    needed = recent.state.nbytes
    assert older.state.nbytes == needed
    second = managers(store, max_device_bytes=needed, retry_after_s=7)  # room for one of them
    summary = await second.restore_sessions()
    assert summary.restored == [recent.session_id] and summary.failed == [older.session_id]
    with pytest.raises(SessionExpired, match=f"the session needs {needed} device bytes, 0 are free$"):
        second.authenticate(older.session_id, older_token)
    record = await store.get_session(older.session_id)
    assert record is not None
    with pytest.raises(CapacityExceeded) as refused:  # a take-over (app.sessions.replicas) answers 503 with it
        await second.restorer.restore(record, await store.prompt_history(older.session_id))
    assert refused.value.retry_after_s == 7


@pytest.mark.anyio
async def test_a_restored_session_keeps_its_age_and_idle_time(managers, store: MetadataStore) -> None:  # noqa: ANN001
    """The expiry clocks go on from the record's wall-clock times; a time in the future (another host's clock)
    counts as now."""
    first = managers(store)
    aged, _ = await first.create(_volume(), GEOMETRY)
    idle, _ = await first.create(_volume(1), GEOMETRY)
    wall = time.time()
    await store.create_session(replace(aged.record, created_at=wall - 50, last_used_at=wall + 100))
    await store.create_session(replace(idle.record, created_at=wall + 100, last_used_at=wall - 20))

    mono = 10_000.0
    second = managers(store, clock=lambda: mono)
    assert sorted((await second.restore_sessions()).restored) == sorted([aged.session_id, idle.session_id])
    restored_aged, restored_idle = second.held(aged.session_id), second.held(idle.session_id)
    assert restored_aged is not None and restored_idle is not None
    assert restored_aged.created_mono <= mono - 50 and restored_aged.last_used_mono == mono
    assert restored_idle.created_mono == mono and restored_idle.last_used_mono <= mono - 20


@pytest.mark.anyio
async def test_a_restore_keeps_the_order_of_the_last_changes(managers, store: MetadataStore) -> None:  # noqa: ANN001
    """The label map's overlap order is the order of each object's last change: neither the object ids' nor
    the order the objects were created in."""
    first = managers(store)
    session, token = await first.create(_volume(), GEOMETRY)
    await first.add_box(session, 3, BOX)
    await first.add_box(session, 1, [8, 25, 25, 14, 38, 38])
    await first.add_box(session, 2, [7, 22, 22, 15, 40, 40])
    await first.add_clicks(session, 1, [(11, 30, 30)], [1], mode="gru")
    labels_before, order_before = await first.segmentation(session, overlap="recent")
    assert list(order_before) == [3, 2, 1]

    second = managers(store)
    assert (await second.restore_sessions()).restored == [session.session_id]
    labels_after, order_after = await second.segmentation(second.authenticate(session.session_id, token),
                                                          overlap="recent")
    assert list(order_after) == [3, 2, 1] and np.array_equal(labels_after, labels_before)


@pytest.mark.anyio
async def test_a_restored_session_answers_a_retried_prompt_from_its_history(managers,  # noqa: ANN001
                                                                           store: MetadataStore) -> None:
    first = managers(store)
    session, token = await first.create(_volume(), GEOMETRY)
    sent = await first.add_box(session, 1, BOX, key="box-1")
    second = managers(store)
    assert (await second.restore_sessions()).restored == [session.session_id]
    retried = await second.add_box(second.authenticate(session.session_id, token), 1, BOX, key="box-1")
    assert retried.replayed and retried.version == sent.version == 1
    assert [p.version for p in await store.prompt_history(session.session_id)] == [1]  # nothing ran again


@pytest.mark.anyio
async def test_a_record_without_its_volume_here_is_left_alone(managers, store: MetadataStore,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    """A record whose volume is not in this storage belongs to another process: neither restored nor refused."""
    first = managers(store)
    here, _ = await first.create(_volume(1), GEOMETRY)
    elsewhere, token = await first.create(_volume(), GEOMETRY)
    await store.touch_session(here.session_id, time.time() - 20)  # after the other one in line
    (tmp_path / "storage" / elsewhere.session_id / "volume.json").unlink()
    second = managers(store)
    summary = await second.restore_sessions()
    assert summary.not_here == [elsewhere.session_id] and not summary.failed
    assert summary.restored == [here.session_id]
    assert await store.get_session(elsewhere.session_id) is not None
    from app.errors import Unauthorized

    with pytest.raises(Unauthorized):  # no tombstone: this process knows nothing of it
        second.authenticate(elsewhere.session_id, token)


@pytest.mark.anyio
async def test_a_session_exactly_at_its_age_or_idle_limit_is_restored(managers, store: MetadataStore,  # noqa: ANN001
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Expired means past the limit (as the registry's clocks count it), not at it."""
    import types

    import app.sessions.restore as restore_module

    wall = float(int(time.time()))  # a whole number: wall - (wall - 60) == 60 exactly
    monkeypatch.setattr(restore_module, "time", types.SimpleNamespace(time=lambda: wall,
                                                                      perf_counter=time.perf_counter))
    first = managers(store)
    at_age, _ = await first.create(_volume(), GEOMETRY)
    at_idle, _ = await first.create(_volume(1), GEOMETRY)
    await store.create_session(replace(at_age.record, created_at=wall - 60, last_used_at=wall))
    await store.create_session(replace(at_idle.record, created_at=wall - 10, last_used_at=wall - 30))
    second = managers(store, idle_timeout_s=30, max_session_age_s=60)
    summary = await second.restore_sessions()
    assert not summary.expired
    assert sorted(summary.restored) == sorted([at_age.session_id, at_idle.session_id])
