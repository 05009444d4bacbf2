"""Safe names and paths, atomic file/folder writes, file roots and storage settings."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from storage import StorageSettings, UnsafePathError, atomic_dir, atomic_write_bytes, safe_join
from storage import safe_name as clean
from storage.files import FileRoots, remove_partials


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my-style_2", "my-style_2"),
        ("v1.5", "v1.5"),
        (".hidden", "hidden"),
        ("...dots", "dots"),
        ("trailing.", "trailing"),
        ("a/b", "a_b"),
        ("a b\tc", "a_b_c"),
        ("café crème", "cafe_creme"),
        ("日本style", "__style"),
        ("COM10", "COM10"),
        ("console", "console"),
    ],
)
def test_safe_name_cleans(name: str, expected: str) -> None:
    assert clean(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../etc/passwd", "'..'"),
        ("..", "'..'"),
        ("a\\..\\b", "'..'"),
        ("/abs", "absolute"),
        ("\\\\server\\share", "absolute"),
        ("C:\\Windows", "absolute"),
        ("a\x00b", "NUL"),
        ("", "no letters or digits"),
        ("....", "no letters or digits"),
        ("日本", "no letters or digits"),
        ("CON", "reserved"),
        ("con.txt", "reserved"),
        ("Lpt9", "reserved"),
        ("nul.tar.gz", "reserved"),
        ("ＣＯＮ", "reserved"),  # fullwidth letters fold to CON
        ("COM¹", "reserved"),  # superscript one folds to COM1
    ],
)
def test_safe_name_rejects(name: str, reason: str) -> None:
    with pytest.raises(UnsafePathError, match=reason):
        clean(name)


def test_safe_name_limits_length_and_type() -> None:
    long = clean("x" * 1000)
    assert long == "x" * 64
    assert clean("a" * 63 + "." + "b" * 10) == "a" * 63, "no trailing dot after cutting"
    assert len(clean("y" * 100, max_length=10)) == 10
    with pytest.raises(TypeError):
        clean(b"bytes")  # type: ignore[arg-type]
    assert issubclass(UnsafePathError, ValueError)


def test_safe_join_stays_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    root.mkdir()
    assert safe_join(root, "2024-01-01", "job1-0.png") == root.resolve() / "2024-01-01/job1-0.png"
    assert safe_join(root, "a/../b") == root.resolve() / "b"
    assert safe_join(root) == root.resolve()
    for hostile in ("../escape", "a/../../escape", "..\\..\\escape", "/etc/passwd", "C:\\x"):
        with pytest.raises(UnsafePathError):
            safe_join(root, hostile)
    with pytest.raises(UnsafePathError, match="NUL"):
        safe_join(root, "a\x00b")
    with pytest.raises(UnsafePathError, match="reserved"):
        safe_join(root, "sub", "aux.png")
    with pytest.raises(UnsafePathError, match="empty"):
        safe_join(root, "")


def test_safe_join_catches_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePathError, match="escapes"):
        safe_join(root, "link", "file.txt")


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "new" / "image.png"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["image.png"]


def test_atomic_write_bytes_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "image.png"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_atomic_dir_success(tmp_path: Path) -> None:
    final = tmp_path / "lora" / "ink"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        (tmp / "adapter.safetensors").write_bytes(b"weights")
        assert not final.exists(), "the destination appears only on success"
    assert (final / "adapter.safetensors").read_bytes() == b"weights"
    assert [p.name for p in final.parent.iterdir()] == ["ink"]
    with pytest.raises(FileExistsError), atomic_dir(final):
        pass


def test_atomic_dir_failure_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "lora" / "ink"
    with pytest.raises(RuntimeError, match="training crashed"), atomic_dir(final) as tmp:
        (tmp / "half.safetensors").write_bytes(b"partial")
        raise RuntimeError("training crashed")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_dir_overwrite_replaces_old_folder(tmp_path: Path) -> None:
    final = tmp_path / "ink"
    with atomic_dir(final) as tmp:
        (tmp / "v1").write_text("1")
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert [p.name for p in final.iterdir()] == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["ink"]


def test_remove_partials_cleans_interrupted_writes(tmp_path: Path) -> None:
    (tmp_path / ".ink.abc.partial").mkdir()
    (tmp_path / ".img.png.x1.partial").write_bytes(b"")
    (tmp_path / "keep.png").write_bytes(b"")
    assert remove_partials(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
    assert remove_partials(tmp_path / "missing") == 0


def test_file_roots_build_paths_inside_roots(tmp_path: Path) -> None:
    roots = FileRoots(tmp_path / "outputs", tmp_path / "lora")
    when = datetime(2024, 5, 6, tzinfo=timezone.utc)
    image = roots.image_path(12, 3, when=when)
    assert image == (tmp_path / "outputs").resolve() / "2024-05-06" / "job12-3.png"
    assert roots.lora_path("My Style") == (tmp_path / "lora").resolve() / "My_Style"
    with pytest.raises(UnsafePathError):
        roots.lora_path("../../etc")
    with pytest.raises(ValueError):
        roots.image_path(-1, 0)


def test_storage_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("STORAGE_"):
            monkeypatch.delenv(key)
    defaults = StorageSettings(_env_file=None)
    assert defaults.db_path == Path("data/bot.sqlite3")
    assert (defaults.outputs_dir, defaults.lora_dir) == (Path("outputs"), Path("models/lora"))
    assert defaults.busy_timeout_ms == 5000
    monkeypatch.setenv("STORAGE_DB_PATH", "/srv/bot/db.sqlite3")
    monkeypatch.setenv("STORAGE_BUSY_TIMEOUT_MS", "250")
    configured = StorageSettings(_env_file=None)
    assert configured.db_path == Path("/srv/bot/db.sqlite3") and configured.busy_timeout_ms == 250
    assert all(f.description for f in StorageSettings.model_fields.values())


def test_storage_settings_read_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_LORA_DIR", raising=False)
    env = tmp_path / ".env"
    env.write_text("STORAGE_LORA_DIR=adapters\nDISCORD_TOKEN=secret\n", encoding="utf-8")
    assert StorageSettings(_env_file=env).lora_dir == Path("adapters")
