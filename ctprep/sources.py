"""What a case's source files were when converted: absolute paths and cheap fingerprints (size, mtime, sha256 of
the first and last MiB), recorded in the case's attributes; convert's resume rule and evaluate's native grid read
them to tell an unchanged source from a changed one."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ctprep.discover import CaseSource

FINGERPRINT_BYTES = 1024**2  # sha256 over the first and the last MiB of each source file


def file_fingerprint(path: Path) -> dict:
    """Size, mtime_ns and sha256 of the first and last MiB: cheap, and changes whenever the file does.

    A folder (a DICOM series) gets its files' total size, latest mtime_ns and a sha256 over each file's name,
    size and mtime_ns: any file added, removed, renamed or rewritten changes it."""
    if os.path.isdir(path):
        return _folder_fingerprint(Path(path))
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_head_tail": digest.hexdigest()}


def source_attrs(case: CaseSource) -> dict:
    """Per-case 'source' attribute: absolute paths and fingerprints of the image, the one unnamed mask file
    (``mask``; None for an unlabeled case or named raters) and every rater's file (``raters``: rater id -> entry;
    the unnamed mask is rater "1")."""
    def one(path: Path | None) -> dict | None:
        return None if path is None else {"path": str(Path(path).absolute()), **file_fingerprint(path)}

    raters = {rater: one(path) for rater, path in case.masks.items()}
    mask = next(iter(raters.values())) if case.mask_path is not None else None
    return {"image": one(case.image_path), "mask": mask, "raters": raters}



def _folder_fingerprint(folder: Path) -> dict:
    """``file_fingerprint`` of a folder: over the regular, non-hidden files directly in it."""
    digest = hashlib.sha256()
    size = latest = 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stat = path.stat()
        size, latest = size + stat.st_size, max(latest, stat.st_mtime_ns)
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"size": size, "mtime_ns": latest, "sha256_head_tail": digest.hexdigest()}
