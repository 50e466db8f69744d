"""FITS at the edges of the pipeline: one reader for every raw container, atomic product writers.

Raw files are opened read-only and never modified. Every container gives the same values:
plain FITS (BITPIX 8/16/32/-32/-64 with BSCALE/BZERO/BLANK), gzip, fpack (Rice, a
``CompImageHDU``), data in an extension behind an empty primary, and 3-D cubes whose planes
are frames. Plain files are read as raw bytes at the data offset (only the rows asked for)
and decoded by a compiled kernel; compressed ones through astropy, which does their scaling.

Every product is written atomically (temporary file in the same folder, then rename) with a
header that says what it is: BUNIT, model equation, calibrated ranges, inputs, version, date
and HISTORY.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import __version__
from .compute import concurrently, scratch
from .kernels import decode_be16, mark_frame

__all__ = ["FrameRef", "Later", "atomic_path", "cube_writer", "frames_in", "has_image", "provenance", "read_image",
           "read_product", "read_rows", "read_stack", "read_table", "reference", "set_card", "write_atomic",
           "write_hdus", "write_table"]

_BITPIX = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}


@dataclass(frozen=True)
class FrameRef:
    """Where one raw frame's pixels are.

    Attributes
    ----------
    path : str
        The file.
    hdu, plane : int
        Image HDU, and plane of a 3-D cube (-1 for a 2-D image).
    offset : int
        Byte offset of the frame's first pixel in the file; -1 when the file is compressed
        (gzip or fpack) and astropy decodes it.
    bitpix : int
    bscale, bzero : float
    blank : int or None
        BLANK value of integer data (those pixels are NaN).
    shape : tuple of int
        (rows, columns).
    """

    path: str
    hdu: int
    plane: int
    offset: int
    bitpix: int
    bscale: float
    bzero: float
    blank: int | None
    shape: tuple

    @property
    def nbytes(self) -> int:
        """Bytes of the frame's pixels on disk (uncompressed)."""
        return self.shape[0] * self.shape[1] * abs(self.bitpix) // 8

    @property
    def adc_max(self) -> float:
        """Largest value the stored integer type can hold (inf for floating point data)."""
        if self.bitpix < 0:
            return np.inf
        top = 2 ** (self.bitpix - (0 if self.bitpix == 8 else 1)) - 1
        return top * self.bscale + self.bzero


def _gzipped(path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def frames_in(path: str | Path) -> tuple[fits.Header, list[FrameRef]]:
    """Header and frames of a raw file: the first image HDU with 2-D or 3-D data.

    The header is the primary header updated by the image HDU's own. A 3-D cube gives one
    frame per plane. An empty list means the file holds no image.

    Raises
    ------
    OSError, ValueError
        When the file is not readable FITS (astropy's own errors).
    """
    path = str(path)
    compressed = _gzipped(path)
    with fits.open(path, mode="readonly", memmap=False, lazy_load_hdus=True) as hdul:
        for index, hdu in enumerate(hdul):
            if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                continue
            if hdu.header.get("NAXIS", 0) not in (2, 3) or not all(hdu.shape):
                continue
            header = hdul[0].header.copy() if index else fits.Header()
            header.update(hdu.header)
            fixed = isinstance(hdu, fits.CompImageHDU) or compressed
            bitpix = int(hdu.header["BITPIX"])
            start = -1 if fixed else hdul.fileinfo(index)["datLoc"]
            shape = tuple(int(n) for n in hdu.shape[-2:])
            planes = range(hdu.shape[0]) if len(hdu.shape) == 3 else [-1]
            nbytes = shape[0] * shape[1] * abs(bitpix) // 8
            blank = hdu.header.get("BLANK") if bitpix > 0 else None
            refs = [FrameRef(path, index, plane, -1 if fixed else start + max(plane, 0) * nbytes, bitpix,
                             float(hdu.header.get("BSCALE", 1.0)), float(hdu.header.get("BZERO", 0.0)),
                             None if blank is None else int(blank), shape) for plane in planes]
            return header, refs
    return fits.Header(), []


def read_rows(ref: FrameRef, rows: slice = slice(None)) -> np.ndarray:
    """Rows of a raw frame as float64 in the file's physical units (BSCALE, BZERO applied; BLANK -> NaN)."""
    start, stop, _ = rows.indices(ref.shape[0])
    nx = ref.shape[1]
    if ref.offset >= 0:
        dtype = np.dtype(">" + _BITPIX[ref.bitpix])
        data = np.fromfile(ref.path, dtype=dtype, count=(stop - start) * nx,
                           offset=ref.offset + start * nx * dtype.itemsize).reshape(stop - start, nx)
        values = data.astype(np.float64)
        if ref.blank is not None:
            values[data == ref.blank] = np.nan
        if ref.bscale != 1:
            values *= ref.bscale
        if ref.bzero != 0:
            values += ref.bzero
        return values
    with fits.open(ref.path, mode="readonly") as hdul:  # astropy scales compressed data itself
        hdu = hdul[ref.hdu]
        index = (ref.plane, slice(start, stop)) if ref.plane >= 0 else slice(start, stop)
        return np.asarray(hdu.section[index], dtype=np.float64)


def read_stack(refs, rows: slice, scale: float, saturation: float, out: np.ndarray | None = None):
    """Read frames into one stack in DN, marking saturated samples.

    Parameters
    ----------
    refs : sequence of FrameRef
    rows : slice
        Rows to read (only those bytes are read from plain files).
    scale : float
        raw / scale = DN.
    saturation : float
        DN; samples at or above become +inf (NaN stays NaN: an invalid sample).
    out : ndarray, optional
        Where to put the stack (N, R, X) float32; default a new array.

    Returns
    -------
    stack : ndarray, shape (N, R, X), float32
    counts : ndarray, shape (N, 3), int64
        Saturated, zero-valued and NaN samples per frame.
    nbytes : int
        Bytes read from disk (compressed files count their whole size).
    """
    start, stop, _ = rows.indices(refs[0].shape[0])
    nx = refs[0].shape[1]
    stack = np.empty((len(refs), stop - start, nx), np.float32) if out is None else out
    counts = np.zeros((len(refs), 3), np.int64)
    nbytes = 0
    for i, ref in enumerate(refs):
        flat = stack[i].reshape(-1)
        if ref.offset >= 0 and ref.bitpix == 16:
            raw = scratch("raw", (flat.size,), np.uint16)
            with open(ref.path, "rb", buffering=0) as f:
                f.seek(ref.offset + start * nx * 2)
                if f.readinto(raw) != raw.nbytes:
                    raise OSError(f"{ref.path}: file ends before its pixels do (truncated?)")
            counts[i] = decode_be16(raw, flat, ref.bscale, ref.bzero, 1.0 / scale, saturation,
                                    0 if ref.blank is None else ref.blank, ref.blank is not None)
            nbytes += raw.nbytes
        else:
            flat[:] = (read_rows(ref, rows) / scale).reshape(-1)
            counts[i] = mark_frame(flat, saturation)
            nbytes += flat.size * abs(ref.bitpix) // 8 if ref.offset >= 0 else os.path.getsize(ref.path)
    return stack, counts, nbytes


# --- products -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def _layouts(path: str, mtime: int) -> dict:
    """Where the data of each image HDU of a product is, by index and by EXTNAME (one parse of the file):
    (offset, dtype, shape, bscale, bzero)."""
    found = {}
    with fits.open(path, mode="readonly", lazy_load_hdus=True) as hdul:
        for index, hdu in enumerate(hdul):
            header = hdu.header
            if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) or isinstance(hdu, fits.CompImageHDU):
                continue
            shape = tuple(header[f"NAXIS{k}"] for k in range(header["NAXIS"], 0, -1))
            found[index] = found[hdu.name] = (hdu.fileinfo()["datLoc"], np.dtype(">" + _BITPIX[header["BITPIX"]]),
                                              shape, header.get("BSCALE", 1), header.get("BZERO", 0))
    return found


def has_image(path: str | Path, ext: str) -> bool:
    """Whether a product has an image extension named ``ext``."""
    return ext.upper() in _layouts(str(path), os.stat(path).st_mtime_ns)


def _read_band(path: str, offset: int, dtype: np.dtype, shape: tuple, rows: slice) -> np.ndarray:
    """Rows ``rows`` (the second-to-last axis) of an image at ``offset``, read into memory: one read per plane
    (a memory map would cost a mapping and a page fault per 4 kB, and threads mapping at once wait on each other)."""
    start, stop, _ = rows.indices(shape[-2])
    planes, row_bytes = int(np.prod(shape[:-2])), shape[-1] * dtype.itemsize
    data = np.empty((planes, stop - start, shape[-1]), dtype)
    with open(path, "rb", buffering=0) as f:
        for plane, out in enumerate(data):
            f.seek(offset + (plane * shape[-2] + start) * row_bytes)
            if out.nbytes and f.readinto(out) != out.nbytes:
                raise OSError(f"{path}: file ends before its pixels do (truncated?)")
    return data.reshape(*shape[:-2], stop - start, shape[-1])


def read_product(path: str | Path, ext=0, rows=slice(None)) -> np.ndarray:
    """Rows (the second-to-last axis) of an image extension of a product, memory-mapped.

    Only the requested rows are read; ``rows`` is a slice or an index array. Values come back
    in native byte order, scaled when the extension has BSCALE/BZERO (e.g. uint16, uint32).
    """
    path = str(path)
    layouts = _layouts(path, os.stat(path).st_mtime_ns)
    key = ext.upper() if isinstance(ext, str) else ext
    if key not in layouts:
        raise KeyError(f"{path}: no image extension {ext!r}")
    offset, dtype, shape, bscale, bzero = layouts[key]
    if isinstance(rows, slice) and rows.step in (None, 1):
        data = _read_band(path, offset, dtype, shape, rows)
    else:  # scattered sample rows
        data = np.asarray(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)[..., rows, :])
    if bscale == 1 and dtype.kind == "i" and bzero == _SIGN_BIT.get(dtype.itemsize):  # unsigned, stored signed
        return (data.astype(np.int64) + int(bzero)).astype(f"u{dtype.itemsize}")
    data = data.astype(dtype.newbyteorder("="))
    if bscale != 1 or bzero != 0:
        return data * bscale + bzero
    return data


def read_image(path: str | Path, ext=0, rows=slice(None)) -> np.ndarray:
    """Rows of an image of a product as float32 (see :func:`read_product`)."""
    return read_product(path, ext, rows).astype(np.float32, copy=False)


def provenance(header: fits.Header, *, bunit: str, description: str, inputs=(), **keywords) -> fits.Header:
    """Add the keywords every product carries to ``header`` and return it.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Header to complete in place.
    bunit : str
        Physical unit of the data (BUNIT).
    description : str
        One line saying what the product is (DESCRIP).
    inputs : iterable of str
        Input files, one HISTORY line each.
    **keywords
        Further keywords; a value may be a ``(value, comment)`` tuple.
    """
    header["BUNIT"] = bunit
    header["DESCRIP"] = description[:68]
    header["CREATOR"] = (f"cmoscal {__version__}", "software that wrote this file")
    header["DATE"] = (datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "UTC creation time")
    for key, value in keywords.items():
        set_card(header, key.upper(), value)
    for item in inputs:
        header.add_history(f"input: {item}")
    return header


def set_card(header: fits.Header, key: str, value) -> None:
    """``header[key] = value``, except a non-finite number (FITS holds none): left out, a COMMENT says so."""
    number = value[0] if isinstance(value, tuple) else value
    if isinstance(number, (float, np.floating)) and not np.isfinite(number):
        header.remove(key, ignore_missing=True)
        header.add_comment(f"{key} not stated: {number} (a FITS header holds finite numbers only)")
    else:
        header[key] = value


def reference(params: dict, inventory_meta: dict, reftype: str) -> dict:
    """Reference-file keywords of a model product: REFTYPE, PEDIGREE, USEAFTER, AUTHOR, INSTRUME, TELESCOP, DETECTOR.

    The ``instrument`` parameters win; unset ones come from the calibration frames (their
    identity and dates in the inventory's metadata) or say UNKNOWN.
    """
    import getpass

    given = params["instrument"]
    found = inventory_meta.get("identity", {})
    dates = [d[:10] for d in inventory_meta.get("dates", [])]
    pedigree = given["pedigree"] + (f" {dates[0]} {dates[-1]}" if dates and given["pedigree"] != "SIMULATION" else "")
    keys = {"REFTYPE": (reftype, "kind of reference file"), "PEDIGREE": (pedigree, "origin of the calibration data"),
            "USEAFTER": (given["useafter"] or (inventory_meta.get("dates") or ["2000-01-01T00:00:00"])[0],
                         "use for data taken after this date"),
            "AUTHOR": (given["author"] or getpass.getuser(), "who made this file")}
    for key in ("INSTRUME", "TELESCOP", "DETECTOR"):
        keys[key] = given[key.lower()] or found.get(key) or "UNKNOWN"
    return keys


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask is process-wide, so never toggled while threads write


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    A failure to write (no permission, disk full, ...) is one OSError naming ``path``, never
    the temporary name, and leaves nothing behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; products are as readable as any file
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_atomic(hdul: fits.HDUList, path: str | Path, checksum: bool = False) -> Path:
    """Write ``hdul`` to ``path`` atomically (with CHECKSUM/DATASUM if ``checksum``)."""
    with atomic_path(path) as tmp:
        hdul.writeto(tmp, overwrite=True, checksum=checksum)
    return Path(path)


_STREAMED = {np.dtype(t) for t in ("u1", "i2", "u2", "i4", "u4", "f4", "f8")}
_SIGN_BIT = {2: 1 << 15, 4: 1 << 31}  # unsigned integers are stored signed with this BZERO (the FITS convention)
_CHUNK = 1 << 20  # bytes converted at a time: the buffer stays in cache
_SEGMENT = 16 * _CHUNK  # bytes of an image one thread writes at a time
_EXCLUDED = b":;<=>?@[\\]^_`"  # punctuation the checksum's ASCII encoding avoids


def _streamable(hdu) -> bool:
    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and (hdu.data is None or hdu.data.dtype in _STREAMED)


def _word_sum(block) -> int:
    """Sum of the big-endian 32-bit words of ``block`` (bytes-like; a last partial word padded with zeros)."""
    raw = np.frombuffer(block, np.uint8)
    whole = raw.size // 4 * 4
    tail = int.from_bytes(bytes(raw[whole:]).ljust(4, b"\0"), "big")
    return int(raw[:whole].view(">u4").sum(dtype=np.uint64)) + tail


def _fold(total: int) -> int:
    """The 32-bit ones' complement sum of a sum of words (the carries added back)."""
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _encode_checksum(value: int) -> str:
    """The 16-character ASCII form of a 32-bit checksum (FITS checksum convention, Seaman et al. 2012)."""
    chars = bytearray(16)
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        quotient = byte // 4 + ord("0")
        ch = [quotient + byte % 4, quotient, quotient, quotient]
        for j in (0, 2):
            while ch[j] in _EXCLUDED or ch[j + 1] in _EXCLUDED:
                ch[j], ch[j + 1] = ch[j] + 1, ch[j + 1] - 1
        for j in range(4):
            chars[4 * j + i] = ch[j]
    return (chars[15:] + chars[:15]).decode("ascii")


def _card_placeholders(header: fits.Header) -> None:
    """CHECKSUM and DATASUM cards with placeholder values: the header's length is final before the sums are known."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    header["CHECKSUM"] = ("0" * 16, f"HDU checksum updated {now}")
    header["DATASUM"] = ("0", f"data unit checksum updated {now}")


def _hdu_size(hdu) -> int:
    """Bytes of an image HDU in the file: its header and its data padded to 2880-byte blocks."""
    nbytes = 0 if hdu.data is None else hdu.data.nbytes
    return len(hdu.header.tostring()) + nbytes + -nbytes % 2880


def _pwrite(fd: int, block, position: int) -> None:
    """Write all of ``block`` at ``position`` of ``fd`` (a write may take only part of it)."""
    view = memoryview(block).cast("B")
    while view.nbytes:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _write_segment(fd: int, position: int, data, first: int, count: int, checksum: bool) -> int:
    """Write elements ``first`` to ``first + count`` of the flattened image ``data`` (an array or :class:`Later`)
    big-endian at ``position`` of ``fd`` through a small buffer; return the sum of their 32-bit words (for DATASUM,
    when ``checksum``; 0 otherwise).

    astropy byteswaps the caller's array in place (a thread reading it meanwhile sees swapped values), or
    copies it, and writes it in one call; a small buffer is written at memory speed.
    """
    flat = (data.array() if isinstance(data, Later) else data).reshape(-1)[first:first + count]
    step = _CHUNK // flat.itemsize
    buffer = scratch("fits_out", (min(step, flat.size),), flat.dtype.newbyteorder(">"))
    total = 0
    for first in range(0, flat.size, step):
        out = buffer[:min(step, flat.size - first)]
        if flat.dtype.kind == "u" and flat.itemsize in _SIGN_BIT:  # stored signed with BZERO, as astropy does
            np.bitwise_xor(flat[first:first + step], flat.dtype.type(_SIGN_BIT[flat.itemsize]), out=out)
        else:
            out[...] = flat[first:first + step]
        _pwrite(fd, out, position + first * flat.itemsize)
        if checksum:
            total += _word_sum(out)  # chunks are whole words but the last
    return total


def _image_tasks(fd: int, offset: int, hdu, data, checksum: bool) -> list:
    """The writes of an image HDU's ``data`` (an array or :class:`Later`) at ``offset`` of ``fd`` (its header's
    place left for later), in segments of _SEGMENT bytes: calls, each returning its word sum (segments are whole
    words but the last). The padding to 2880 bytes needs no write: the file is sized beforehand, its unwritten
    bytes are zeros."""
    if hdu.data is None:
        return []
    data = data if isinstance(data, Later) else np.ascontiguousarray(data)
    position = offset + len(hdu.header.tostring())
    itemsize = hdu.data.itemsize
    step = _SEGMENT // itemsize
    return [functools.partial(_write_segment, fd, position + first * itemsize, data, first, step, checksum)
            for first in range(0, hdu.data.size, step)]


def _write_header(fd: int, offset: int, header: fits.Header, datasum: int | None) -> None:
    """Write an image HDU's header at ``offset``, with its CHECKSUM and DATASUM (placeholders already in it) from
    the data's word sum unless ``datasum`` is None."""
    if datasum is not None:
        datasum = _fold(datasum)
        header["DATASUM"] = str(datasum)
        header["CHECKSUM"] = _encode_checksum(~_fold(_word_sum(header.tostring().encode("ascii")) + datasum)
                                              & 0xFFFFFFFF)
    _pwrite(fd, header.tostring().encode("ascii"), offset)


@dataclass(frozen=True)
class Later:
    """Image data that :func:`write_hdus` writes once ``get()`` returns it, the file's other data meanwhile.

    Its shape and dtype are known before (they fix the file's layout); ``get`` may block, e.g. on the
    future of the computation that makes the data, and an error it raises fails the write.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    get: Callable[[], np.ndarray]

    def placeholder(self) -> np.ndarray:
        """A read-only array of the shape and dtype, no memory behind it (for the HDU's header)."""
        return np.broadcast_to(np.zeros((), self.dtype), self.shape)

    def array(self) -> np.ndarray:
        """The data, once ``get`` returns it, checked against the declared shape and dtype."""
        data = np.ascontiguousarray(self.get())
        if data.shape != tuple(self.shape) or data.dtype != self.dtype:
            raise ValueError(f"image data of shape {data.shape} and dtype {data.dtype} where {tuple(self.shape)} "
                             f"and {np.dtype(self.dtype)} were declared")
        return data


def write_hdus(path: str | Path, data: np.ndarray | None, header: fits.Header, extensions=(),
               checksum: bool = False, threads: int = 1) -> Path:
    """Write a primary image and named image/table extensions atomically.

    ``extensions`` is a sequence of ``(name, data, bunit)``, ``data`` an array, a :class:`Later`
    or a table HDU. The images are streamed (:func:`_write_segment`; without checksums the same
    bytes as astropy's), in segments written at their places in the file by up to ``threads``
    threads at once (a :class:`Later`'s once its data is there); tables are appended by astropy;
    ``checksum`` adds CHECKSUM and DATASUM to every HDU.
    """
    hdus, sources = [fits.PrimaryHDU(data=data, header=header)], [data]
    for name, ext, bunit in extensions:
        if isinstance(ext, (fits.BinTableHDU, fits.ImageHDU)):
            ext.name = name
            hdus.append(ext)
        else:
            hdus.append(fits.ImageHDU(data=ext.placeholder() if isinstance(ext, Later) else ext, name=name))
            hdus[-1].header["BUNIT"] = bunit
        sources.append(ext)
    hdul = fits.HDUList(hdus)
    streamed = hdus[:next((i for i, hdu in enumerate(hdus) if not _streamable(hdu)), len(hdus))]
    if any(isinstance(ext, Later) for ext in sources[len(streamed):]):
        raise ValueError(f"{path}: data given later must come before the first table or unstreamable image")
    if not streamed:
        return write_atomic(hdul, path, checksum)
    hdul.verify("exception")
    for hdu in streamed if checksum else ():
        _card_placeholders(hdu.header)
    offsets = np.cumsum([0] + [_hdu_size(hdu) for hdu in streamed]).tolist()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.truncate(offsets[-1])
            tasks = [_image_tasks(f.fileno(), offset, hdu, source if isinstance(source, Later) else hdu.data,
                                  checksum) for offset, hdu, source in zip(offsets, streamed, sources)]
            sums = iter(concurrently([task for image in tasks for task in image], threads))
            for offset, hdu, image in zip(offsets, streamed, tasks):
                datasum = sum(next(sums) for _ in image)
                _write_header(f.fileno(), offset, hdu.header, datasum if checksum else None)
        for hdu in hdus[len(streamed):]:
            fits.append(tmp, hdu.data, hdu.header, checksum=checksum)
    return Path(path)


def read_table(path: str | Path):
    """Read an ECSV table written by :func:`write_table` (empty texts come back as '', not masked)."""
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")
    for name in table.colnames:
        if table[name].dtype.kind in "US" and hasattr(table[name], "filled"):
            table[name] = table[name].filled("")
    return table


def write_table(table, path: str | Path) -> Path:
    """Write an astropy Table atomically; the format follows the suffix (.ecsv, .fits)."""
    with atomic_path(path) as tmp:
        table.write(tmp, overwrite=True, format="ascii.ecsv" if str(path).endswith(".ecsv") else None)
    return Path(path)


@contextmanager
def cube_writer(path: str | Path, header: fits.Header, shape: tuple[int, int, int], extensions=()):
    """Write a float32 cube plane by plane (``yield``-ed ``write(plane)``), atomically.

    ``shape`` is (planes, ny, nx); ``extensions`` are HDUs appended after the cube.
    Only one plane is ever held in memory.
    """
    cube = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 3), ("NAXIS1", shape[2]),
                        ("NAXIS2", shape[1]), ("NAXIS3", shape[0])])
    cube.extend(card for card in header.cards if card.keyword not in cube and card.keyword != "EXTEND")
    with atomic_path(path) as tmp:
        stream = fits.StreamingHDU(tmp, cube)
        yield lambda plane: stream.write(np.asarray(plane, dtype=">f4"))
        stream.close()
        for hdu in extensions:
            fits.append(tmp, hdu.data, hdu.header)
