"""Reading radiographs: raster formats, DICOM (pydicom's bundled files and files made here)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from precise_baa.errors import ImageReadError
from precise_baa.imaging import (
    as_radiograph,
    declared_size,
    is_candidate,
    parse_dicom_age,
    parse_max_pixels,
    read_radiograph,
    save_png,
)


def gradient(h=96, w=128, dtype=np.uint8, hi=255):
    g = np.linspace(0, 1, w)[None, :] * np.linspace(0.2, 1, h)[:, None]
    return (g * hi).astype(dtype)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".bmp"])
def test_raster_8bit(tmp_path, suffix):
    arr = gradient()
    path = tmp_path / f"hand{suffix}"
    assert cv2.imwrite(str(path), arr)
    rad = read_radiograph(path)
    assert rad.pixels.dtype == np.float32 and rad.pixels.shape == (96, 128)
    assert 0.0 <= rad.pixels.min() and rad.pixels.max() <= 1.0
    tol = 0.05 if suffix == ".jpg" else 1e-6
    assert np.allclose(rad.pixels, arr / 255.0, atol=tol)
    assert rad.meta.bits == 8


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_raster_16bit_uses_its_own_range(tmp_path, suffix):
    arr = gradient(dtype=np.uint16, hi=4095)  # 12-bit data in a 16-bit file
    path = tmp_path / f"hand{suffix}"
    assert cv2.imwrite(str(path), arr)
    rad = read_radiograph(path)
    assert rad.meta.bits == 16
    assert rad.pixels.max() == pytest.approx(1.0) and rad.pixels.min() == pytest.approx(0.0)
    assert np.corrcoef(rad.pixels.ravel(), arr.ravel())[0, 1] > 0.999


def test_colour_png_becomes_grey(tmp_path):
    g = gradient()
    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), np.dstack([g, g, g]))
    assert np.allclose(read_radiograph(path).pixels, g / 255.0, atol=1 / 255)


def test_save_png_round_trip_16bit(tmp_path):
    img = np.linspace(0, 1, 96 * 80, dtype=np.float32).reshape(96, 80)
    save_png(tmp_path / "x.png", img, bits=16)
    back = read_radiograph(tmp_path / "x.png").pixels
    assert np.abs(back - img).max() < 1e-4


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("patient list\n"), "not an image"),
        (lambda p: cv2.imwrite(str(p), gradient(32, 200)), "too small"),
        (lambda p: cv2.imwrite(str(p), np.full((100, 100), 7, np.uint8)), "blank image"),
    ],
)
def test_bad_raster_files(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageReadError, match=reason) as e:
        read_radiograph(path)
    assert e.value.path == str(path) and "\n" not in e.value.reason


def test_text_file_with_odd_suffix(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ImageReadError, match="not a supported image"):
        read_radiograph(path)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_radiograph(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_radiograph(tmp_path)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG declaring ``width`` x ``height`` (IHDR) with a few bytes of a cut IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 999)[:12]))
    return path


def test_decompression_bomb_is_refused_from_its_header(tmp_path, capfd):
    bomb = png_header_only(tmp_path / "bomb.png", 60000, 60000)
    assert bomb.stat().st_size < 100 and declared_size(bomb) == (60000, 60000)
    with pytest.raises(ImageReadError) as e:
        read_radiograph(bomb)
    assert e.value.reason == ("image too large: 60000 x 60000 px declared (3600 MP) > limit 100 MP "
                              "(--max-pixels)")
    # the limit is configurable: per call, or by environment
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), gradient(100, 120))
    assert read_radiograph(small, max_pixels=12000).shape == (100, 120)
    with pytest.raises(ImageReadError, match=r"120 x 100 px declared \(0 MP\) > limit 0.01 MP"):
        read_radiograph(small, max_pixels=10000)
    for suffix in (".jpg", ".tif", ".bmp"):
        other = tmp_path / f"small{suffix}"
        cv2.imwrite(str(other), gradient(100, 120))
        assert declared_size(other) == (120, 100)
        with pytest.raises(ImageReadError, match="image too large"):
            read_radiograph(other, max_pixels=10000)
    assert parse_max_pixels("100M") == 100_000_000 and parse_max_pixels("2.5e6") == 2_500_000
    for bad in ("0", "-3", "lots", "nan"):
        with pytest.raises(ValueError):
            parse_max_pixels(bad)
    assert capfd.readouterr().err == ""


def test_max_pixels_from_environment(tmp_path, monkeypatch):
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), gradient(100, 120))
    monkeypatch.setenv("PRECISE_BAA_MAX_PIXELS", "0.01M")
    with pytest.raises(ImageReadError, match="limit 0.01 MP"):
        read_radiograph(small)
    assert read_radiograph(small, max_pixels=10**6).shape == (100, 120)  # the argument wins


def test_broken_files_are_read_quietly_with_the_decoders_reason(tmp_path, capfd):
    """libpng and OpenCV print on stderr by themselves; their words go into the reason."""
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), (np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    crc = bytearray(data)
    crc[100:110] = b"\xff" * 10
    (tmp_path / "crc.png").write_bytes(bytes(crc))
    reasons = {}
    for name in ("cut.png", "crc.png"):
        with pytest.raises(ImageReadError) as e:
            read_radiograph(tmp_path / name)
        reasons[name] = e.value.reason
        assert e.value.reason.startswith("not an image") and "\n" not in e.value.reason
    assert "CRC error" in reasons["crc.png"] and "incomplete" in reasons["cut.png"]
    assert capfd.readouterr().err == ""
    assert read_radiograph(good).shape == (200, 200)  # stderr is given back afterwards
    import sys

    print("still here", file=sys.stderr)
    assert capfd.readouterr().err == "still here\n"


def test_dicom_declared_size_is_checked_before_decoding(tmp_path):
    px = gradient(96, 96, np.uint16, 4000)
    path = make_dicom(tmp_path / "big.dcm", px)
    assert read_radiograph(path).shape == (96, 96)
    with pytest.raises(ImageReadError, match="image too large: 96 x 96 px declared"):
        read_radiograph(path, max_pixels=96 * 95)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000  # a header that lies: refused before pixel_array
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="60000 x 60000 px declared"):
        read_radiograph(path)


def test_pipes_and_broken_links_are_not_read(tmp_path):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_radiograph(fifo)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match="broken symbolic link"):
        read_radiograph(tmp_path / "dangling.png")


def test_multipage_tiff_is_a_volume(tmp_path):
    path = tmp_path / "stack.tif"
    assert cv2.imwritemulti(str(path), [gradient(), gradient()[::-1].copy()])
    with pytest.raises(ImageReadError, match="3-D volume"):
        read_radiograph(path)


# -------------------------------------------------------------------------- DICOM (bundled)
def test_pydicom_ct_small():
    rad = read_radiograph(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert rad.pixels.shape == (128, 128) and rad.meta.format == "dicom"
    assert rad.meta.bits == ds.BitsStored
    assert rad.meta.patient_name is None  # kept out unless asked
    assert read_radiograph(get_testdata_file("CT_small.dcm"), keep_patient_name=True).meta.patient_name


def test_pydicom_rtplan_has_no_pixels():
    with pytest.raises(ImageReadError, match="without pixel data"):
        read_radiograph(get_testdata_file("rtplan.dcm"))


def test_pydicom_multiframe_is_rejected():
    with pytest.raises(ImageReadError, match="multi-frame"):
        read_radiograph(get_testdata_file("rtdose.dcm"))


def test_pydicom_truncated_file():
    with pytest.raises(ImageReadError):
        read_radiograph(get_testdata_file("MR_truncated.dcm"))


def test_dicom_without_suffix_is_found(tmp_path):
    dst = tmp_path / "IM000001"
    dst.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    assert is_candidate(dst)
    assert read_radiograph(dst).meta.format == "dicom"
    other = tmp_path / "README"
    other.write_text("x" * 200)
    assert not is_candidate(other)


# --------------------------------------------------------------------- DICOM (made here)
def make_dicom(path: Path, pixels: np.ndarray, **tags) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    for t in ("WindowCenter", "WindowWidth"):
        if t in ds:
            delattr(ds, t)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)
    return path


def test_monochrome1_is_inverted(tmp_path):
    px = gradient(96, 96, np.uint16, 4000)
    m2 = read_radiograph(make_dicom(tmp_path / "m2.dcm", px, PhotometricInterpretation="MONOCHROME2"))
    m1 = read_radiograph(make_dicom(tmp_path / "m1.dcm", px, PhotometricInterpretation="MONOCHROME1"))
    assert np.allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-5)
    assert m1.meta.photometric == "MONOCHROME1"


def test_voi_window_is_applied(tmp_path):
    px = gradient(96, 96, np.uint16, 4000)
    rad = read_radiograph(make_dicom(tmp_path / "w.dcm", px, WindowCenter=2000, WindowWidth=1000))
    raw = px.astype(float)
    # everything above the window's top (2500) saturates to white, below 1500 to black
    assert np.all(rad.pixels[raw > 2600] == pytest.approx(1.0))
    assert np.all(rad.pixels[raw < 1400] == pytest.approx(0.0))


def test_patient_sex_and_age(tmp_path):
    px = gradient(96, 96, np.uint16, 4000)
    rad = read_radiograph(make_dicom(tmp_path / "a.dcm", px, PatientSex="F", PatientAge="010Y"))
    assert rad.meta.sex == "F" and rad.meta.chronological_age_years == 10.0
    birth, study = dt.date(2010, 3, 1), dt.date(2019, 9, 1)
    rad = read_radiograph(make_dicom(
        tmp_path / "b.dcm", px, PatientSex="M", PatientAge="",
        PatientBirthDate=birth.strftime("%Y%m%d"), StudyDate=study.strftime("%Y%m%d")))
    assert rad.meta.sex == "M"
    assert rad.meta.chronological_age_years == pytest.approx((study - birth).days / 365.25, abs=1e-3)


@pytest.mark.parametrize("text,years", [("012Y", 12.0), ("006M", 0.5), ("052W", 0.997), ("10Q", None), ("", None)])
def test_dicom_age_strings(text, years):
    got = parse_dicom_age(text)
    assert got == (pytest.approx(years, abs=1e-3) if years is not None else None)


def test_arrays_are_accepted():
    u16 = gradient(dtype=np.uint16, hi=1000)
    assert as_radiograph(u16).pixels.max() == pytest.approx(1.0)
    f = np.random.default_rng(0).random((80, 80)).astype(np.float32)
    assert np.array_equal(as_radiograph(f).pixels, f)
    with pytest.raises(ImageReadError, match="NaN"):
        as_radiograph(np.full((80, 80), np.nan, np.float32))
