"""The data engine: draws training views of objects from the switchable sources.

Sources (``DataConfig.source_weights``; weight 0 switches one off):
    labelled   the train split's label maps, each label (or one of its connected components) an object;
    synthetic  a synthetic lesion pasted into a train volume (``training.synthetic``), or with probability
               ``compound_prob`` a compound lesion with nested sub-regions, one of them the object
               (``training.compound``);
    pseudo     a coherent-intensity region of a train volume (``training.pseudo``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from training.compound import choose_object, make_compound_lesion, paste_compound
from training.config import DataConfig
from training.pseudo import PseudoObjectPool
from training.sampler import Frame, View, make_view
from training.sources import TrainVolume, load_train_volume, sample_labelled, train_cases
from training.synthetic import log_uniform_size, make_lesion, paste_lesion, sample_lesion_centre

SOURCES = ("labelled", "synthetic", "pseudo")


class DataEngine:
    """Loads the train volumes once, then ``sample(frame, rng)`` returns one augmented ``View``."""

    def __init__(self, cfg: DataConfig, rng: np.random.Generator, volumes: list[TrainVolume] | None = None) -> None:
        unknown = set(cfg.source_weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"source_weights: unknown sources {sorted(unknown)}; known: {SOURCES}")
        weights = np.array([max(float(cfg.source_weights.get(s, 0.0)), 0.0) for s in SOURCES])
        if weights.sum() <= 0:
            raise ValueError("source_weights: at least one source needs a positive weight")
        self.cfg = cfg
        self.source_p = weights / weights.sum()
        if volumes is None:
            volumes = [load_train_volume(cfg.root, info, cfg.min_object_voxels) for info in train_cases(cfg.root, cfg.cases)]
        if not volumes:
            raise ValueError("data: no train volumes selected")
        self.volumes = volumes
        self.pseudo: PseudoObjectPool | None = None
        if self.source_p[SOURCES.index("pseudo")] > 0:
            self.pseudo = PseudoObjectPool(
                volumes, cfg.pseudo_pool_size, cfg.pseudo_refresh_prob, rng, cfg.min_object_voxels
            )
        self.draws: Counter[str] = Counter()

    def sample(self, frame: Frame, rng: np.random.Generator) -> tuple[View, str]:
        """One view of one object and the name of its source."""
        source = SOURCES[int(rng.choice(len(SOURCES), p=self.source_p))]
        for _ in range(20):
            drawn = self._draw(source, rng)
            if drawn is not None:
                image, mask = drawn
                self.draws[source] += 1
                return make_view(image, mask, frame, self.cfg, rng), source
        raise RuntimeError(f"data: source {source!r} produced no object in 20 tries")

    def _image(self, volume: TrainVolume, rng: np.random.Generator) -> np.ndarray:
        return volume.images["npz" if rng.random() < self.cfg.npz_image_prob else "nifti"]

    def _draw(self, source: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        cfg = self.cfg
        if source == "labelled":
            volume, mask = sample_labelled(self.volumes, rng, cfg.component_prob, cfg.min_object_voxels)
            return self._image(volume, rng), mask
        if source == "pseudo":
            assert self.pseudo is not None
            volume, mask = self.pseudo.draw(rng)
            return self._image(volume, rng), mask
        volume = self.volumes[int(rng.integers(len(self.volumes)))]
        # Drawn only when switched on, so configs without compound lesions keep their random stream.
        if cfg.compound_prob > 0 and rng.random() < cfg.compound_prob:
            return self._draw_compound(volume, rng)
        high = int(min(cfg.synthetic_max_voxels, max(cfg.synthetic_min_voxels + 1, volume.label.size // 20)))
        size = log_uniform_size(rng, cfg.synthetic_min_voxels, high)
        lesion = make_lesion(size, volume.spacing, rng=rng)
        centre = sample_lesion_centre(volume.body, volume.shape, rng)
        pasted = paste_lesion(self._image(volume, rng), lesion, centre, rng)
        if pasted.label.sum() < cfg.min_object_voxels:
            return None
        return pasted.image, pasted.label

    def _draw_compound(self, volume: TrainVolume, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        cfg = self.cfg
        high = int(min(cfg.compound_max_voxels, max(cfg.compound_min_voxels + 1, volume.label.size // 10)))
        lesion = make_compound_lesion(log_uniform_size(rng, cfg.compound_min_voxels, high), volume.spacing, rng)
        name = choose_object(lesion, rng, cfg.min_object_voxels)
        if name is None:
            return None
        centre = sample_lesion_centre(volume.body, volume.shape, rng)
        pasted = paste_compound(self._image(volume, rng), lesion, centre, name, rng)
        if pasted.label.sum() < cfg.min_object_voxels:
            return None
        self.draws[f"compound:{name}"] += 1
        return pasted.image, pasted.label

    def summary(self) -> dict[str, Any]:
        """Data counts and licences, for the log and the weights' meta."""
        cases = [
            {
                "case": v.info.case_id,
                "modality": v.info.modality,
                "license": v.info.license,
                "gt_kind": v.info.gt_kind,
                "shape": list(v.shape),
                "objects": len(v.objects),
            }
            for v in self.volumes
        ]
        return {
            "cases": cases,
            "labelled_objects": sum(len(v.objects) for v in self.volumes),
            "source_weights": dict(zip(SOURCES, [float(p) for p in self.source_p], strict=True)),
            "draws": dict(self.draws),
            "pseudo_objects_created": self.pseudo.created if self.pseudo is not None else 0,
        }
