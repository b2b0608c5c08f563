"""The predictor's run-time settings (``PredictorConfig``); the model's hyper-parameters live in ``app.models.configs``."""

from __future__ import annotations

from dataclasses import dataclass

from app.models.click_regions import RegionConfig
from app.models.propagation import PropagationConfig
from app.models.sampling import SamplingConfig

ZOOM_IN_MODES = ("auto", "segvol", "windows", "resample")


@dataclass(frozen=True)
class PredictorConfig:
    """Run-time settings of the predictor (the model's hyper-parameters live in ``app.models.configs``).

    Attributes:
        tau: uncertainty band |p - 0.5| < tau (paper: 0.1; the authors' code effectively used 0.4).
        k: points per set (uncertain, error) fed to the corrector.
        radius: error-sampling radius around each click, in voxels of the volume grid.
        overlap: zoom-in sliding-window overlap.
        undo_depth: undo levels kept per object.
        use_offsets: apply the corrector's coordinate-offset head.
        background_logit: logit given to voxels newly added to an object's ROI (p ~ 4.5e-5).
        mask_logit: |logit| used when an object starts from a given mask.
        roi_box_margin: ``zoom_in="windows"`` only: when a box is given, the zoom-out prediction only widens the
            zoom-in ROI up to this fraction of the box extent on each side (None: the whole zoom-out prediction
            united with the box); an unbounded union lets one stray zoom-out blob turn a small box into dozens of
            zoom-in windows, which costs seconds per prompt on a CPU, while the user's box already bounds the
            object. (SegVol's own region, ``zoom_in="segvol"``, is the zoom-out foreground's box alone.)
        zoom_in: "segvol" (SegVol's own inference, ``app.models.segvol_inference``: what the published
            weights were trained and evaluated with), "windows" (the project's variant: a ROI bounded by the
            box and clicks, windows widened with real voxels, windows without a prompt skipped), "resample"
            (the boxed ROI resampled to ``roi_frame``; for weights trained on ROI views) or "auto" (what the
            weights' metadata says they were trained for, else the configuration's default; resolved by
            ``build_predictor``).
        roi_frame: the frame the ROI is resampled to (None = the weights' metadata, else the backbone frame).
        roi_margin: the resampled ROI is the box grown by this fraction of its extent on each side.
        propagation_reach, propagation_tolerance, propagation_gain: geodesic click propagation on the
            resampled ROI path (``app.models.propagation``); reach 0 turns it off.
        click_region_reach, click_region_foreground_reach, click_region_tolerance, click_region_gain,
        click_region_confident: click regions on the resampled ROI path (a click flips the coherent error
            region it points at, ``app.models.click_regions``; not the region prompts of ``add_region``): the
            reach of background and of foreground clicks' regions (0 turns them off), the intensity tolerance,
            the logit written and the logit magnitude of the other label a region leaves alone.
        text_tokenizer: CLIP tokenizer files for text prompts (a ``tokenizer.json`` or a folder holding one);
            None = CLIP's vocabulary from the ``open-clip-torch`` package (``app.models.clip_tokenizer``).
    """

    tau: float = 0.1
    k: int = 200
    radius: float = 4.0
    overlap: float = 0.5
    undo_depth: int = 16
    use_offsets: bool = True
    background_logit: float = -10.0
    mask_logit: float = 10.0
    roi_box_margin: float | None = 0.5
    zoom_in: str = "auto"
    roi_frame: tuple[int, int, int] | None = None
    roi_margin: float = 0.3
    propagation_reach: float = PropagationConfig.reach
    propagation_tolerance: float = PropagationConfig.tolerance
    propagation_gain: float = PropagationConfig.gain
    click_region_reach: float = RegionConfig.reach
    click_region_foreground_reach: float = RegionConfig.foreground_reach
    click_region_tolerance: float = RegionConfig.tolerance
    click_region_gain: float = RegionConfig.gain
    click_region_confident: float = RegionConfig.confident
    text_tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.zoom_in not in ZOOM_IN_MODES:
            raise ValueError(f"zoom_in: expected one of {list(ZOOM_IN_MODES)}, got {self.zoom_in!r}")
        if self.roi_frame is not None and (len(self.roi_frame) != 3 or min(self.roi_frame) < 1):
            raise ValueError(f"roi_frame: expected three positive sizes, got {self.roi_frame!r}")
        if self.roi_margin < 0:
            raise ValueError(f"roi_margin: must be >= 0, got {self.roi_margin}")
        if self.roi_box_margin is not None and self.roi_box_margin < 0:
            raise ValueError(f"roi_box_margin: must be >= 0 or None, got {self.roi_box_margin}")
        SamplingConfig(tau=self.tau, k=self.k, radius=self.radius)  # validates tau, k, radius
        try:
            self.propagation  # noqa: B018  (validates the propagation fields)
        except ValueError as exc:
            raise ValueError(f"propagation_{exc}") from None
        try:
            self.click_regions  # noqa: B018  (validates the click region fields)
        except ValueError as exc:
            raise ValueError(f"click_region_{exc}") from None
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap: must be in [0, 1), got {self.overlap}")
        if self.undo_depth < 1:
            raise ValueError(f"undo_depth: must be >= 1, got {self.undo_depth}")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(tau=self.tau, k=self.k, radius=self.radius)

    @property
    def propagation(self) -> PropagationConfig:
        return PropagationConfig(reach=self.propagation_reach, tolerance=self.propagation_tolerance,
                                 gain=self.propagation_gain)

    @property
    def click_regions(self) -> RegionConfig:
        return RegionConfig(reach=self.click_region_reach, foreground_reach=self.click_region_foreground_reach,
                            tolerance=self.click_region_tolerance, gain=self.click_region_gain,
                            confident=self.click_region_confident)
