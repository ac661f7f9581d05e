"""Checksums of an adapter's files: a sha256 manifest written with the adapter, verified before
anything loads it.

The trainer writes ``brandbot_manifest.json`` (every file's size and sha256) into the adapter
folder before the folder is renamed into place; the sha256 of the manifest itself is the
adapter's checksum, which the registry stores (``adapters.weights_fingerprint``). Deployment,
rollback and the reconciler call :func:`verify_adapter_files` first, so a flipped byte, a file
cut short by a full disk or an interrupted copy, or a manifest swapped for another is refused
with a sentence that says which file and why, instead of reaching the model server.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "brandbot_manifest.json"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> str:
    """Record every file of ``folder`` (sub-folders included) and return the adapter's checksum.

    Call it once the folder is complete and before it is published (renamed into place)."""
    files = {
        path.relative_to(folder).as_posix(): {
            "size": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    text = json.dumps({"format": 1, "files": files}, indent=2, sort_keys=True) + "\n"
    target = folder / MANIFEST
    with target.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_checksum(folder: Path) -> str | None:
    """The checksum of ``folder``'s manifest as it is on disk, or None without one."""
    path = folder / MANIFEST
    return file_sha256(path) if path.is_file() else None


def verify_adapter_files(folder: Path, checksum: str | None) -> list[str]:
    """Why ``folder`` does not match its recorded checksum and manifest ([] when it does).

    ``checksum`` is the one recorded when the adapter was trained; with None (an adapter built
    before checksums existed) a folder without a manifest passes, and one with a manifest is
    checked against it."""
    if not folder.is_dir():
        return [f"the adapter folder {folder} does not exist (deleted by retention, or moved)"]
    path = folder / MANIFEST
    if not path.is_file():
        if checksum is None:
            return []
        return [
            f"{MANIFEST} (the adapter's checksums) is missing from {folder}: the adapter was "
            "written or copied only partly"
        ]
    actual = file_sha256(path)
    if checksum is not None and actual != checksum:
        return [
            f"{MANIFEST} does not match the checksum recorded at training "
            f"({actual[:12]}… instead of {checksum[:12]}…): the folder holds other files"
        ]
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise ValueError("files is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{MANIFEST} is unreadable: {exc}"]
    reasons = []
    for name, entry in sorted(files.items()):
        file = folder / name
        if not file.is_file():
            reasons.append(f"{name} is missing (listed in {MANIFEST})")
            continue
        size = file.stat().st_size
        if size != entry.get("size"):
            reasons.append(
                f"{name} is {size} bytes, but {entry.get('size')} were written at training: "
                "it is cut short or partially written"
            )
        elif file_sha256(file) != entry.get("sha256"):
            reasons.append(f"{name} does not match its sha256 checksum: the file is corrupted")
    return reasons
