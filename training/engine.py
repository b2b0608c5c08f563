"""The data engine: draws training views of objects from the switchable sources.

Sources (``DataConfig.source_weights``; weight 0 switches one off):
    labelled   the train split's label maps, each label (or one of its connected components) an object;
    synthetic  a synthetic lesion pasted into a train volume (``training.synthetic``), or with probability
               ``compound_prob`` a compound lesion with nested sub-regions, one of them the object
               (``training.compound``);
    pseudo     a coherent-intensity region of a train volume (``training.pseudo``);
    synthseg   a labelled object in an image repainted from the label map around it (``training.synthseg``).

Labelled and synthseg draws may be a small object (``small_object_prob``: one small component of a label)
and/or a nested target (``nested_prob``: the box covers the object plus labels touching it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from training.compound import choose_object, make_compound_lesion, paste_compound
from training.config import DataConfig
from training.pseudo import PseudoObjectPool
from training.sampler import Frame, View, make_view
from training.sources import (
    TrainVolume,
    composite_mask,
    index_small_components,
    load_train_volume,
    sample_labelled,
    sample_small,
    train_cases,
)
from training.synthetic import log_uniform_size, make_lesion, paste_lesion, sample_lesion_centre
from training.synthseg import synthesize

# Appended, never reordered: a zero-weight source leaves older configs' random streams unchanged.
SOURCES = ("labelled", "synthetic", "pseudo", "synthseg")
# (image, object mask, box mask or None)
Drawn = tuple[np.ndarray, np.ndarray, np.ndarray | None]


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
        if cfg.small_object_prob > 0:
            for v in volumes:
                if not v.small:
                    v.small = index_small_components(v.label, cfg.min_object_voxels, cfg.small_object_max_voxels)
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
                image, mask, box_mask = drawn
                self.draws[source] += 1
                return make_view(image, mask, frame, self.cfg, rng, box_mask), source
        raise RuntimeError(f"data: source {source!r} produced no object in 20 tries")

    def _image(self, volume: TrainVolume, rng: np.random.Generator) -> np.ndarray:
        return volume.images["npz" if rng.random() < self.cfg.npz_image_prob else "nifti"]

    def _labelled_object(self, rng: np.random.Generator) -> tuple[TrainVolume, np.ndarray, np.ndarray | None]:
        """A labelled object (small with ``small_object_prob``) and its nested box region (``nested_prob``)."""
        cfg = self.cfg
        drawn = None
        # Each knob draws only when switched on, so configs without it keep their random stream.
        if cfg.small_object_prob > 0 and rng.random() < cfg.small_object_prob:
            drawn = sample_small(self.volumes, rng)
            if drawn is not None:
                self.draws["small"] += 1
        if drawn is None:
            drawn = sample_labelled(self.volumes, rng, cfg.component_prob, cfg.min_object_voxels)
        volume, mask = drawn
        box_mask = None
        if cfg.nested_prob > 0 and rng.random() < cfg.nested_prob:
            box_mask = composite_mask(volume, mask, rng)
            if box_mask is not None:
                self.draws["nested"] += 1
        return volume, mask, box_mask

    def _draw(self, source: str, rng: np.random.Generator) -> Drawn | None:
        cfg = self.cfg
        if source == "labelled":
            volume, mask, box_mask = self._labelled_object(rng)
            return self._image(volume, rng), mask, box_mask
        if source == "synthseg":
            return self._draw_synthseg(rng)
        if source == "pseudo":
            assert self.pseudo is not None
            volume, mask = self.pseudo.draw(rng)
            return self._image(volume, rng), mask, None
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
        return pasted.image, pasted.label, None

    def _draw_synthseg(self, rng: np.random.Generator) -> Drawn | None:
        """A labelled object in a SynthSeg image of the label map around it (its box grown, as the views need)."""
        volume, mask, box_mask = self._labelled_object(rng)
        coords = np.argwhere(mask if box_mask is None else box_mask)
        lo, hi = coords.min(0), coords.max(0) + 1
        # Room for the widest ROI margin and a zoom-in window around small objects.
        grow = np.maximum(np.ceil((hi - lo) * 0.6), 16).astype(int)
        a, b = np.maximum(lo - grow, 0), np.minimum(hi + grow, volume.shape)
        size = int(np.prod(b - a))
        stride = max(1, int(np.ceil((size / self.cfg.synthseg_max_voxels) ** (1 / 3))))
        sl = tuple(slice(int(x), int(y), stride) for x, y in zip(a, b, strict=True))
        crop_mask = mask[sl]
        if crop_mask.sum() < self.cfg.min_object_voxels:
            return None
        label = volume.label[sl]
        values = np.unique(label[crop_mask])
        image = synthesize(label, rng, target=int(values[0]) if values.size == 1 else None)
        return image, np.ascontiguousarray(crop_mask), None if box_mask is None else np.ascontiguousarray(box_mask[sl])

    def _draw_compound(self, volume: TrainVolume, rng: np.random.Generator) -> Drawn | None:
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
        return pasted.image, pasted.label, None

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
