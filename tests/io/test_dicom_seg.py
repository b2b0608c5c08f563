"""DICOM SEG export: a series read from a zip keeps its headers; the SEG read back finds the same voxels."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from app.io.dicom_seg import build_seg
from app.io.volumes import load_volume

STUDY_UID = "1.2.826.0.1.3680043.2.1125.9"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.1"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.2.1125.7"
SPACING_XYZ = (0.8, 0.7, 2.5)
ORIGIN = (10.0, -20.0, 30.0)


def dicom_series_zip(array: np.ndarray, folder: Path, *, frame_of_reference: bool = True) -> bytes:
    """A zipped CT series of ``array`` (D, H, W) int16; file names run against the slice order, so only
    positions tell the reader how to stack the slices."""
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    depth = image.GetDepth()
    for k in range(depth):
        s = image[:, :, k]
        s.SetMetaData("0008|0060", "CT")
        s.SetMetaData("0020|000d", STUDY_UID)
        s.SetMetaData("0020|000e", SERIES_UID)
        s.SetMetaData("0008|0018", f"{SERIES_UID}.{k + 1}")
        if frame_of_reference:
            s.SetMetaData("0020|0052", FRAME_OF_REFERENCE_UID)
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0018|0050", str(SPACING_XYZ[2]))
        writer.SetFileName(str(folder / f"img{depth - k:03d}.dcm"))
        writer.Execute(s)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*.dcm")):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def ct_array(shape: tuple[int, int, int] = (6, 8, 10)) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) % 97 - 40).astype(np.int16)


def seg_voxels(seg: hd.seg.Segmentation, sop_uids: list[str], segment_number: int) -> np.ndarray:
    """Segment ``segment_number`` as a (D, H, W) bool array, slice k being the frame of ``sop_uids[k]``."""
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, segment_numbers=[segment_number])
    return pixels[..., 0] != 0


def read_seg(data: bytes) -> hd.seg.Segmentation:
    return hd.seg.segread(io.BytesIO(data))


@pytest.fixture
def series(tmp_path: Path):  # noqa: ANN201
    return load_volume(dicom_series_zip(ct_array(), tmp_path / "series"), "series.zip")


def test_dicom_zip_keeps_headers_in_slice_order(series) -> None:  # noqa: ANN001
    np.testing.assert_array_equal(series.array, ct_array())
    assert series.dicom_headers is not None and len(series.dicom_headers) == series.shape[0]
    z = [float(h.ImagePositionPatient[2]) for h in series.dicom_headers]
    np.testing.assert_allclose(z, ORIGIN[2] + SPACING_XYZ[2] * np.arange(series.shape[0]), atol=1e-4)
    assert [h.SOPInstanceUID for h in series.dicom_headers] == [f"{SERIES_UID}.{k + 1}" for k in range(6)]
    assert all("PixelData" not in h for h in series.dicom_headers)


def test_other_formats_have_no_dicom_headers() -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, imgs=ct_array().astype(np.float32), spacing=np.array([2.5, 0.7, 0.8]))
    assert load_volume(buf.getvalue(), "case.npz").dicom_headers is None


def test_label_map_round_trip_per_segment(series) -> None:  # noqa: ANN001
    labels = np.zeros(series.shape, dtype=np.uint8)
    labels[1:4, 2:5, 3:8] = 2
    labels[3:6, 5:8, 0:3] = 7  # ids with a gap: segment numbers stay 1, 2
    labels[5, 0, 9] = 2  # a lone voxel on the last slice
    data = build_seg(labels, series.dicom_headers, {2: "liver", 7: "lesion"})
    seg = read_seg(data)
    sop_uids = [h.SOPInstanceUID for h in series.dicom_headers]

    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sop_uids)
    assert seg.SeriesInstanceUID != SERIES_UID and seg.Modality == "SEG"
    assert seg.SoftwareVersions and seg.Manufacturer == "segvol-interactive"
    assert seg.get_segment_numbers() == [1, 2]
    for number, oid, name in ((1, 2, "liver"), (2, 7, "lesion")):
        description = seg.get_segment_description(number)
        assert description.segment_label == name
        assert description.tracking_id == f"object {oid}"
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
        np.testing.assert_array_equal(seg_voxels(seg, sop_uids, number), labels == oid)


def test_binary_mask_gives_one_default_labelled_segment(series) -> None:  # noqa: ANN001
    mask = np.zeros(series.shape, dtype=bool)
    mask[2, 3:6, 4:9] = True
    seg = read_seg(build_seg(mask, series.dicom_headers, None))
    assert seg.get_segment_numbers() == [1]
    assert seg.get_segment_description(1).segment_label == "object 1"
    sop_uids = [h.SOPInstanceUID for h in series.dicom_headers]
    np.testing.assert_array_equal(seg_voxels(seg, sop_uids, 1), mask)


def test_an_object_without_voxels_is_left_out_and_nothing_at_all_is_refused(series) -> None:  # noqa: ANN001
    labels = np.zeros(series.shape, np.uint8)
    labels[1, 2:4, 2:4] = 2
    seg = read_seg(build_seg(labels, series.dicom_headers, {2: "liver", 3: "nothing yet"}))
    assert seg.get_segment_numbers() == [1]  # a segment without a frame is not valid DICOM
    assert seg.get_segment_description(1).segment_label == "liver"
    with pytest.raises(ValueError, match=r"^mask: nothing to export"):
        build_seg(np.zeros(series.shape, np.uint8), series.dicom_headers, {3: "nothing yet"})


def test_the_seg_series_has_a_description(series) -> None:  # noqa: ANN001
    labels = np.zeros(series.shape, np.uint8)
    labels[1, 2:4, 2:4] = 1
    assert read_seg(build_seg(labels, series.dicom_headers)).SeriesDescription == "Segmentation (segvol-interactive)"
    seg = read_seg(build_seg(labels, series.dicom_headers, series_description="Liver, reader 2"))
    assert seg.SeriesDescription == "Liver, reader 2"


def test_bad_inputs_are_refused(series, tmp_path: Path) -> None:  # noqa: ANN001
    labels = np.zeros(series.shape, dtype=np.uint8)
    labels[0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"^source_headers: 5 headers for 6 slices"):
        build_seg(labels, series.dicom_headers[:5], None)
    with pytest.raises(ValueError, match=r"^mask: nothing to export"):
        build_seg(np.zeros(series.shape, np.uint8), series.dicom_headers, None)
    with pytest.raises(ValueError, match=r"^mask: expected integer"):
        build_seg(labels.astype(np.float32), series.dicom_headers, None)
    with pytest.raises(ValueError, match=r"^mask: expected a \(D, H, W\)"):
        build_seg(labels[0], series.dicom_headers, None)
    no_frame = load_volume(dicom_series_zip(ct_array(), tmp_path / "nofor", frame_of_reference=False), "s.zip")
    with pytest.raises(ValueError, match=r"^source_headers: slice 0 lacks FrameOfReferenceUID"):
        build_seg(labels, no_frame.dicom_headers, None)


def test_object_ids_past_255_keep_their_id_as_tracking_id(series) -> None:  # noqa: ANN001
    labels = np.zeros(series.shape, dtype=np.uint16)
    labels[4, 1:3, 1:3] = 300
    seg = read_seg(build_seg(labels, series.dicom_headers, None))
    assert seg.get_segment_numbers() == [1]
    assert seg.get_segment_description(1).tracking_id == "object 300"
    sop_uids = [h.SOPInstanceUID for h in series.dicom_headers]
    np.testing.assert_array_equal(seg_voxels(seg, sop_uids, 1), labels == 300)
