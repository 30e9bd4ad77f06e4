"""The manifest: hashes verify, tampering is named, writes are atomic."""

import json

import pytest

from domainlift import manifest
from domainlift.manifest import ManifestError


def _artifact(root):
    root.mkdir()
    (root / "weights.bin").write_bytes(b"\x00" * 100)
    (root / "sub").mkdir()
    (root / "sub" / "a.txt").write_text("hello")
    return manifest.write(root, kind="test", config={"k": 1}, parent={"sha256": "x"}, quality={"acc": 0.9})


def test_write_then_verify(tmp_path):
    m = _artifact(tmp_path / "a")
    assert set(m["files"]) == {"weights.bin", "sub/a.txt"}
    assert m["files"]["weights.bin"]["bytes"] == 100
    assert manifest.verify(tmp_path / "a")["sha256"] == m["sha256"]
    assert "torch" in m["versions"] and "python" in m["versions"]


@pytest.mark.parametrize(
    "tamper,match",
    [
        (lambda r: (r / "weights.bin").write_bytes(b"\x01" * 100), "weights.bin does not match its sha256"),
        (lambda r: (r / "sub" / "a.txt").unlink(), "missing sub/a.txt"),
        (lambda r: (r / "extra.bin").write_bytes(b"1"), "unexpected file extra.bin"),
    ],
)
def test_verify_names_the_bad_file(tmp_path, tamper, match):
    _artifact(tmp_path / "a")
    tamper(tmp_path / "a")
    with pytest.raises(ManifestError, match=match):
        manifest.verify(tmp_path / "a")


def test_no_manifest_is_not_an_artifact(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ManifestError, match="no manifest.json"):
        manifest.verify(tmp_path / "a")


def test_digest_depends_on_content_only(tmp_path):
    m1 = _artifact(tmp_path / "a")
    m2 = _artifact(tmp_path / "b")
    assert m1["sha256"] == m2["sha256"]
    assert manifest.parent_info(tmp_path / "a")["sha256"] == m1["sha256"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with manifest.atomic_dir(final) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_then_replaces(tmp_path):
    final = tmp_path / "out"
    with manifest.atomic_dir(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with manifest.atomic_dir(final):
            pass
    with manifest.atomic_dir(final, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_manifest_is_json(tmp_path):
    _artifact(tmp_path / "a")
    data = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert data["schema_version"] == manifest.SCHEMA_VERSION and data["kind"] == "test"


def test_an_edited_file_list_no_longer_adds_up_to_the_digest(tmp_path):
    root = tmp_path / "a"
    _artifact(root)
    (root / "weights.bin").write_bytes(b"\x01" * 100)
    m = json.loads((root / manifest.MANIFEST).read_text())
    m["files"]["weights.bin"]["sha256"] = manifest.file_sha256(root / "weights.bin")  # the file list rewritten too
    (root / manifest.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="was edited: its file list does not add up to its sha256"):
        manifest.verify(root)


def test_leftovers_of_killed_writers_go_and_live_writers_keep_theirs(tmp_path):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now belongs to no process
    for name in (f".v.tmp-{dead.pid}-abc", f".v.old-{dead.pid}", f".w.tmp-{os.getpid()}-x", ".hidden"):
        (tmp_path / name).mkdir()
    with manifest.atomic_dir(tmp_path / "v") as tmp:
        (tmp / "f").write_text("x")
        assert tmp.name.startswith(f".v.tmp-{os.getpid()}-") and manifest.is_leftover(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", f".w.tmp-{os.getpid()}-x", "v"]
