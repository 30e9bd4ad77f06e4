"""The one owner of the artifact manifest: every stage writes and verifies artifacts through here.

An artifact is a directory (artifacts/<job>/checkpoint, artifacts/<job>/export/<variant>, ...) with a
manifest.json that records what produced it (config, parent artifact and its sha256, library versions),
its files with sha256 and size, and its measured quality. Readers call `verify()` before loading, so a
truncated copy or a swapped weight file is refused instead of served.

Artifacts are written atomically: `atomic_dir()` hands out a temporary sibling directory and renames it
into place only when the block finished, so a crash never leaves a half-written artifact that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from domainlift.errors import ArtifactExistsError, ManifestError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_LIBRARIES = (
    "domainlift",
    "torch",
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "optimum",
    "onnx",
    "onnxruntime",
    "bitsandbytes",
    "bentoml",
)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under root (relative POSIX paths), the manifest itself excluded."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return out


def digest(files: dict[str, dict]) -> str:
    """One sha256 for a whole artifact: over its sorted (path, file sha256) pairs."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def parent_info(path: Path) -> dict:
    """Identify the input an artifact was made from: its manifest digest if it has one, else its files."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        m = read(path)
        return {"path": str(path), "kind": m.get("kind"), "sha256": m["sha256"]}
    return {"path": str(path), "kind": "external", "sha256": digest(hash_files(path))}


def write(root: Path, *, kind: str, config: dict, parent: dict, quality: dict, **extra) -> dict:
    """Hash every file under root and write root/manifest.json. Call last, after all files are written."""
    files = hash_files(root)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sha256": digest(files),
        "parent": parent,
        "config": config,
        "quality": quality,
        "versions": library_versions(),
        **extra,
        "files": files,
    }
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{root} has no {MANIFEST}: it is not a finished domainlift artifact (re-run the stage that makes it)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); re-run the stage that makes it") from e


def verify(root: Path) -> dict:
    """Check every file against the manifest; return the manifest or raise naming each bad file."""
    root = Path(root)
    manifest = read(root)
    actual = hash_files(root)
    expected = manifest.get("files", {})
    problems = []
    for name, meta in expected.items():
        if name not in actual:
            problems.append(f"missing {name}")
        elif actual[name]["sha256"] != meta["sha256"]:
            problems.append(f"{name} does not match its sha256")
    problems += [f"unexpected file {name}" for name in actual if name not in expected]
    if not problems and digest(expected) != manifest.get("sha256"):
        problems.append(f"{MANIFEST} was edited: its file list does not add up to its sha256")
    if problems:
        raise ManifestError(
            f"{root} fails its manifest: {'; '.join(problems)}. "
            "The artifact was modified or copied incompletely; re-run the stage that makes it."
        )
    return manifest


# What atomic_dir leaves behind when its process is killed (kill -9, power loss): `.<name>.tmp-<pid>-<random>`
# and `.<name>.old-<pid>`. Readers skip names that start with a dot; writers remove the ones of dead processes.
_LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-(\d+)(?:-.*)?$")


def is_leftover(path: Path) -> bool:
    return bool(_LEFTOVER.match(Path(path).name))


def clean_leftovers(parent: Path) -> list[Path]:
    """Remove the temporary and set-aside directories under `parent` whose writing process is gone."""
    removed = []
    for p in Path(parent).glob(".*"):
        m = _LEFTOVER.match(p.name)
        if m and p.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final` in one rename. Leftovers of writers
    that were killed are removed first."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ArtifactExistsError(f"{final} already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # overwrite: move the old one aside first so a failure never loses both
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
