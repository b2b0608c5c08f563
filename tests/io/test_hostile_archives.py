"""Crafted headers and archives are refused from what they declare, before the loader does the work."""

from __future__ import annotations

import io
import zipfile

import pytest

from app.io.volumes import VolumeLimits, VolumeTooLargeError, load_volume

LIMITS = VolumeLimits(max_voxels=64**3, max_unzipped_bytes=64 << 20, max_zip_ratio=200)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _with_declared_size(data: bytes, unpacked: int) -> bytes:
    """The single-member zip ``data`` with its local and central headers declaring ``unpacked`` bytes."""
    out = bytearray(data)
    central = out.find(b"PK\x01\x02")
    out[22:26] = unpacked.to_bytes(4, "little")
    out[central + 24:central + 28] = unpacked.to_bytes(4, "little")
    return bytes(out)


@pytest.mark.parametrize("sizes", ["4294967296 4294967296 16", "16 4294967296 4294967296"])
def test_sizes_whose_int64_product_wraps_are_still_over_the_limit(sizes: str) -> None:
    header = (f"ObjectType = Image\nNDims = 3\nDimSize = {sizes}\nElementType = MET_FLOAT\n"
              "ElementDataFile = LOCAL\n").encode()
    with pytest.raises(VolumeTooLargeError, match="voxel limit"):
        load_volume(header + bytes(64), "v.mha", limits=LIMITS)


def test_a_zip_declaring_more_than_the_budget_is_refused_before_inflating() -> None:
    data = _with_declared_size(_zip({"a.dcm": bytes(1000)}), (64 << 20) + 1)
    with pytest.raises(VolumeTooLargeError, match=r"unpacks to more than 67108864 bytes \(its members declare"):
        load_volume(data, "v.zip", limits=LIMITS)


@pytest.mark.parametrize("members", [{"bomb.raw": bytes(16 << 20)},
                                     {f"s/{i}.dcm": bytes(200_000) for i in range(60)}],
                         ids=["one big member", "many small members"])
def test_a_zip_bomb_is_refused_by_its_compression_ratio(members: dict[str, bytes]) -> None:
    with pytest.raises(VolumeTooLargeError, match=r"times its stored size \(over 200:1\): refused as a zip bomb"):
        load_volume(_zip(members), "v.zip", limits=LIMITS)


def test_a_compressible_archive_under_the_ratio_floor_is_not_called_a_bomb() -> None:
    """4 MiB of zeros (1000:1) is cheap to inflate: it reaches the DICOM reader, which finds no series."""
    with pytest.raises(ValueError, match="no DICOM series") as info:
        load_volume(_zip({"a.dcm": bytes(4 << 20)}), "v.zip", limits=LIMITS)
    assert not isinstance(info.value, VolumeTooLargeError)


def test_a_member_inflating_past_its_declared_size_stops_there() -> None:
    data = _with_declared_size(_zip({"a.dcm": bytes(4 << 20)}), 100)
    with pytest.raises(ValueError, match="corrupt zip member 'a.dcm'"):
        load_volume(data, "v.zip", limits=LIMITS)
