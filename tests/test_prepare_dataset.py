"""Dataset preparation against a folder of hostile and awkward files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.prepare_dataset import (
    REPORT_NAME,
    ImageRejected,
    bucket_sizes,
    fit_image,
    load_image,
    main,
    prepare_dataset,
)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def split_image(size: tuple[int, int] = (120, 80)) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = (255, 0, 0)
    arr[:, size[0] // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A folder of good, bad and awkward inputs."""
    src = tmp_path / "raw"
    src.mkdir()
    good = split_image((96, 96))
    good.save(src / "a_good.png")
    (src / "a_good.txt").write_text("  a red and blue   sks card \n")
    good.save(src / "b_duplicate.bmp")
    (src / "c_text.png").write_text("this is not an image at all\n" * 20)
    buf = io.BytesIO()
    split_image((96, 96)).save(buf, "JPEG", quality=90)
    (src / "d_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    (src / "d_cut_late.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 3 // 4])
    Image.new("RGB", (1, 1), (0, 255, 0)).save(src / "e_tiny.png")
    (src / "f_huge.png").write_bytes(png_header_only(100_000, 100_000))
    (src / "f_big.png").write_bytes(png_header_only(9000, 9000))
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((0, 128, 0, 255), (0, 0, 32, 64))
    rgba.save(src / "g_rgba.png")
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(src / "h_cmyk.jpg", quality=95)
    gradient = (np.tile(np.linspace(0, 65535, 64), (64, 1))).astype(np.uint16)
    Image.fromarray(gradient).save(src / "i_16bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    split_image((120, 80)).save(src / "j_rotated.jpg", exif=exif, quality=95)
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 255, 0), (0, 255, 255))]
    frames[0].save(src / "k_anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (src / "l_empty.jpg").write_bytes(b"")
    (src / "subfolder").mkdir()
    (src / "orphan.txt").write_text("caption without an image")
    return src


def test_hostile_folder(raw: Path, tmp_path: Path) -> None:
    dst = tmp_path / "train"
    report = prepare_dataset(raw, dst, 64, min_size=32, trigger_word="zwx")
    reasons = {r.path.name: r.reason for r in report.rejected}
    assert reasons.keys() == {
        "b_duplicate.bmp",
        "c_text.png",
        "d_truncated.jpg",
        "d_cut_late.jpg",
        "e_tiny.png",
        "f_huge.png",
        "f_big.png",
        "l_empty.jpg",
    }
    assert reasons["b_duplicate.bmp"] == "duplicate of a_good.png"
    assert reasons["c_text.png"] == "not an image"
    assert reasons["l_empty.jpg"] == "not an image"
    assert reasons["d_truncated.jpg"].startswith("corrupt or truncated")
    assert reasons["d_cut_late.jpg"].startswith("corrupt or truncated")
    assert reasons["e_tiny.png"].startswith("too small")
    assert "decompression bomb" in reasons["f_huge.png"]
    assert "decompression bomb" in reasons["f_big.png"]
    assert any("k_anim.gif" in note and "first frame" in note for note in report.notes)

    names = sorted(p.name for p in dst.iterdir())
    assert names == sorted(
        [f"{i:04d}.{ext}" for i in range(6) for ext in ("png", "txt")] + [REPORT_NAME]
    )
    outputs = {}
    for png in sorted(dst.glob("*.png")):
        img = Image.open(png)
        assert img.mode == "RGB" and img.size == (64, 64)
        outputs[png.stem] = np.asarray(img).astype(int)
    # Accepted in name order: a_good, g_rgba, h_cmyk, i_16bit, j_rotated, k_anim.
    assert (dst / "0000.txt").read_text() == "a red and blue sks card\n"
    assert (dst / "0001.txt").read_text() == "a photo of zwx\n"
    rgba = outputs["0001"]
    assert (rgba[32, 60] == 255).all() and rgba[32, 4, 1] > 100 and rgba[32, 4, 0] < 30
    cmyk = outputs["0002"]
    assert cmyk[32, 32, 0] > 200 and cmyk[32, 32, 1] < 60 and cmyk[32, 32, 2] < 60
    gray16 = outputs["0003"][:, :, 0]
    assert gray16[32, 1] < 20 and gray16[32, 62] > 235 and len(np.unique(gray16)) > 30
    rotated = outputs["0004"]
    # Stored landscape, left red; displayed portrait with red on top after the EXIF rotation.
    assert rotated[5, 32, 0] > 200 and rotated[5, 32, 2] < 60
    assert rotated[58, 32, 2] > 200 and rotated[58, 32, 0] < 60
    anim = outputs["0005"]
    assert tuple(anim[32, 32]) == (255, 255, 0)


def test_default_min_size_and_rerun_replaces_outputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (200, 300), (10, 20, 30)).save(src / "small.png")
    Image.new("RGB", (300, 260), (200, 20, 30)).save(src / "ok.png")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "0007.png").write_bytes(b"stale")
    report = prepare_dataset(src, dst, 512)
    assert [r.path.name for r in report.rejected] == ["small.png"]
    assert "under 256" in report.rejected[0].reason
    assert sorted(p.name for p in dst.glob("0*")) == ["0000.png", "0000.txt"]


def test_min_size_follows_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (96, 96), (10, 20, 30)).save(src / "a_96.png")
    Image.new("RGB", (40, 120), (200, 20, 30)).save(src / "b_40.png")
    Image.new("RGB", (20, 64), (20, 200, 30)).save(src / "c_20.png")
    report = prepare_dataset(src, tmp_path / "dst", 64)
    assert len(report.written) == 2  # 96 px and 40 px (>= 64/2) are enough for a 64 px set
    assert [(r.path.name, r.reason) for r in report.rejected] == [
        ("c_20.png", "too small: 20x64, short side under 32")
    ]
    assert main(["--src", str(src), "--dst", str(tmp_path / "cli"), "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "rejected c_20.png: too small: 20x64, short side under 32" in out
    assert "wrote 2 images" in out
    # An explicit --min_size still wins.
    assert main(["--src", str(src), "--dst", str(tmp_path / "cli"), "--size", "64",
                 "--min_size", "100"]) == 2  # fmt: skip
    assert "wrote 0 images" in capsys.readouterr().out


def test_buckets_keep_aspect_ratio() -> None:
    for size in (128, 512):
        buckets = bucket_sizes(size)
        assert (size, size) in buckets
        assert all(w % 8 == 0 and h % 8 == 0 and w * h <= size * size for w, h in buckets)
        assert all((h, w) in buckets for w, h in buckets)
    wide = fit_image(split_image((400, 200)), 128, buckets=True)
    assert wide.width > 1.5 * wide.height
    assert fit_image(split_image((400, 200)), 128).size == (128, 128)


def test_load_image_is_safe_on_its_own(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20_000, 20_000))
    with pytest.raises(ImageRejected, match="decompression bomb"):
        load_image(path)


def test_cli(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "cli"
    assert main(["--src", str(raw), "--dst", str(dst), "--size", "64", "--min_size", "32"]) == 0
    out = capsys.readouterr().out
    assert "rejected c_text.png: not an image" in out and "wrote 6 images" in out
    assert main(["--src", str(tmp_path / "missing"), "--dst", str(dst)]) == 2
    assert capsys.readouterr().err.startswith("error: src")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--src", str(empty), "--dst", str(dst)]) == 2
