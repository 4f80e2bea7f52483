"""Finding and pairing cases in a raw folder: COVID-19-20 `_ct`/`_seg`, nnU-Net/MSD, `images/`+`masks/`.

Layouts (see docs/store-format.md, "Inputs"), all of which may sit in one raw folder:

- COVID-19-20: ``NAME_ct.nii[.gz]`` + ``NAME_seg.nii[.gz]`` anywhere below RAW -> case ``NAME``.
- nnU-Net / MSD: ``imagesTr/NAME_0000.nii[.gz]`` (or ``NAME.nii[.gz]``) + ``labelsTr/NAME.nii[.gz]``;
  ``imagesTs/`` (with ``labelsTs/`` if present) likewise.
- ``images/`` + ``masks/`` (or ``labels/``) with equal stems.
An image without a mask is an unlabeled case; a mask without an image is an orphan (reported).
"""
from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ctprep.errors import UsageError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # always fullmatch: "$" allows a final "\n"
NNUNET_PAIRS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))
FOLDER_PAIRS = (("images", "masks"), ("images", "labels"))
LAYOUT_DIRS = {"imagesTr", "labelsTr", "imagesTs", "labelsTs", "images", "masks", "labels"}
CHANNEL_STEM = re.compile(r"(.+)_(\d{4})")  # nnU-Net image stems NAME_0000: four digits name the channel; fullmatch
CT_CHANNEL = "0000"  # the one channel ctstack reads


@dataclass(frozen=True)
class CaseSource:
    """One case found in the raw folder: its id, image file and mask file (None when unlabeled)."""

    case_id: str
    image_path: Path
    mask_path: Path | None


@dataclass
class Discovery:
    """What ``find_cases`` found: cases sorted by id, orphan masks, one-line problems (name clashes, bad ids) and
    one line per NIfTI-named entry skipped as not a readable regular file (hidden, FIFO, device, broken link)."""

    cases: list[CaseSource] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def nifti_stem(path: Path) -> str | None:
    """File name without .nii/.nii.gz, or None if the file is not NIfTI (or a hidden/AppleDouble file)."""
    name = path.name
    if name.startswith("."):
        return None
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def image_channel(stem: str) -> tuple[str, str | None]:
    """nnU-Net's image naming rule: ``NAME_0000`` -> (``NAME``, ``"0000"``); a stem without a channel -> (stem, None)."""
    match = CHANNEL_STEM.fullmatch(stem)
    return (match.group(1), match.group(2)) if match else (stem, None)


def skip_reason(path: Path) -> str | None:
    """Why a NIfTI-named entry is not read (hidden name, link to nothing, FIFO, device, folder), or None if it is
    a regular file (directly or through a link). Never opens the entry: opening a FIFO would block."""
    if path.name.startswith("."):
        return "hidden name (a dot file, e.g. macOS ._ metadata)"
    link = "a link to " if path.is_symlink() else ""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a link to a missing file" if link else "unreadable entry"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return f"{link}a FIFO (named pipe), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"{link}a device, not a file"
    if stat.S_ISDIR(mode):
        return f"{link}a folder, not a file"
    return f"{link}not a regular file"


def _looks_nifti(path: Path) -> bool:
    """Whether the name ends in .nii/.nii.gz (hidden names included), so a skip is worth reporting."""
    return any(path.name.endswith(suffix) and len(path.name) > len(suffix) for suffix in NIFTI_SUFFIXES)


def _usable(path: Path, skipped: list[str]) -> bool:
    """Whether a NIfTI-named path is a regular file to read; otherwise its reason goes to ``skipped``."""
    reason = skip_reason(path)
    if reason is not None:
        skipped.append(f"{path}: skipped, {reason}")
    return reason is None


def _nifti_files(folder: Path, skipped: list[str]) -> dict[str, list[Path]]:
    """stem -> files directly in ``folder`` (a list, so 'a.nii' next to 'a.nii.gz' is caught as a clash)."""
    found: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if _looks_nifti(path) and _usable(path, skipped):
                found.setdefault(nifti_stem(path), []).append(path)
    return found


def find_cases(raw: Path) -> Discovery:
    """Find every case below ``raw`` in the supported layouts; raises UsageError if ``raw`` is not a folder."""
    raw = Path(raw)
    if not raw.is_dir():
        raise UsageError(f"{raw}: not a folder; pass the folder holding the NIfTI images (and masks)")
    found = Discovery()
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for image_dir, mask_dir in NNUNET_PAIRS:
        _merge(images, _channel_zero(_nifti_files(raw / image_dir, found.skipped), raw / image_dir, found))
        _merge(masks, _nifti_files(raw / mask_dir, found.skipped))
    if (raw / "images").is_dir():
        _merge(images, _nifti_files(raw / "images", found.skipped))
        for _, mask_dir in FOLDER_PAIRS:
            _merge(masks, _nifti_files(raw / mask_dir, found.skipped))
    _find_covid_pairs(raw, images, masks, found)
    _pair(images, masks, found)
    return found


def _channel_zero(files: dict[str, list[Path]], folder: Path, found: Discovery) -> dict[str, list[Path]]:
    """nnU-Net names images NAME_0000 (channel 0): strip it; other channels are reported and dropped.

    Only when the folder uses channel suffixes at all (some _0000 file), so 'case_0001' alone stays a name.
    """
    if not any(image_channel(stem)[1] == CT_CHANNEL for stem in files):
        return files
    kept: dict[str, list[Path]] = {}
    for stem, paths in files.items():
        name, channel = image_channel(stem)
        if channel is None:
            kept.setdefault(stem, []).extend(paths)
        elif channel == CT_CHANNEL:
            kept.setdefault(name, []).extend(paths)
        else:
            found.problems.append(f"{paths[0]}: channel {channel} ignored; ctstack reads one CT channel (_0000)")
    return kept


def _find_covid_pairs(raw: Path, images: dict[str, list[Path]], masks: dict[str, list[Path]],
                      found: Discovery) -> None:
    """COVID-19-20 names anywhere below raw (outside the layout folders): NAME_ct / NAME_seg."""
    problems = found.problems
    for path in sorted(raw.rglob("*")):
        if not _looks_nifti(path) or LAYOUT_DIRS & set(path.relative_to(raw).parts[:-1]):
            continue
        if not _usable(path, found.skipped):
            continue
        stem = nifti_stem(path)
        if stem.endswith("_ct"):
            images.setdefault(stem[:-3], []).append(path)
        elif stem.endswith("_seg"):
            masks.setdefault(stem[:-4], []).append(path)
        elif path.parent == raw:
            problems.append(f"{path}: not a recognised name; use NAME_ct/NAME_seg, imagesTr/labelsTr "
                            "or images/ + masks/ (see docs/store-format.md)")


def _merge(target: dict[str, list[Path]], more: dict[str, list[Path]]) -> None:
    for stem, paths in more.items():
        target.setdefault(stem, []).extend(paths)


def _pair(images: dict[str, list[Path]], masks: dict[str, list[Path]], found: Discovery) -> None:
    """Pair images with masks by case id; clashes and unsafe ids become problems, lone masks orphans."""
    for case_id in sorted(images):
        image_paths, mask_paths = images[case_id], masks.get(case_id, [])
        problem = _case_problem(case_id, image_paths, mask_paths)
        if problem:
            found.problems.append(problem)
            continue
        found.cases.append(CaseSource(case_id, image_paths[0], mask_paths[0] if mask_paths else None))
    found.orphans.extend(p for stem in sorted(set(masks) - set(images)) for p in masks[stem])


def _case_problem(case_id: str, image_paths: list[Path], mask_paths: list[Path]) -> str | None:
    """One line describing why a case cannot be converted as found, or None."""
    if len(image_paths) > 1:
        return f"{image_paths[0]}: case {case_id!r} has {len(image_paths)} images ({_names(image_paths)}); keep one"
    if len(mask_paths) > 1:
        return f"{mask_paths[0]}: case {case_id!r} has {len(mask_paths)} masks ({_names(mask_paths)}); keep one"
    if not SAFE_CASE_ID.fullmatch(case_id):
        return (f"{image_paths[0]}: case id {case_id!r} is not a safe name (letters, digits, '.', '_', '-'; "
                "starting with a letter or digit); rename the file")
    return None


def _names(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)
