"""NIfTI in and out: reading and validating images and masks (header sanity before any allocation, then data
checks), writing a volume with a source's header, and the one gzip helper (ISA-L when installed).

Every read fault is raised as ``CaseError`` with one line naming the file, what was expected, what was found.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from nibabel.imageglobals import LoggingOutputSuppressor
from nibabel.openers import ImageOpener

from ctprep.atomic import write_bytes
from ctprep.errors import CaseError

try:  # optional accelerator (pip install isal): gunzip in _stored_voxels, gzip in gzip_bytes
    from isal import igzip, isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    igzip = isal_zlib = None

MAX_IN_PLANE = 2048  # pixels per in-plane axis; clinical CT is 512, micro-CT-like sizes are refused
MAX_SLICES = 4096  # axial slices; a whole-body 0.5 mm scan has ~4000
MAX_BYTES = 2 * 1024**3  # float32 bytes of the decoded volume (~2 GiB); larger headers are refused unread
AFFINE_TOLERANCE = 0.01  # image/mask affines may differ by this fraction of the smallest voxel size


@dataclass(frozen=True)
class NiftiVolume:
    """A validated 3-D volume: float32 values (after scl_slope/inter) in the file's array order, its affine."""

    data: np.ndarray  # (I, J, K) float32, source array order
    affine: np.ndarray  # 4x4 float64 voxel -> world (RAS mm)
    path: Path


def load_header(path: Path) -> tuple[nib.Nifti1Image, tuple[int, int, int], np.ndarray]:
    """Open ``path`` lazily and validate its header: 3-D shape, sane sizes, finite affine with positive voxels.

    Returns the image proxy, its 3-D shape and its affine; no voxel data is read.
    """
    path = Path(path)
    try:
        with LoggingOutputSuppressor():  # nibabel logs header fixes it makes; faults are reported below instead
            img = nib.load(str(path))
    except FileNotFoundError as err:
        raise CaseError(f"{path}: file not found; check the raw folder") from err
    except Exception as err:  # nibabel raises many types for damaged headers (ImageFileError, EOFError, ...)
        raise CaseError(f"{path}: unreadable NIfTI header ({_reason(err)}); re-export the file") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise CaseError(f"{path}: expected a NIfTI-1/2 image, found {type(img).__name__}; convert it to NIfTI")
    shape = _check_shape(path, img.shape)
    affine = _check_affine(path, img)
    _check_size(path, shape, affine)
    return img, shape, affine


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """3-D, or 4-D/5-D with trailing singleton dimensions (squeezed); every dimension at least 1."""
    if len(shape) < 3 or any(int(n) != 1 for n in shape[3:]):
        raise CaseError(f"{path}: expected a 3-D volume, found shape {tuple(int(n) for n in shape)}; "
                        "export one 3-D image per case")
    if min(shape[:3]) < 1:
        raise CaseError(f"{path}: header claims an empty volume of shape {tuple(shape[:3])}; re-export the file")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_affine(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    """Finite pixdim > 0 and a finite, invertible affine."""
    zooms = _raw_pixdim(path, img)
    if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
        raise CaseError(f"{path}: expected positive finite voxel sizes, found pixdim {zooms.tolist()}; "
                        "fix the header")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CaseError(f"{path}: expected a finite invertible affine, found {affine[:3].tolist()}; fix the header")
    return affine


def _raw_pixdim(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    """pixdim[1:4] as written in the file: nibabel silently replaces negative or zero ones on load."""
    with ImageOpener(str(path)) as handle:
        header = type(img.header).from_fileobj(handle, check=False)
    return np.asarray(header["pixdim"][1:4], dtype=np.float64)


def _check_size(path: Path, shape: tuple[int, int, int], affine: np.ndarray) -> None:
    """Refuse headers claiming absurd sizes before any allocation."""
    z_axis = int(np.flatnonzero(nio.io_orientation(affine)[:, 0] == 2)[0])
    in_plane = [n for axis, n in enumerate(shape) if axis != z_axis]
    n_bytes = 4 * int(np.prod(shape, dtype=np.int64))
    if max(in_plane) > MAX_IN_PLANE or shape[z_axis] > MAX_SLICES or n_bytes > MAX_BYTES:
        raise CaseError(f"{path}: header claims shape {shape} ({n_bytes / 1024**3:.1f} GiB as float32); "
                        f"expected at most {MAX_IN_PLANE} in-plane, {MAX_SLICES} slices and "
                        f"{MAX_BYTES // 1024**3} GiB; check the file")


def _read_data(path: Path, img: nib.Nifti1Image, shape: tuple[int, int, int], scaled: bool) -> np.ndarray:
    """Read the voxels (float32 after scaling if ``scaled``, else the stored dtype); decoding faults -> CaseError."""
    try:
        data = _stored_voxels(path, img)
    except MemoryError:
        raise
    except Exception as err:  # truncated gzip (EOFError), zlib.error, short file (ValueError/OSError)
        raise CaseError(f"{path}: unreadable voxel data ({_reason(err)}); the file is truncated or "
                        "corrupt, re-download or re-export it") from err
    if scaled:
        data = _scale(data, float(img.dataobj.slope), float(img.dataobj.inter))
    return np.asarray(data).reshape(shape)


def _scale(stored: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """scl_slope/scl_inter applied in float32 (nibabel's get_fdata works in float64: ~3x slower, same HU)."""
    data = stored.astype(np.float32)
    if slope != 1.0:
        data *= np.float32(slope)
    if inter != 0.0:
        data += np.float32(inter)
    return data


def _stored_voxels(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    """The voxels as stored (no scaling), in the image's shape.

    For .nii.gz with ISA-L installed (``pip install isal``) the file is gunzipped at once with it (~2.4x faster
    than zlib; reading is what convert and predict are bound by) and the voxels are viewed in place, without
    nibabel's copies. Only header + voxel bytes are inflated, so a stream longer than its header claims cannot
    exhaust memory.
    """
    if isal_zlib is None or not str(path).endswith(".gz"):
        return np.asanyarray(img.dataobj.get_unscaled())
    header = img.header
    dtype = header.get_data_dtype()
    count = int(np.prod(img.shape))
    offset = int(img.dataobj.offset)
    needed = offset + count * dtype.itemsize
    inflater = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)  # gzip container
    raw = inflater.decompress(Path(path).read_bytes(), needed)
    if len(raw) < needed:
        raise EOFError(f"gzip stream ended after {len(raw)} of {needed} bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(img.shape, order="F")


def read_volume(path: Path) -> NiftiVolume:
    """Read and validate a CT image: float32 HU after scl_slope/inter, source array order, finite values."""
    path = Path(path)
    img, shape, affine = load_header(path)
    data = _read_data(path, img, shape, scaled=True)
    if not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise CaseError(f"{path}: expected finite values, found {bad} NaN/inf voxels; fix or re-export the image")
    return NiftiVolume(data=data, affine=affine, path=path)


def read_mask(path: Path, image: NiftiVolume) -> np.ndarray:
    """Read a mask on ``image``'s grid as bool (any nonzero voxel is lesion); shape and affine must match."""
    path = Path(path)
    img, shape, affine = load_header(path)
    check_same_grid(path, shape, affine, image)
    data = _read_data(path, img, shape, scaled=False)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise CaseError(f"{path}: expected finite mask values, found NaN/inf; fix or re-export the mask")
    return data != 0


def check_same_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray, image: NiftiVolume) -> None:
    """CaseError naming ``path`` unless its grid (shape, affine within AFFINE_TOLERANCE of a voxel) is ``image``'s."""
    if tuple(shape) != image.data.shape:
        raise CaseError(f"{path}: mask shape {tuple(shape)} != image shape {image.data.shape} ({image.path.name}); "
                        "export the mask on the image grid")
    tolerance = AFFINE_TOLERANCE * float(np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0)).min())
    worst = float(np.abs(np.asarray(affine) - image.affine).max())
    if worst > tolerance:
        raise CaseError(f"{path}: mask affine differs from the image's ({image.path.name}) by {worst:.4g} mm "
                        f"(tolerance {tolerance:.3g} mm); export the mask on the image grid")


def write_like(source: Path, data: np.ndarray, destination: Path, descrip: str = "ctstack") -> None:
    """Write ``data`` as NIfTI with ``source``'s header (shape, qform/sform and codes kept, ``descrip`` set);
    gzipped for a .gz ``destination``; temp file + rename."""
    src = nib.load(str(source))
    header = src.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(src.shape)
    header.set_slope_inter(1.0, 0.0)  # the values written are the values meant (a source's scl_* would rescale)
    header["descrip"] = descrip.encode()[:80]  # the header field holds 80 bytes
    _write_nifti(header, np.asarray(data).reshape(src.shape), destination)


def write_with_affine(data: np.ndarray, affine: np.ndarray, destination: Path, descrip: str = "ctstack") -> None:
    """Write ``data`` as NIfTI-1 on ``affine`` (RAS mm; qform and sform both set, code 1 = scanner), as a
    DICOM-to-NIfTI converter would for the series the affine came from; gzipped for a .gz ``destination``."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.asarray(data).dtype)
    header.set_data_shape(np.shape(data))
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header["descrip"] = descrip.encode()[:80]
    _write_nifti(header, np.asarray(data), destination)


def _write_nifti(header, data: np.ndarray, destination: Path) -> None:
    """``nifti_bytes`` of ``header`` and ``data``, gzipped for a .gz ``destination``, written atomically."""
    payload = nifti_bytes(header, data)
    if str(destination).endswith(".gz"):
        payload = gzip_bytes(payload)
    write_bytes(destination, payload)


def nifti_bytes(header, data: np.ndarray) -> bytes:
    """A single-file NIfTI image: header (and extensions), zero padding to vox_offset, voxels in Fortran order.

    Built directly instead of through nibabel's writer, which costs ~4x the gzip on a 512x512x300 mask;
    a Fortran-contiguous ``data`` (what the GPU path hands over) is written without a transpose copy.
    """
    buffer = io.BytesIO()
    header.set_data_offset(0)  # nibabel then sets the smallest offset after the header and its extensions
    header.write_to(buffer)
    buffer.write(b"\0" * (int(header.get_data_offset()) - buffer.tell()))
    voxels = np.asarray(data, dtype=header.get_data_dtype())
    buffer.write(voxels.tobytes(order="F"))
    return buffer.getvalue()


def gzip_bytes(payload: bytes, isal_level: int = 1, mtime: int | None = None) -> bytes:
    """One gzip member: ISA-L at ``isal_level`` when installed (~10x zlib on masks), else zlib at level 1;
    ``mtime=0`` gives reproducible bytes (None stamps the current time)."""
    if igzip is not None:
        return igzip.compress(payload, isal_level, mtime=mtime)
    return gzip.compress(payload, compresslevel=1, mtime=mtime)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
