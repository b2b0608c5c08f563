"""Prometheus metrics of one server process (one registry per app, so tests can build many apps).

Exported series (all prefixed ``segsvc_``):

    http_request_duration_seconds{method, route, status}   histogram, route = the path template
    model_stage_duration_seconds{step, stage}               histogram from each Change.timings_ms
    prompts_total{op}                                       counter of acknowledged prompts
    sessions                                                gauge: live sessions
    session_device_bytes                                    gauge: device bytes held by all sessions (state.nbytes)
    device_allocated_bytes                                  gauge: allocator view (CUDA only; 0 on CPU)
    device_queue_waiting                                    gauge: tasks waiting for the device lock
    device_queued_share                                     gauge: share of the admission window some call waited
                                                            for the bulk lane (what admission control reads)
    sessions_ended_total{reason}                            counter: idle / max_age / deleted / ...
    capacity_rejections_total{limit}                        counter: sessions / device_bytes / queue / latency /
                                                            queued / paced / creating
    stream_frames_total{kind}, stream_frame_bytes_total     counters of WebSocket frames sent
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The metric objects of one server process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram(
            "segsvc_http_request_duration_seconds", "HTTP request latency by route template.",
            ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.stage_seconds = Histogram(
            "segsvc_model_stage_duration_seconds", "Model stage latency (Change.timings_ms) by step and stage.",
            ["step", "stage"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.prompts = Counter("segsvc_prompts_total", "Acknowledged prompts by operation.", ["op"], registry=r)
        self.sessions = Gauge("segsvc_sessions", "Live sessions in this process.", registry=r)
        self.session_device_bytes = Gauge(
            "segsvc_session_device_bytes", "Device bytes held by all sessions (sum of state.nbytes).", registry=r
        )
        self.device_allocated_bytes = Gauge(
            "segsvc_device_allocated_bytes", "Bytes allocated on the compute device (CUDA only).", registry=r
        )
        self.device_queue_waiting = Gauge(
            "segsvc_device_queue_waiting", "Tasks waiting for the device lock.", registry=r
        )
        self.device_queued_share = Gauge(
            "segsvc_device_queued_share",
            "Share of the last admission window during which some call waited for the bulk device lane.", registry=r
        )
        self.sessions_ended = Counter(
            "segsvc_sessions_ended_total", "Sessions ended, by reason.", ["reason"], registry=r
        )
        self.capacity_rejections = Counter(
            "segsvc_capacity_rejections_total", "Requests refused with 503, by limit.", ["limit"], registry=r
        )
        self.stream_frames = Counter(
            "segsvc_stream_frames_total", "WebSocket binary frames sent, by kind.", ["kind"], registry=r
        )
        self.stream_frame_bytes = Counter(
            "segsvc_stream_frame_bytes_total", "Bytes of WebSocket binary frames sent.", registry=r
        )

    def observe_timings(self, step: str, timings_ms: Mapping[str, float]) -> None:
        """Record one Change's stage timings (milliseconds) as seconds."""
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(step=step, stage=stage).observe(ms / 1e3)

    def bind_gauges(
        self,
        *,
        sessions: Callable[[], float],
        session_device_bytes: Callable[[], float],
        device_allocated_bytes: Callable[[], float],
        device_queue_waiting: Callable[[], float],
        device_queued_share: Callable[[], float],
    ) -> None:
        """Make the gauges read live values at scrape time (callables must be cheap and thread-safe)."""
        self.sessions.set_function(sessions)
        self.session_device_bytes.set_function(session_device_bytes)
        self.device_allocated_bytes.set_function(device_allocated_bytes)
        self.device_queue_waiting.set_function(device_queue_waiting)
        self.device_queued_share.set_function(device_queued_share)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
