"""Loading uploaded volumes (every format, axis order, geometry), the bad-file table, and writing masks."""

from __future__ import annotations

import gzip
import io
import stat
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from app.io.volumes import (
    LoadedVolume,
    VolumeLimits,
    VolumeMeta,
    VolumeTooLargeError,
    load_mask,
    load_volume,
    save_mask,
)

SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN = (10.0, -20.0, 30.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated, to check it survives


def asymmetric(shape: tuple[int, int, int] = (4, 5, 6), dtype: type = np.int16) -> np.ndarray:
    """A (D, H, W) array with a distinct value per voxel, so any axis mix-up shows."""
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def sitk_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def check_geometry(volume: LoadedVolume, array: np.ndarray) -> None:
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.spacing, SPACING_XYZ[::-1], rtol=1e-6)
    np.testing.assert_allclose(volume.origin, ORIGIN, rtol=1e-6)
    np.testing.assert_allclose(volume.direction, DIRECTION, atol=1e-6)


@pytest.mark.parametrize(("ext", "fmt"), [(".nii", "nifti"), (".nii.gz", "nifti"), (".nrrd", "nrrd"),
                                          (".mha", "metaimage")])
def test_sitk_written_files_load_from_path_and_bytes(tmp_path: Path, ext: str, fmt: str) -> None:
    array = asymmetric()
    path = tmp_path / f"volume{ext}"
    sitk.WriteImage(sitk_image(array), str(path))
    from_path = load_volume(path)
    check_geometry(from_path, array)
    assert from_path.source_format == fmt and from_path.modality is None
    from_bytes = load_volume(path.read_bytes(), f"upload{ext}")
    check_geometry(from_bytes, array)


def test_nifti_dims_xyz_give_array_kji(tmp_path: Path) -> None:
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)  # nibabel order (i, j, k) = (X, Y, Z)
    affine = np.diag([0.5, 0.6, 3.0, 1.0])
    path = tmp_path / "xyz.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    volume = load_volume(path)
    assert volume.shape == (7, 6, 5)
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0))
    assert volume.array[3, 2, 1] == data[1, 2, 3]
    np.testing.assert_allclose(volume.spacing, (3.0, 0.6, 0.5))


def test_float_nifti_keeps_values_and_trailing_singleton_4d_is_squeezed(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(5, 6, 7, 1)).astype(np.float32)
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, data[..., 0].transpose(2, 1, 0))


def test_mhd_with_raw_in_a_zip(tmp_path: Path) -> None:
    array = asymmetric()
    sitk.WriteImage(sitk_image(array), str(tmp_path / "vol.mhd"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(tmp_path / "vol.mhd", "case/vol.mhd")
        zf.write(tmp_path / "vol.raw", "case/vol.raw")
    volume = load_volume(buf.getvalue(), "case.zip")
    check_geometry(volume, array)
    assert volume.source_format == "metaimage"
    with pytest.raises(ValueError, match=r"^file: .*\.mhd.*zip"):
        load_volume((tmp_path / "vol.mhd").read_bytes(), "vol.mhd")


def write_dicom_series(folder: Path, array: np.ndarray, series_uid: str, modality: str = "CT") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk_image(array)
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0008|0060", modality)
        s.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.9")
        s.SetMetaData("0020|000e", series_uid)
        s.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0018|0050", str(SPACING_XYZ[2]))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def test_dicom_series_zip_roundtrip(tmp_path: Path) -> None:
    array = asymmetric((5, 6, 7)) * 7 - 100
    write_dicom_series(tmp_path / "study" / "series1", array, "1.2.826.0.1.3680043.2.1125.1")
    volume = load_volume(zip_folder(tmp_path / "study"), "study.zip")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.spacing, SPACING_XYZ[::-1], rtol=1e-5)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-4)
    assert volume.modality == "CT" and volume.source_format == "dicom"


def test_zip_with_two_dicom_series_is_refused(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "s" / "a", asymmetric(), "1.2.826.0.1.3680043.2.1125.1")
    write_dicom_series(tmp_path / "s" / "b", asymmetric(), "1.2.826.0.1.3680043.2.1125.2", "MR")
    with pytest.raises(ValueError, match="2 DICOM series"):
        load_volume(zip_folder(tmp_path / "s"), "two.zip")


def npz_bytes(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize(
    ("stored", "order", "expected"),
    [
        ((0.8, 0.8, 5.0), "auto", (5.0, 0.8, 0.8)),  # challenge example: (x, y, z)
        ((5.0, 0.8, 0.8), "auto", (5.0, 0.8, 0.8)),  # project case.npz: (z, y, x)
        ((1.0, 1.0, 1.0), "auto", (1.0, 1.0, 1.0)),
        ((3.0, 2.0, 1.0), "auto", (3.0, 2.0, 1.0)),  # ambiguous -> (z, y, x)
        ((0.8, 0.8, 5.0), "zyx", (0.8, 0.8, 5.0)),
        ((5.0, 0.8, 0.8), "xyz", (0.8, 0.8, 5.0)),
    ],
)
def test_challenge_npz_spacing_order(stored: tuple, order: str, expected: tuple) -> None:
    imgs = asymmetric(dtype=np.uint8)
    data = npz_bytes(imgs=imgs, spacing=np.array(stored), boxes=np.array([{"z_min": 0}], dtype=object))
    volume = load_volume(data, "CT_case_0001.npz", spacing_order=order)  # type: ignore[arg-type]
    np.testing.assert_array_equal(volume.array, imgs)
    np.testing.assert_allclose(volume.spacing, expected)
    assert volume.modality == "CT" and volume.source_format == "npz"


def test_npz_without_spacing_defaults_to_1mm() -> None:
    volume = load_volume(npz_bytes(imgs=asymmetric()), "plain.npz")
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.modality is None


# --- the bad-file table ------------------------------------------------------------------------------


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    return gzip.compress(image.to_bytes())


def zip_bytes(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name == symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, content)
    return buf.getvalue()


GOOD_NII = nifti_bytes(np.zeros((4, 5, 6), np.float32))
NAN = np.zeros((4, 5, 6), np.float32)
NAN[1, 2, 3] = np.nan
INF = np.zeros((4, 5, 6), np.float32)
INF[0, 0, 0] = np.inf
SMALL = VolumeLimits(max_bytes=50_000, max_voxels=1000, max_zip_members=10, max_unzipped_bytes=100_000)

BAD_FILES: list[tuple[str, bytes, str, str, type[Exception]]] = [
    ("truncated gzip", GOOD_NII[: len(GOOD_NII) // 2], "v.nii.gz", "'v.nii.gz' is truncated", ValueError),
    ("text file", b"hello, not an image\n" * 20, "v.nii.gz", "could not read 'v.nii.gz' as NIfTI", ValueError),
    ("text as nrrd", b"hello\n" * 20, "v.nrrd", "could not read 'v.nrrd' as NRRD", ValueError),
    ("empty", b"", "v.nii.gz", "is empty", ValueError),
    ("unknown extension", GOOD_NII, "v.png", "unsupported file type", ValueError),
    ("2D", nifti_bytes(np.zeros((4, 5), np.float32)), "v.nii.gz", "expected a 3D volume, got 2D", ValueError),
    ("4D", nifti_bytes(np.zeros((4, 5, 6, 3), np.float32)), "v.nii.gz", "expected a 3D volume, got 4D", ValueError),
    ("single slice", nifti_bytes(np.zeros((4, 5, 1), np.float32)), "v.nii.gz", "a single slice", ValueError),
    ("NaN", nifti_bytes(NAN), "v.nii.gz", "1 voxels are NaN or infinite", ValueError),
    ("inf", nifti_bytes(INF), "v.nii.gz", "NaN or infinite", ValueError),
    ("too many voxels", nifti_bytes(np.zeros((10, 10, 11), np.uint8)), "v.nii.gz", "voxel limit", VolumeTooLargeError),
    ("too many bytes", bytes(60_000), "v.nii.gz", "upload limit", VolumeTooLargeError),
    ("npz 2D imgs", npz_bytes(imgs=np.zeros((5, 6))), "v.npz", "expected a 3D volume, got 2D", ValueError),
    ("npz no imgs", npz_bytes(other=np.zeros((5, 6, 7))), "v.npz", "has no 'imgs'", ValueError),
    ("npz object imgs", npz_bytes(imgs=np.array([{"a": 1}], dtype=object)), "v.npz", "Python objects", ValueError),
    ("npz NaN", npz_bytes(imgs=NAN), "v.npz", "NaN", ValueError),
    ("npz bad spacing", npz_bytes(imgs=np.zeros((4, 5, 6)), spacing=np.array([1.0, 0.0, 1.0])), "v.npz",
     "spacing must be 3 positive", ValueError),
    ("npz garbage", b"PK\x03\x04garbage" * 10, "v.npz", "could not read 'v.npz' as npz", ValueError),
    ("npz too big", npz_bytes(imgs=np.zeros((10, 10, 20), np.uint8)), "v.npz", "voxel limit", VolumeTooLargeError),
    ("zip ../ member", zip_bytes({"../evil.dcm": b"x"}), "v.zip", "escapes the archive", ValueError),
    ("zip nested ../", zip_bytes({"a/../../evil": b"x"}), "v.zip", "escapes the archive", ValueError),
    ("zip absolute member", zip_bytes({"/etc/evil": b"x"}), "v.zip", "escapes the archive", ValueError),
    ("zip symlink", zip_bytes({"link": b"/etc/passwd"}, symlink="link"), "v.zip", "symbolic link", ValueError),
    ("zip bomb", zip_bytes({"bomb.raw": bytes(5_000_000)}), "v.zip", "unpacks to more than", VolumeTooLargeError),
    ("zip many members", zip_bytes({f"f{i}": b"x" for i in range(11)}), "v.zip", "11 members", ValueError),
    ("zip file/folder clash", zip_bytes({"a": b"x", "a/b": b"y"}), "v.zip", "cannot extract", ValueError),
    ("zip not a zip", b"not a zip at all" * 10, "v.zip", "could not read 'v.zip' as zip", ValueError),
    ("zip without images", zip_bytes({"notes.txt": b"hello"}), "v.zip", "no DICOM series", ValueError),
]


@pytest.mark.parametrize(("name", "data", "filename", "match", "error"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_with_a_message_naming_the_file(
    name: str, data: bytes, filename: str, match: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=match) as info:
        load_volume(data, filename, limits=SMALL)
    assert str(info.value).startswith("file: ")


# --- truncated files: ITK zero-fills a short NIfTI, so the loader measures every file against its header ---

TRUNCATION_VOLUME = asymmetric((6, 16, 16)) + 1  # no zero voxel: zero padding would be invisible otherwise


def sitk_file_bytes(tmp_path: Path, suffix: str, compress: bool, array: np.ndarray = TRUNCATION_VOLUME) -> bytes:
    path = tmp_path / f"whole{suffix}"
    sitk.WriteImage(sitk_image(array), str(path), useCompression=compress)
    return path.read_bytes()


# (format suffix, compressed, where to cut: a fraction of the file or a negative byte count)
TRUNCATIONS = [
    (".nii", False, 0.5),
    (".nii", False, -1),  # one byte short of the last voxel
    (".nii", False, 200),  # inside the 348-byte header
    (".nii.gz", True, 0.5),
    (".nii.gz", True, -4),  # every voxel is there, the gzip trailer (CRC, length) is cut
    (".nii.gz", True, 30),  # inside the compressed header
    (".mha", False, 0.5),
    (".mha", False, -1),
    (".mha", True, -1),
    (".mha", False, 60),  # inside the text header
    (".nrrd", False, 0.5),  # NRRD's own reader reports the short read
    (".nrrd", True, 0.7),
]


@pytest.mark.parametrize(("suffix", "compress", "cut"), TRUNCATIONS, ids=[f"{s}-{'gz' if c else 'raw'}-{k}"
                                                                          for s, c, k in TRUNCATIONS])
def test_truncated_files_are_refused_not_zero_filled(tmp_path: Path, suffix: str, compress: bool, cut: float
                                                     ) -> None:
    whole = sitk_file_bytes(tmp_path, suffix, compress)
    np.testing.assert_array_equal(load_volume(whole, f"v{suffix}").array, TRUNCATION_VOLUME)
    n = int(len(whole) * cut) if 0 < cut < 1 else (len(whole) + int(cut) if cut < 0 else int(cut))
    match = "could not read|truncated" if suffix == ".nrrd" else "truncated"
    with pytest.raises(ValueError, match=match) as info:
        load_volume(whole[:n], f"v{suffix}")
    assert str(info.value).startswith("file: ")
    assert tempfile.gettempdir() not in str(info.value)  # the server's upload folder is not reported


def test_truncated_file_loaded_from_a_path_is_refused(tmp_path: Path) -> None:
    whole = sitk_file_bytes(tmp_path, ".nii", False)
    path = tmp_path / "cut.nii"
    path.write_bytes(whole[:-10])
    with pytest.raises(ValueError, match=r"^file: 'cut.nii' is truncated: .* the header declares"):
        load_volume(path)


def test_complete_gzip_of_a_short_nifti_is_refused_by_the_declared_size(tmp_path: Path) -> None:
    raw = sitk_file_bytes(tmp_path, ".nii", False)
    declared = len(raw)  # sitk writes vox_offset 352 and nothing after the voxels
    short = gzip.compress(raw[: declared - 100])
    with pytest.raises(ValueError, match=rf"truncated: {declared - 100} bytes .* declares {declared}"):
        load_volume(short, "v.nii.gz")


def test_corrupt_gzip_stream_is_refused(tmp_path: Path) -> None:
    data = bytearray(sitk_file_bytes(tmp_path, ".nii.gz", True))
    data[len(data) // 2] ^= 0xFF  # flip a byte inside the deflate data
    with pytest.raises(ValueError, match="^file: ") as info:
        load_volume(bytes(data), "v.nii.gz")
    assert "truncated or corrupt" in str(info.value) or "could not read" in str(info.value)


def test_nifti_variants_that_are_complete_still_load(tmp_path: Path) -> None:
    data = TRUNCATION_VOLUME.transpose(2, 1, 0).astype(np.float32)  # nibabel order (X, Y, Z)
    with_extension = nib.Nifti1Image(data, np.eye(4))
    with_extension.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment pushing vox_offset"))
    big_endian = nib.Nifti1Image(data.astype(">f4"), np.eye(4))
    for name, image in (("ext.nii", with_extension), ("be.nii", big_endian)):
        nib.save(image, tmp_path / name)
        content = (tmp_path / name).read_bytes()
        np.testing.assert_array_equal(load_volume(content, name).array, TRUNCATION_VOLUME, err_msg=name)
        np.testing.assert_array_equal(load_volume(content + bytes(16), name).array, TRUNCATION_VOLUME,
                                      err_msg=f"{name} with trailing bytes")
        with pytest.raises(ValueError, match="truncated"):
            load_volume(content[:-3], name)


def test_mhd_with_a_short_raw_in_a_zip_is_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk_image(TRUNCATION_VOLUME), str(tmp_path / "vol.mhd"))
    raw = (tmp_path / "vol.raw").read_bytes()
    short = zip_bytes({"vol.mhd": (tmp_path / "vol.mhd").read_bytes(), "vol.raw": raw[:-2]})
    with pytest.raises(ValueError, match=rf"truncated: {len(raw) - 2} bytes of voxel data, .* declares {len(raw)}"):
        load_volume(short, "case.zip")


def test_vector_images_are_refused(tmp_path: Path) -> None:
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(ValueError, match="scalar volume"):
        load_volume(tmp_path / "rgb.nrrd")


def test_headers_pointing_outside_the_upload_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(120))
    nrrd = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 5 6\nencoding: raw\ndata file: {secret}\n\n").encode()
    with pytest.raises(ValueError, match="external data"):
        load_volume(nrrd, "v.nrrd")
    mha = (f"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_UCHAR\n"
           f"ElementDataFile = {secret}\n").encode()
    with pytest.raises(ValueError, match="external data"):
        load_volume(mha, "v.mha")
    mhd = b"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_UCHAR\nElementDataFile = ../x.raw\n"
    with pytest.raises(ValueError, match="external data"):
        load_volume(zip_bytes({"a/v.mhd": mhd, "x.raw": bytes(120)}), "v.zip")


# --- writing and reading masks -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd"])
def test_save_mask_keeps_the_source_geometry(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "vol.nrrd"
    sitk.WriteImage(sitk_image(asymmetric()), str(source))
    volume = load_volume(source)
    mask = (asymmetric() % 3 == 0).astype(np.uint8)
    data = save_mask(mask, volume, fmt)
    out = tmp_path / f"mask.{fmt}"
    out.write_bytes(data)
    image = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), mask)
    np.testing.assert_allclose(image.GetSpacing(), SPACING_XYZ, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, rtol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-6)
    np.testing.assert_array_equal(load_mask(data, f"m.{fmt}", volume.meta), mask)


def test_save_mask_npz_and_label_maps() -> None:
    meta = VolumeMeta(shape=(4, 5, 6), spacing=(2.5, 0.8, 0.7))
    mask = (asymmetric() % 2).astype(np.uint8)
    with np.load(io.BytesIO(save_mask(mask, meta, "npz"))) as npz:
        assert npz["mask"].dtype == np.uint8
        np.testing.assert_array_equal(npz["mask"], mask)
    labels = asymmetric().astype(np.int64)
    labels[0, 0, 0] = 300
    with np.load(io.BytesIO(save_mask(labels, meta, "npz", npz_key="segs"))) as npz:
        assert npz["segs"].dtype == np.uint16
        np.testing.assert_array_equal(npz["segs"], labels)
    with pytest.raises(ValueError, match="mask: shape"):
        save_mask(np.zeros((4, 5, 7)), meta, "npz")
    with pytest.raises(ValueError, match="mask: values must be in 0..65535"):
        save_mask(-labels, meta, "npz")
    with pytest.raises(ValueError, match="format: "):
        save_mask(mask, meta, "png")


def test_load_mask_validates_shape_and_values() -> None:
    meta = VolumeMeta(shape=(4, 5, 6), spacing=(1.0, 1.0, 1.0))
    good = np.zeros((4, 5, 6), np.uint8)
    good[1:3, 2:4, 3:5] = 1
    np.testing.assert_array_equal(load_mask(npz_bytes(mask=good), "m.npz", meta), good)
    np.testing.assert_array_equal(load_mask(npz_bytes(anything=good.astype(bool)), "m.npz", meta), good)
    with pytest.raises(ValueError, match=r"mask: shape \(4, 5, 7\)"):
        load_mask(npz_bytes(mask=np.zeros((4, 5, 7))), "m.npz", meta)
    with pytest.raises(ValueError, match="mask: values must be 0 or 1"):
        load_mask(npz_bytes(mask=good * 2), "m.npz", meta)
    with pytest.raises(ValueError, match="mask: could not read"):
        load_mask(b"junk" * 10, "m.nii.gz", meta)
