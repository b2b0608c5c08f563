"""segvol-base on SegVol's own inference (``zoom_in="segvol"``): first box, decoder click, text prompt.

Runs the published architecture with the parity checkpoint (``tests/fixtures/segvol_parity/make_parity_ckpt.py``:
random, realistic scale; regenerated into a temporary file unless ``--weights`` names a checkpoint) on the real
CT of the parity fixtures (112 x 101 x 122). Random weights predict scattered voxels, so the region is the whole
crop: 1 zoom-out + 6 windows for the first box (each window encoded once, then cached), the worst case for a
volume this size; the published weights give a region around the object (fewer windows on small objects).

    python -m benchmarks.bench_segvol_base --threads 2 --out benchmarks/results/segvol_base.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

from app.models import Predictor, build_predictor

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "segvol_parity"
BOX = [66, 29, 70, 101, 54, 93]  # the fixtures' kidney box (z, y, x), inclusive
CLICK = [83, 40, 83]


def _parity_checkpoint(path: Path, with_text: bool) -> None:
    spec = importlib.util.spec_from_file_location("make_parity_ckpt", FIXTURES / "make_parity_ckpt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.build(20240601, with_text=with_text, tsv=str(FIXTURES.parent / "segvol_state_dict.tsv")), path)


def _ms(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def run(predictor: Predictor, text: bool) -> dict[str, float]:
    image = sitk.ReadImage(str(FIXTURES / "image_ras.nii.gz"))
    volume, spacing = sitk.GetArrayFromImage(image), image.GetSpacing()[::-1]
    out: dict[str, float] = {}
    state = None

    def init() -> None:
        nonlocal state
        state = predictor.init_state(volume, spacing)

    out["init_state"] = _ms(init)
    out["first_box"] = _ms(lambda: predictor.add_box(state, 1, BOX))
    out["decoder_click"] = _ms(lambda: predictor.add_clicks(state, 1, [CLICK], [1], mode="decoder"))
    out["gru_click"] = _ms(lambda: predictor.add_clicks(state, 1, [CLICK], [1], mode="gru"))
    if text:
        out["text_prompt_cached_windows"] = _ms(lambda: predictor.add_text(state, 2, "kidney", box=BOX))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=None, help="a segvol-base checkpoint (default: the parity checkpoint)")
    ap.add_argument("--text", action="store_true", help="also time a text prompt (needs the 'text' extra)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/segvol_base.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = str(Path(tmp) / "parity.pth")
            _parity_checkpoint(Path(weights), args.text)
        predictor = build_predictor("segvol-base", weights=weights, with_text=args.text)
    stats = run(predictor, args.text)
    results = {
        "command": "python -m benchmarks.bench_segvol_base " + " ".join(argv if argv is not None else sys.argv[1:]),
        "zoom_in": predictor.config.zoom_in,
        "volume_shape": [112, 101, 122],
        "box": BOX,
        "threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "load_average": os.getloadavg()},
        "weights": args.weights or "parity checkpoint (random, realistic scale)",
        "ms": stats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["ms"], indent=2))
    return results


if __name__ == "__main__":
    main()
