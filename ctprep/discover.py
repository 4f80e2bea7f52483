"""Finding and pairing cases in a raw folder: COVID-19-20 `_ct`/`_seg`, nnU-Net/MSD, `images/`+`masks/`.

Layouts (see docs/store-format.md, "Inputs"), all of which may sit in one raw folder:

- COVID-19-20: ``NAME_ct.nii[.gz]`` + ``NAME_seg.nii[.gz]`` anywhere below RAW -> case ``NAME``; several
  annotators as ``NAME_seg_<rater>`` (rater id: [A-Za-z0-9-]+).
- nnU-Net / MSD: ``imagesTr/NAME_0000.nii[.gz]`` (or ``NAME.nii[.gz]``) + ``labelsTr/NAME.nii[.gz]``;
  ``imagesTs/`` (with ``labelsTs/`` if present) likewise; several annotators as ``labelsTr/NAME_<rater>``.
- ``images/`` + ``masks/`` (or ``labels/``) with equal stems (raters as ``masks/NAME_<rater>``).
- QUBIQ case folders: ``NAME/image.nii[.gz]`` + ``NAME/*seg*.nii[.gz]``, one file per rater; the rater id is the
  stem's text after its last ``_`` (``task01_seg01`` -> ``seg01``).
- DICOM series folders (docs/dicom.md): any folder below RAW holding DICOM files (``DICM`` preamble, any name) is
  case ``FOLDER``; its mask is a DICOM SEG or RTSTRUCT in the folder, or ``FOLDER_seg.nii[.gz]`` (raters
  ``FOLDER_seg_<r>``).
An image without a mask is an unlabeled case; a mask without an image is an orphan (reported). A case whose
masks mix an unnamed (``NAME_seg``) and named raters, or name one rater twice, is a problem (docs/raters.md).
"""
from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ctprep.dicom_files import images_and_masks
from ctprep.errors import UsageError
from ctprep.raters import RATER_ID, SINGLE_RATER, sorted_raters

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # always fullmatch: "$" allows a final "\n"
NNUNET_PAIRS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))
FOLDER_PAIRS = (("images", "masks"), ("images", "labels"))
LAYOUT_DIRS = {"imagesTr", "labelsTr", "imagesTs", "labelsTs", "images", "masks", "labels"}
CHANNEL_STEM = re.compile(r"(.+)_(\d{4})")  # nnU-Net image stems NAME_0000: four digits name the channel; fullmatch
CT_CHANNEL = "0000"  # the one channel ctstack reads
COVID_MASK = re.compile(r"(.+)_seg(?:_([A-Za-z0-9-]+))?")  # NAME_seg or NAME_seg_<rater>; fullmatch, greedy NAME
QUBIQ_IMAGE = "image"  # stem of a QUBIQ case folder's image

Masks = dict[str, list[tuple[str | None, Path]]]  # case key -> (rater id or None for an unnamed mask, file)


@dataclass(frozen=True)
class CaseSource:
    """One case found in the raw folder: its id, image file and masks.

    A case with one unnamed mask file (``NAME_seg``, ``labelsTr/NAME``) has it as ``mask_path`` (rater "1");
    named raters (``NAME_seg_r1``, ``labelsTr/NAME_A``, QUBIQ) are in ``rater_paths`` and ``mask_path`` is None.
    """

    case_id: str
    image_path: Path
    mask_path: Path | None
    rater_paths: tuple[tuple[str, Path], ...] = ()  # (rater id, file), natural order of the ids

    @property
    def masks(self) -> dict[str, Path]:
        """Rater id -> mask file, in natural order; empty for an unlabeled case."""
        if self.rater_paths:
            return dict(self.rater_paths)
        return {SINGLE_RATER: self.mask_path} if self.mask_path is not None else {}


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
    layout_masks: dict[str, list[Path]] = {}
    for image_dir, mask_dir in NNUNET_PAIRS:
        _merge(images, _channel_zero(_nifti_files(raw / image_dir, found.skipped), raw / image_dir, found))
        _merge(layout_masks, _nifti_files(raw / mask_dir, found.skipped))
    if (raw / "images").is_dir():
        _merge(images, _nifti_files(raw / "images", found.skipped))
        for _, mask_dir in FOLDER_PAIRS:
            _merge(layout_masks, _nifti_files(raw / mask_dir, found.skipped))
    masks: Masks = {}
    _find_covid_pairs(raw, images, masks, found)
    _find_dicom_folders(raw, images, masks, found)
    _merge(masks, _layout_raters(layout_masks, images))
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


def _layout_raters(files: dict[str, list[Path]], images: dict[str, list[Path]]) -> Masks:
    """nnU-Net / images+masks label files by case: ``NAME`` is the unnamed mask of case NAME; ``NAME_<rater>`` is
    rater <rater> of case NAME when NAME is an image, ``NAME_<rater>`` is not (an exact name always wins) and more
    than one such file matches NAME (a lone ``NAME_x`` stays its own name: reported unpaired, as before raters)."""
    masks: Masks = {}
    named: dict[str, list[tuple[str, str, list[Path]]]] = {}
    for stem, paths in files.items():
        name, _, rater = stem.rpartition("_")
        if stem not in images and name in images and RATER_ID.fullmatch(rater):
            named.setdefault(name, []).append((stem, rater, paths))
        else:
            masks.setdefault(stem, []).extend((None, path) for path in paths)
    for name, entries in named.items():
        for stem, rater, paths in entries:
            key, rater_id = (name, rater) if len(entries) >= 2 else (stem, None)
            masks.setdefault(key, []).extend((rater_id, path) for path in paths)
    return masks


def _find_covid_pairs(raw: Path, images: dict[str, list[Path]], masks: Masks, found: Discovery) -> None:
    """COVID-19-20 names anywhere below raw (outside the layout folders): NAME_ct / NAME_seg[_<rater>]; and QUBIQ
    case folders (an ``image`` file with ``*seg*`` files beside it)."""
    problems = found.problems
    paths = [path for path in sorted(raw.rglob("*")) if _looks_nifti(path)
             and not LAYOUT_DIRS & set(path.relative_to(raw).parts[:-1]) and _usable(path, found.skipped)]
    qubiq = {path.parent for path in paths if nifti_stem(path) == QUBIQ_IMAGE and path.parent != raw}
    for path in paths:
        stem = nifti_stem(path)
        if stem == QUBIQ_IMAGE and path.parent in qubiq:
            images.setdefault(path.parent.name, []).append(path)
            continue
        covid = COVID_MASK.fullmatch(stem)
        if path.parent in qubiq:
            if "seg" in stem.lower():
                masks.setdefault(path.parent.name, []).append((stem.rpartition("_")[2], path))
        elif stem.endswith("_ct"):
            images.setdefault(stem[:-3], []).append(path)
        elif covid:
            masks.setdefault(covid.group(1), []).append((covid.group(2), path))
        elif path.parent == raw:
            problems.append(f"{path}: not a recognised name; use NAME_ct/NAME_seg, imagesTr/labelsTr "
                            "or images/ + masks/ (see docs/store-format.md)")


def _find_dicom_folders(raw: Path, images: dict[str, list[Path]], masks: Masks, found: Discovery) -> None:
    """DICOM case folders anywhere below raw (hidden folders skipped): the folder is the image of case FOLDER; a
    SEG or RTSTRUCT in it is the case's mask. Imports pydicom only when a DICOM file is found."""
    for folder in sorted(path for path in [raw, *raw.rglob("*")] if path.is_dir() and not hidden_below(path, raw)):
        slices, seg_files = images_and_masks(folder)
        for path in seg_files:
            masks.setdefault(folder.name, []).append((None, path))
        if slices:
            images.setdefault(folder.name, []).append(folder)


def hidden_below(path: Path, root: Path) -> bool:
    """Whether a path below ``root`` has a hidden part (.git, .DS_Store folders) in its path relative to it."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _merge(target: dict[str, list], more: dict[str, list]) -> None:
    for stem, paths in more.items():
        target.setdefault(stem, []).extend(paths)


def _pair(images: dict[str, list[Path]], masks: Masks, found: Discovery) -> None:
    """Pair images with masks by case id; clashes and unsafe ids become problems, lone masks orphans."""
    for case_id in sorted(images):
        image_paths, entries = images[case_id], masks.get(case_id, [])
        problem = _case_problem(case_id, image_paths, entries)
        if problem:
            found.problems.append(problem)
            continue
        if len(entries) == 1 and entries[0][0] is None:
            found.cases.append(CaseSource(case_id, image_paths[0], entries[0][1]))
        else:
            named = {rater: path for rater, path in entries}
            found.cases.append(CaseSource(case_id, image_paths[0], None,
                                          tuple((r, named[r]) for r in sorted_raters(named))))
    found.orphans.extend(p for key in sorted(set(masks) - set(images)) for _, p in masks[key])


def _case_problem(case_id: str, image_paths: list[Path], entries: list[tuple[str | None, Path]]) -> str | None:
    """One line describing why a case cannot be converted as found, or None."""
    mask_paths = [path for _, path in entries]
    if len(image_paths) > 1 and all(path.is_dir() for path in image_paths):
        return (f"{image_paths[0]}: case {case_id!r} names {len(image_paths)} DICOM folders ({_names(image_paths)}); "
                "the case id is the folder name: rename one folder")
    if len(image_paths) > 1:
        return f"{image_paths[0]}: case {case_id!r} has {len(image_paths)} images ({_names(image_paths)}); keep one"
    unnamed = [path for rater, path in entries if rater is None]
    if unnamed and len(unnamed) < len(entries):
        return (f"{unnamed[0]}: case {case_id!r} mixes an unnamed mask with rater masks ({_names(mask_paths)}); "
                "name every rater (NAME_seg_<rater>) or keep the one mask")
    if len(unnamed) > 1:
        return f"{mask_paths[0]}: case {case_id!r} has {len(mask_paths)} masks ({_names(mask_paths)}); keep one"
    raters = [rater for rater, _ in entries if rater is not None]
    for rater in raters:
        if not RATER_ID.fullmatch(rater):
            path = next(p for r, p in entries if r == rater)
            return (f"{path}: case {case_id!r} rater id {rater!r} is not a safe name (letters, digits, '-'); "
                    "rename the file")
        if raters.count(rater) > 1:
            twice = [p for r, p in entries if r == rater]
            return (f"{twice[0]}: case {case_id!r} has {len(twice)} masks for rater {rater!r} ({_names(twice)}); "
                    "keep one")
    if not SAFE_CASE_ID.fullmatch(case_id):
        return (f"{image_paths[0]}: case id {case_id!r} is not a safe name (letters, digits, '.', '_', '-'; "
                "starting with a letter or digit); rename the file")
    return None


def _names(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)
