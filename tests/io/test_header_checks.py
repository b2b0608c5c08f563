"""Header geometry and compressed voxel data (``app.io.header_geometry``, ``app.io.inflate``).

The hostile cases run against a real server in ``tests/e2e/test_hostile_inputs.py``; these pin down what
must still load (rotations, reflections, compressed files ITK writes itself) and the edges of each check.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.io.header_geometry import check_direction, check_spacing
from app.io.inflate import TooLarge, check_declared, inflate_zlib
from app.io.volumes import VolumeLimits, VolumeMeta, load_mask, load_volume


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    c, s = math.cos(0.3), math.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))  # a rotation with a reflection
    return image


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nrrd"])
def test_compressed_files_itk_writes_load_with_the_same_voxels_and_geometry(tmp_path: Path, suffix: str) -> None:
    array = np.random.default_rng(0).normal(size=(6, 20, 24)).astype(np.float32)
    path = tmp_path / f"v{suffix}"
    sitk.WriteImage(_image(array), str(path), useCompression=True)
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert volume.direction == pytest.approx(_image(array).GetDirection(), abs=1e-6)


def test_a_compressed_mhd_with_its_zraw_in_a_zip_loads(tmp_path: Path) -> None:
    array = np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)
    sitk.WriteImage(_image(array), str(tmp_path / "v.mhd"), useCompression=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for part in tmp_path.iterdir():
            zf.write(part, part.name)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".mhd", ".zraw"]
    np.testing.assert_array_equal(load_volume(buf.getvalue(), "v.zip").array, array)


def test_a_mask_of_another_shape_is_refused_from_its_header_before_its_voxels(tmp_path: Path) -> None:
    path = tmp_path / "m.nii.gz"
    mask = (np.random.default_rng(0).random((5, 64, 64)) > 0.5).astype(np.uint8)  # incompressible: a long stream
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(path), useCompression=True)
    data = path.read_bytes()
    cut = data[: len(data) // 2]  # the voxels are not even all there: only the header is read
    with pytest.raises(ValueError, match=r"mask: shape \(5, 64, 64\) does not match the volume's \(4, 64, 64\)"):
        load_mask(cut, "m.nii.gz", VolumeMeta((4, 64, 64), (1.0, 1.0, 1.0)))


def test_byte_limit_counts_declared_bytes_not_voxels(tmp_path: Path) -> None:
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 16, 16), np.float64)), str(path))
    limits = VolumeLimits(max_volume_bytes=4 * 16 * 16 * 8 - 1)
    with pytest.raises(ValueError, match="8191-byte volume limit"):
        load_volume(path, limits=limits)
    assert load_volume(path, limits=VolumeLimits(max_volume_bytes=4 * 16 * 16 * 8)).shape == (4, 16, 16)


def test_ratio_limit_applies_past_the_floor_only() -> None:
    check_declared("v", 8 << 20, 1, max_bytes=1 << 30, max_ratio=200)  # small: cheap whatever the ratio
    check_declared("v", 100 << 20, 1 << 20, max_bytes=1 << 30, max_ratio=200)  # 100:1
    with pytest.raises(TooLarge, match="decompression bomb"):
        check_declared("v", 300 << 20, 1 << 20, max_bytes=1 << 30, max_ratio=200)
    check_declared("v", 300 << 20, 1 << 20, max_bytes=1 << 30, max_ratio=None)  # masks: bounded by shape


@pytest.mark.parametrize(("stream", "says"), [
    (zlib.compress(bytes(101)), "inflates past the 100 bytes"),
    (zlib.compress(bytes(99)), "inflates to 99 bytes"),
    (zlib.compress(bytes(100))[:-6], "truncated"),
    (b"\x78\x9c" + bytes(20), "corrupt"),
])
def test_inflate_zlib_gives_exactly_the_declared_bytes_or_refuses(stream: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        inflate_zlib(io.BytesIO(stream), len(stream), io.BytesIO(), "v.mha", expected=100)
    out = io.BytesIO()
    good = zlib.compress(bytes(100))
    inflate_zlib(io.BytesIO(good), len(good), out, "v.mha", expected=100)
    assert out.getvalue() == bytes(100)


def test_direction_checks_accept_rotations_and_reflections_only() -> None:
    c, s = math.cos(1.0), math.sin(1.0)
    check_direction("v", (c, -s, 0, s, c, 0, 0, 0, 1), "here")
    check_direction("v", (-1, 0, 0, 0, 1, 0, 0, 0, 1), "here")
    check_direction("v", np.float32([c, -s, 0, s, c, 0, 0, 0, 1]).tolist(), "here")  # float32 rounding
    with pytest.raises(ValueError, match=r"direction matrix \(here in 'v'\) is not orthonormal"):
        check_direction("v", (1, 0, 0, 0, 1.01, 0, 0, 0, 1), "here")
    with pytest.raises(ValueError, match="is singular"):
        check_direction("v", (1, 0, 0, 0, 0, 0, 0, 0, 1), "here")
    with pytest.raises(ValueError, match="9 finite values"):
        check_direction("v", (1, 0, 0, 0, math.nan, 0, 0, 0, 1), "here")


@pytest.mark.parametrize("bad", [0.0, -0.5, math.nan, math.inf])
def test_spacing_must_be_positive_and_finite(bad: float) -> None:
    check_spacing("v", (0.5, 0.5, 3.0), "pixdim")
    with pytest.raises(ValueError, match=r"file: spacing \(pixdim in 'v'\) must be 3 positive finite values"):
        check_spacing("v", (bad, 1.0, 1.0), "pixdim")


def test_itk_reasons_keep_the_meaningful_line_without_paths_or_errno_noise() -> None:
    from app.io.volume_checks import itk_reason

    exc = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute: /src/itk/Meta.cxx:123:\n"
                       "ITK ERROR: MetaImageIO(0x55d0): File cannot be read: /tmp/upload-x/v.mha for reading.\n"
                       "Reason: Success")
    assert itk_reason(exc) == "File cannot be read: the file for reading"
    assert itk_reason(RuntimeError("ITK ERROR: NrrdImageIO(0x1): Could not open file (Reason: Success)")) == \
        "Could not open file"
