"""The two-stage training loop (paper section 2.5 / SPEC 2.5) for a backbone and the GRU corrector.

Per step, for a batch of views (``DataEngine``) at one training frame:
    round 0   encode once, decode with the box only -> box loss (stage 1 stops here);
              (``grad_rounds="last"``: only round 0 and each sample's last round are back-propagated,
              the rounds between run without gradients and only set up the last one's state)
    rounds    stage 2 draws per sample 0..5 refinement rounds with weights [1,3,10,10,3,1]; each round:
              a click from the current prediction with the evaluation's click rule; the GRU corrector reads
              ``build_corrector_input`` of the current logits (its hidden state carried across rounds) and is
              trained on the voxels it updates (Dice + BCE against the ground truth there); the decoder
              re-runs with the box, all clicks and, for zoom-in views, the corrected logits as mask prompt
              (as the predictor does), and its output is scored (Dice + BCE).
AdamW, warm-up then cosine decay over the planned run; seeded; resumable checkpoints (models, optimiser,
step, RNG states) every few minutes; intermediate weight exports; a log file and a loss-curve PNG.

Training frames: a fully convolutional backbone (``compact``) may train on smaller frames than its shipped
one (same parameters, cheaper steps); ``train_frames`` lists them, each a multiple of the backbone's strides.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from app.models import get_model_config
from app.models.backbone import Backbone
from app.models.build import build_backbone, build_corrector, frame_view
from app.models.corrector import apply_correction
from app.models.sampling import SamplingConfig, build_corrector_input
from training.clicks import simulate_click
from training.config import TrainConfig, config_to_dict
from training.engine import DataEngine
from training.export import export_weights
from training.losses import dice_bce
from training.sampler import Frame, View

log = logging.getLogger("training")
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Progress:
    """What a checkpoint restores besides the weights: step, training time, loss history."""

    step: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def parse_deadline(value: str | None) -> float | None:
    """ISO 8601 UTC time -> epoch seconds (None stays None)."""
    if value is None:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class Trainer:
    """Owns the models, optimiser, data engine and run directory of one training run."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, engine: DataEngine | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _setup_logging(self.run_dir / "training.log")
        torch.set_num_threads(max(1, cfg.num_threads))
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)

        self.model_cfg = get_model_config(cfg.model_config)
        self.backbone = build_backbone(self.model_cfg)
        self.corrector = build_corrector(self.model_cfg)
        if cfg.init_weights:
            from app.models.weights import load_checkpoint

            load_checkpoint(cfg.init_weights, self.backbone, self.corrector, config_name=self.model_cfg.name)
        frames = [tuple(f) for f in cfg.train_frames] if cfg.train_frames else [tuple(self.backbone.frame)]
        if len(cfg.train_frame_weights or []) not in (0, len(frames)):
            raise ValueError("train_frame_weights: need one weight per train frame")
        self.frames: list[Frame] = frames  # type: ignore[assignment]
        w = np.asarray(cfg.train_frame_weights or [1.0] * len(frames), dtype=np.float64)
        self.frame_p = w / w.sum()
        self.frame_models = {f: frame_view(self.backbone, self.model_cfg.backbone_kwargs, f, "train_frames")
                             for f in frames}
        # The starting backbone, frozen, per frame (config validation ensures init_weights for a teacher).
        self.teachers: dict[Frame, Backbone] = {}
        if cfg.box_teacher_weight > 0:
            teacher = copy.deepcopy(self.backbone).eval().requires_grad_(False)
            self.teachers = {f: frame_view(teacher, self.model_cfg.backbone_kwargs, f) for f in frames}
        self.optimizer = torch.optim.AdamW(
            [
                {"params": self.backbone.parameters(), "lr": cfg.lr, "base_lr": cfg.lr},
                {"params": self.corrector.parameters(), "lr": cfg.corrector_lr, "base_lr": cfg.corrector_lr},
            ],
            weight_decay=cfg.weight_decay,
        )
        self.sampling = SamplingConfig(tau=cfg.sampling_tau, k=cfg.sampling_k, radius=cfg.sampling_radius)
        self.round_p = np.asarray(cfg.round_weights, dtype=np.float64) / float(np.sum(cfg.round_weights))
        self.progress = Progress()
        self.engine = engine if engine is not None else DataEngine(cfg.data, self.rng)
        if resume:
            self.load_checkpoint(self.run_dir / CHECKPOINT_NAME)
        self._stop_requested = False

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.state_dict(),
            "corrector": self.corrector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": self.progress.__dict__,
            "rng": {
                "python": random.getstate(),
                "numpy_global": np.random.get_state(),
                "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
            },
            "engine_draws": dict(self.engine.draws),
            "config": config_to_dict(self.cfg),
        }

    def save_checkpoint(self) -> Path:
        path = self.run_dir / CHECKPOINT_NAME
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.checkpoint_state(), tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written above
        self.backbone.load_state_dict(state["backbone"])
        self.corrector.load_state_dict(state["corrector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy_global"])
        self.rng.bit_generator.state = rng["numpy"]
        torch.set_rng_state(rng["torch"])
        self.engine.draws.update(state.get("engine_draws", {}))
        log.info("resumed from %s at step %d (%.0f s trained)", path, self.progress.step, self.progress.train_seconds)

    # ------------------------------------------------------------------ one step

    def stage(self) -> int:
        cfg, p = self.cfg, self.progress
        if cfg.stage1_steps is None and cfg.stage1_minutes is None:
            return 2
        done_steps = cfg.stage1_steps is not None and p.step >= cfg.stage1_steps
        done_time = cfg.stage1_minutes is not None and p.train_seconds >= cfg.stage1_minutes * 60
        return 2 if (done_steps or done_time) else 1

    def draw_batch(self, frame: Frame) -> list[View]:
        return [self.engine.sample(frame, self.rng)[0] for _ in range(self.cfg.batch_size)]

    def train_step(self, views: list[View], stage: int) -> dict[str, float]:
        """One optimisation step on ``views`` (all of one frame). Returns the step's loss terms."""
        frame: Frame = tuple(views[0].image.shape)  # type: ignore[assignment]
        model = self.frame_models[frame] if frame in self.frame_models else frame_view(
            self.backbone, self.model_cfg.backbone_kwargs, frame
        )
        self.backbone.train()
        self.corrector.train()
        b = len(views)
        image = torch.from_numpy(np.stack([v.image for v in views]))[:, None].float()
        gt = torch.from_numpy(np.stack([v.mask for v in views]))[:, None].float()
        gt_np = [v.mask for v in views]
        boxes = torch.from_numpy(np.stack([v.box for v in views])).float()
        # The previous mask is a prompt in native windows and ROI views, as in the predictor (not in zoom-out).
        mask_prompted = [v.kind in ("zoom_in", "roi") for v in views]
        rounds = [0] * b if stage == 1 else [int(self.rng.choice(len(self.round_p), p=self.round_p)) for _ in views]

        emb = model.encode(image)
        logits = model.decode(emb, boxes=boxes)
        seg_losses: list[list[Tensor]] = [[loss] for loss in dice_bce(logits, gt)]
        box_loss = float(torch.stack([s[0].detach() for s in seg_losses]).mean())
        if self.teachers:
            teacher = self.teachers[frame] if frame in self.teachers else frame_view(
                next(iter(self.teachers.values())), self.model_cfg.backbone_kwargs, frame
            )
            with torch.no_grad():
                target = torch.sigmoid(teacher.decode(teacher.encode(image), boxes=boxes))
            pull = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2, 3, 4))
            for i in range(b):
                seg_losses[i][0] = seg_losses[i][0] + self.cfg.box_teacher_weight * pull[i]
        prev = logits.detach().clone()
        points: list[list[tuple[int, int, int]]] = [[] for _ in views]
        labels: list[list[int]] = [[] for _ in views]
        hidden = [self.corrector.init_hidden(1) for _ in views]
        corrector_losses: list[Tensor] = []
        for r in range(1, max(rounds) + 1):
            active = []
            for i in range(b):
                if rounds[i] < r:
                    continue
                click = simulate_click(prev[i, 0].numpy() > 0, gt_np[i])
                if click is None:  # already perfect: nothing to correct in this round
                    continue
                points[i].append(click[0])
                labels[i].append(click[1])
                active.append(i)
            if not active:
                break
            corrected, closs = self._corrector_round(active, prev, gt, points, labels, hidden, frame)
            corrector_losses.extend(closs)
            # "last": earlier rounds only produce the state the last one starts from (cheaper on a CPU).
            scored = {i for i in active if self.cfg.grad_rounds == "all" or rounds[i] == r}
            for group in ([i for i in active if mask_prompted[i]], [i for i in active if not mask_prompted[i]]):
                if not group:
                    continue
                idx = torch.tensor(group)
                n = max(len(points[i]) for i in group)
                pts = torch.zeros(len(group), n, 3)
                labs = torch.full((len(group), n), -1, dtype=torch.long)
                for j, i in enumerate(group):
                    pts[j, : len(points[i])] = torch.tensor(points[i], dtype=torch.float32)
                    labs[j, : len(labels[i])] = torch.tensor(labels[i])
                mask_prompt = corrected[idx] if mask_prompted[group[0]] else None
                with torch.set_grad_enabled(bool(scored.intersection(group))):
                    out = model.decode(_batch_rows(emb, idx), boxes=boxes[idx], points=pts,
                                       point_labels=labs, mask_logits=mask_prompt)
                for j, loss in enumerate(dice_bce(out, gt[idx])):
                    if group[j] in scored:
                        seg_losses[group[j]].append(loss)
                prev[idx] = out.detach()

        seg = torch.stack([torch.stack(s).mean() for s in seg_losses]).mean()
        corr = torch.stack(corrector_losses).mean() if corrector_losses else torch.zeros(())
        total = seg + self.cfg.corrector_loss_weight * corr
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(list(self.backbone.parameters()) + list(self.corrector.parameters()), 5.0)
        self.optimizer.step()
        with torch.no_grad():
            final_dice = _dice(prev, gt)
        return {
            "loss": float(total.detach()),
            "seg": float(seg.detach()),
            "box": box_loss,
            "corrector": float(corr.detach()),
            "rounds": float(np.mean(rounds)),
            "final_dice": final_dice,
            "stage": float(stage),
        }

    def _corrector_round(
        self,
        active: list[int],
        prev: Tensor,
        gt: Tensor,
        points: list[list[tuple[int, int, int]]],
        labels: list[list[int]],
        hidden: list[Tensor],
        frame: Frame,
    ) -> tuple[Tensor, list[Tensor]]:
        """One GRU round for the active samples; returns (corrected logits (B,1,*frame) detached, losses)."""
        roi = (0, 0, 0, *frame)
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        inputs = [
            build_corrector_input(
                prev[i, 0], roi, frame, torch.tensor(points[i]), torch.tensor(labels[i]),
                points[i][0], self.sampling, gen,
            )
            for i in active
        ]
        out = self.corrector(
            torch.stack([inp.features for inp in inputs]), torch.cat([hidden[i] for i in active], dim=1)
        )
        corrected = prev.clone()
        losses = []
        for j, (i, inp) in enumerate(zip(active, inputs, strict=True)):
            hidden[i] = out.hidden[:, j : j + 1]
            delta_c = out.delta_c[j] if out.delta_c is not None else None
            new_logits, touched = apply_correction(prev[i, 0], roi, frame, inp.coords, inp.valid, out.delta_p[j], delta_c)
            corrected[i, 0] = new_logits.detach()
            if touched.shape[0] == 0:
                continue
            values = new_logits[touched[:, 0], touched[:, 1], touched[:, 2]]
            target = gt[i, 0][touched[:, 0], touched[:, 1], touched[:, 2]]
            losses.append(dice_bce(values[None], target[None])[0])
        return corrected, losses

    # ------------------------------------------------------------------ the run

    def planned_seconds(self, start_wall: float) -> float | None:
        """Total training seconds this run is planned for (for the learning-rate schedule)."""
        limits = []
        if self.cfg.max_minutes is not None:
            limits.append(self.cfg.max_minutes * 60)
        deadline = parse_deadline(self.cfg.deadline_utc)
        if deadline is not None:
            limits.append(self.progress.train_seconds + max(deadline - start_wall, 0.0))
        return min(limits) if limits else None

    def set_lr(self, planned_seconds: float | None) -> float:
        cfg, p = self.cfg, self.progress
        if planned_seconds:
            frac = p.train_seconds / planned_seconds
        elif cfg.max_steps:
            frac = p.step / cfg.max_steps
        else:
            frac = 0.0
        scale = min(1.0, (p.step + 1) / max(cfg.warmup_steps, 1)) * (
            cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        )
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        return scale

    def should_stop(self, deadline: float | None) -> str | None:
        cfg, p = self.cfg, self.progress
        if self._stop_requested:
            return "signal"
        if cfg.max_steps is not None and p.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes is not None and p.train_seconds >= cfg.max_minutes * 60:
            return "max_minutes"
        if deadline is not None and time.time() >= deadline:
            return "deadline"
        return None

    def run(self) -> dict[str, Any]:
        """Train until a limit, then checkpoint and export. Returns the meta written beside the weights."""
        from tqdm import tqdm

        cfg = self.cfg
        start_wall = time.time()
        deadline = parse_deadline(cfg.deadline_utc)
        planned = self.planned_seconds(start_wall)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        log.info("config %s", json.dumps(config_to_dict(cfg)))
        log.info("data %s", json.dumps(self.engine.summary()))
        log.info("frames %s p=%s; planned %.0f s; backbone %d params, corrector %d params",
                 self.frames, self.frame_p.round(3).tolist(), planned or -1,
                 sum(p.numel() for p in self.backbone.parameters()), sum(p.numel() for p in self.corrector.parameters()))
        last_ckpt = last_export = time.time()
        bar = tqdm(total=cfg.max_steps, initial=self.progress.step, mininterval=30, desc=cfg.name, dynamic_ncols=False)
        ema: dict[str, float] = {}
        reason: str | None = None
        try:
            failures = 0
            while (reason := self.should_stop(deadline)) is None:
                t0 = time.time()
                stage = self.stage()
                frame = self.frames[int(self.rng.choice(len(self.frames), p=self.frame_p))]
                try:
                    views = self.draw_batch(frame)
                    t_data = time.time() - t0
                    lr_scale = self.set_lr(planned)
                    terms = self.train_step(views, stage)
                    failures = 0
                except (ValueError, RuntimeError, IndexError) as exc:
                    # One odd sample must not end a long run; many in a row mean a real bug.
                    failures += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    log.exception("step %d failed (%d in a row): %s", self.progress.step + 1, failures, exc)
                    if failures >= cfg.max_consecutive_failures:
                        reason = "failures"
                        break
                    continue
                self.progress.step += 1
                self.progress.train_seconds += time.time() - t0
                for k, v in terms.items():
                    ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
                record = {"step": self.progress.step, "time": round(self.progress.train_seconds, 1),
                          "lr_scale": round(lr_scale, 4), "data_s": round(t_data, 3), "frame": frame[1], **terms}
                self.progress.history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{ema['loss']:.3f}", dice=f"{ema['final_dice']:.3f}", stage=stage)
                if self.progress.step % cfg.log_every == 0 or self.progress.step == 1:
                    log.info("step %d stage %d %s", self.progress.step, stage,
                             " ".join(f"{k}={v:.4f}" for k, v in ema.items()))
                if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    self.plot()
                    last_ckpt = time.time()
                if cfg.export_path and time.time() - last_export >= cfg.export_minutes * 60:
                    self.export(final=False, reason="periodic", ema=ema)
                    last_export = time.time()
        except BaseException as exc:  # still checkpoint and export what was learnt, then re-raise
            reason = f"error: {type(exc).__name__}: {exc}"
            log.exception("training stopped by an error")
            self._finish(reason, ema, bar)
            raise
        return self._finish(reason, ema, bar)

    def _finish(self, reason: str | None, ema: dict[str, float], bar: Any) -> dict[str, Any]:
        cfg = self.cfg
        bar.close()
        log.info("stopping: %s at step %d (%.0f s trained)", reason, self.progress.step, self.progress.train_seconds)
        self.save_checkpoint()
        self.plot()
        meta = self.meta(final=True, reason=reason or "", ema=ema)
        if cfg.export_path:
            self.export(final=True, reason=reason or "", ema=ema)
        (self.run_dir / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        return meta

    def _request_stop(self, signum: int, frame: Any) -> None:
        log.info("signal %d: stopping after this step", signum)
        self._stop_requested = True

    def meta(self, final: bool, reason: str, ema: dict[str, float]) -> dict[str, Any]:
        return {
            "run": self.cfg.name,
            "final": final,
            "stop_reason": reason,
            "model_config": self.model_cfg.name,
            "steps": self.progress.step,
            "train_seconds": round(self.progress.train_seconds, 1),
            "written_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "train_frames": [list(f) for f in self.frames],
            "loss_ema": {k: round(v, 5) for k, v in ema.items()},
            "data": self.engine.summary(),
            "commit": _git_commit(),
            "config": config_to_dict(self.cfg),
            **self.inference_meta(),
        }

    def inference_meta(self) -> dict[str, Any]:
        """How the predictor must run these weights (``build.resolve_inference``): ROI-view training means
        ``zoom_in="resample"`` at the most frequent train frame; otherwise nothing (windows)."""
        if self.cfg.data.roi_view_prob <= 0:
            return {}
        frame = self.frames[int(np.argmax(self.frame_p))]
        return {"inference": {"zoom_in": "resample", "roi_frame": list(frame)}}

    def export(self, final: bool, reason: str, ema: dict[str, float]) -> None:
        assert self.cfg.export_path is not None
        meta = self.meta(final, reason, ema)
        export_weights(self.cfg.export_path, self.model_cfg.name, self.backbone, self.corrector, meta)
        log.info("exported weights to %s (step %d, final=%s)", self.cfg.export_path, self.progress.step, final)

    def plot(self) -> Path | None:
        """Loss curve PNG (moving averages) in the run directory."""
        hist = self.progress.history
        if not hist:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = np.array([h["step"] for h in hist])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for key in ("loss", "box", "seg", "corrector"):
            axes[0].plot(steps, _smooth(np.array([h[key] for h in hist])), label=key)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("loss (moving average)")
        axes[0].legend()
        axes[1].plot(steps, _smooth(np.array([h["final_dice"] for h in hist])), label="train Dice after last round")
        axes[1].set_xlabel("step")
        axes[1].set_ylim(0, 1)
        axes[1].legend()
        fig.suptitle(f"{self.cfg.name}: {hist[-1]['step']} steps, {hist[-1]['time'] / 60:.1f} min")
        fig.tight_layout()
        path = self.run_dir / "loss_curve.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path


def _batch_rows(embedding: Tensor | tuple[Tensor, ...], idx: Tensor) -> Tensor | tuple[Tensor, ...]:
    """Rows ``idx`` of an embedding: one tensor (SegVol) or a tuple of per-scale tensors (compact)."""
    if isinstance(embedding, Tensor):
        return embedding[idx]
    return tuple(e[idx] for e in embedding)


def _smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    if values.size < 2:
        return values
    window = max(1, min(window, values.size // 2 or 1))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _dice(logits: Tensor, target: Tensor) -> float:
    pred = (logits > 0).float()
    inter = (pred * target).flatten(1).sum(1)
    denom = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return float((2 * inter / denom.clamp(min=1)).mean())


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except OSError:
        return None


def _setup_logging(path: Path) -> None:
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    fmt.converter = time.gmtime
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(fmt)
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    log.addHandler(file_handler)
    log.addHandler(stream)
    log.propagate = False
