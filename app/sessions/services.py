"""Everything one server process runs, built once at startup and stopped at shutdown (framework-free).

    services = await start_services(settings)   # model loaded + warmed up, store connected, sessions
                                                # restored (storage_dir), reaper running
    ...
    await stop_services(services)               # reaper, sessions, device thread, store: in that order

``app.main``'s lifespan is a thin wrapper around these two calls.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.config import Settings
from app.sessions.admission import AdmissionLimits
from app.sessions.executor import DeviceExecutor
from app.sessions.manager import SessionManager
from app.sessions.metrics import ServiceMetrics
from app.sessions.persistence import Persistence, SessionStorage, model_fingerprint
from app.sessions.reaper import Reaper
from app.sessions.replicas import ReplicaCoordinator
from app.sessions.restore import RestoreSummary
from app.sessions.session import SessionLimits
from app.sessions.store import MetadataStore, RedisStore, build_store

if TYPE_CHECKING:
    from app.models import Predictor

log = logging.getLogger(__name__)

_STORE_TTL_MARGIN_S = 300.0


@dataclass
class Services:
    """The process's long-lived objects (one model, one device executor, one store, one manager)."""

    settings: Settings
    predictor: Predictor
    store: MetadataStore
    executor: DeviceExecutor
    manager: SessionManager
    reaper: Reaper
    metrics: ServiceMetrics
    ready: bool = False
    restored: RestoreSummary | None = None  # what the startup restore did (None without storage_dir)
    replicas: ReplicaCoordinator | None = None  # the session directory's side of this replica (replica_id)

    @property
    def store_kind(self) -> str:
        return "redis" if self.settings.redis_url else "in_process"


def limits_from(settings: Settings) -> SessionLimits:
    return SessionLimits(
        max_sessions=settings.max_sessions,
        max_device_bytes=settings.max_device_bytes,
        retry_after_s=settings.retry_after_s,
        idle_timeout_s=settings.idle_timeout_s,
        max_session_age_s=settings.max_session_age_s,
        tombstones=settings.tombstones,
        stream_queue_frames=settings.stream_queue_frames,
        seed=settings.seed,
        exclusive_objects=settings.exclusive_objects,
        idle_trim_s=settings.idle_trim_s,
        admission=AdmissionLimits(max_queue=settings.admission_max_queue, max_wait_ms=settings.admission_max_wait_ms,
                                  max_queued_share=settings.admission_max_queued_share,
                                  max_creating=settings.admission_max_creating,
                                  paced_admissions=settings.admission_paced_admissions,
                                  window_s=settings.admission_window_s, min_samples=settings.admission_min_samples),
    )


def load_predictor(settings: Settings) -> Predictor:
    """Build the model named by the settings (blocking: call it in a thread)."""
    from app.models import build_predictor

    if settings.weights is None and not settings.allow_random_weights:  # Settings validates it too
        raise ValueError("weights: None (random init) requires allow_random_weights=True")
    if settings.weights is None:
        log.warning("model %s runs with RANDOM weights (allow_random_weights=True): for tests and timing only",
                    settings.model_config_name)
    from app.models import PredictorConfig

    return build_predictor(settings.model_config_name, weights=settings.weights, device=settings.device,
                           predictor_config=PredictorConfig(propagation_reach=settings.click_propagation_reach,
                                                            click_region_reach=settings.click_region_reach,
                                                            click_region_foreground_reach=settings.click_region_reach,
                                                            text_tokenizer=settings.text_tokenizer,
                                                            zoom_in=settings.zoom_in),
                           with_text=settings.text_prompts)


def warm_up(predictor: Predictor) -> None:
    """Run one tiny session through every step kind so the first user request pays no one-off costs."""
    d, h, w = predictor.frame
    shape = (max(d // 2, 4), max(h // 2, 8), max(w // 2, 8))
    volume = np.random.default_rng(0).normal(0.0, 10.0, shape).astype(np.float32)
    volume[shape[0] // 4: 3 * shape[0] // 4, shape[1] // 4: 3 * shape[1] // 4, shape[2] // 4: 3 * shape[2] // 4] += 100
    state = predictor.init_state(volume, (1.0, 1.0, 1.0))
    box = [shape[0] // 4, shape[1] // 4, shape[2] // 4, 3 * shape[0] // 4 - 1, 3 * shape[1] // 4 - 1,
           3 * shape[2] // 4 - 1]
    predictor.add_box(state, 1, box)
    centre = [(box[0] + box[3]) // 2, (box[1] + box[4]) // 2, (box[2] + box[5]) // 2]
    predictor.add_clicks(state, 1, [centre], [1], mode="both")
    predictor.undo(state, 1)
    predictor.get_mask(state, 1)


def _device_allocated_bytes(predictor: Predictor) -> float:
    import torch

    if predictor.device.type == "cuda":
        return float(torch.cuda.memory_allocated(predictor.device))
    return 0.0


async def build_persistence(settings: Settings, predictor: Predictor, executor: DeviceExecutor
                            ) -> Persistence | None:
    """The storage of ``settings.storage_dir`` (None when unset), with the model's fingerprint."""
    if settings.storage_dir is None:
        return None
    if not settings.redis_url:
        log.warning("storage_dir without Redis: volumes are written, but the in-process store dies with the "
                    "process, so no session survives a restart (use Redis for durability)")
    storage = await asyncio.to_thread(SessionStorage, settings.storage_dir)
    fingerprint = await executor.run(model_fingerprint, predictor)
    return Persistence(storage, fingerprint, keep_on_shutdown=bool(settings.redis_url))


async def start_services(
    settings: Settings, *, predictor: Predictor | None = None, metrics: ServiceMetrics | None = None
) -> Services:
    """Load (or take) the predictor, warm it up, connect the store, restore the stored sessions (when
    ``storage_dir`` is set), start the reaper."""
    executor = DeviceExecutor()
    store: MetadataStore | None = None
    manager: SessionManager | None = None
    metrics = metrics or ServiceMetrics()
    try:
        if predictor is None:
            predictor = await executor.run(load_predictor, settings)
        if settings.warmup:
            await executor.run(warm_up, predictor)
        store = build_store(settings.redis_url, prefix=settings.redis_prefix,
                            ttl_s=settings.max_session_age_s + _STORE_TTL_MARGIN_S)
        await store.connect()
        persistence = await build_persistence(settings, predictor, executor)
        manager = SessionManager(predictor, store, executor, limits_from(settings), metrics,
                                 persistence=persistence, replica_id=settings.replica_id)
        restored = None
        if persistence is not None:
            # Eager: the server answers only once every stored session is back (one log line per session).
            restored = await manager.restore_sessions()
            log.info("restore: %d session(s) restored, %d failed, %d expired, %d of other processes, "
                     "%d orphan folder(s) removed, in %.2f s", len(restored.restored), len(restored.failed),
                     len(restored.expired), len(restored.not_here), restored.orphans_removed, restored.seconds)
    except BaseException:
        if manager is not None:
            await manager.shutdown()
        if store is not None:
            await store.close()
        await asyncio.to_thread(executor.shutdown)
        raise
    model = predictor
    metrics.bind_gauges(
        sessions=lambda: float(len(manager)),
        session_device_bytes=lambda: float(manager.device_bytes()),
        device_allocated_bytes=lambda: _device_allocated_bytes(model),
        device_queue_waiting=lambda: float(executor.waiting),
        device_queued_share=lambda: executor.bulk.queued_share(settings.admission_window_s),
    )
    replicas = None
    if settings.replica_id is not None:  # Settings requires Redis + storage_dir with it
        assert isinstance(store, RedisStore)
        replicas = ReplicaCoordinator(manager, store, settings.replica_id, settings.directory_ttl_s)
        await replicas.start()
    reaper = Reaper(manager, settings.reaper_interval_s)
    reaper.start()
    log.info("ready: model %s on %s, %s store, %s", predictor.config_name, predictor.device,
             "redis" if settings.redis_url else "in-process",
             f"storage in {settings.storage_dir}" if settings.storage_dir else "no persistence")
    return Services(settings, predictor, store, executor, manager, reaper, metrics, ready=True, restored=restored,
                    replicas=replicas)


async def stop_services(services: Services) -> None:
    """Stop accepting work and release everything (sessions first, then the device thread, then the store)."""
    services.ready = False
    await services.reaper.stop()
    if services.replicas is not None:
        await services.replicas.stop()
    await services.manager.shutdown()
    await asyncio.to_thread(services.executor.shutdown)
    await services.store.close()
