"""The segmentation models: backbones, the click corrector, the predictor over a per-session state."""
