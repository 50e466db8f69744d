"""FITS reading and writing at the edges of the pipeline.

Raw files are opened read-only and never modified. Every product is written
atomically (temporary file in the same folder, then rename) with a header that
says what it is: BUNIT, model equation, calibrated ranges, inputs, version, date
and HISTORY.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import __version__

__all__ = ["atomic_path", "cube_writer", "image_hdu", "open_raw", "provenance", "read_image", "read_section",
           "scaled_rows",
           "write_atomic", "write_hdus", "write_table"]


def image_hdu(hdul: fits.HDUList):
    """Return the first HDU of ``hdul`` holding 2-D image data, or None."""
    for hdu in hdul:
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.header.get("NAXIS", 0) == 2:
            return hdu
    return None


def scaled_rows(hdu, rows=slice(None)) -> np.ndarray:
    """Return ``rows`` of an HDU opened with ``do_not_scale_image_data=True`` as float32.

    Applies BSCALE/BZERO here, so unsigned 16-bit images stay memory-mapped and
    only the requested rows are read.
    """
    data = np.asarray(hdu.data[rows], dtype=np.float32)
    bscale, bzero = hdu.header.get("BSCALE", 1), hdu.header.get("BZERO", 0)
    if isinstance(hdu, fits.CompImageHDU):  # astropy scales compressed images itself
        return data
    if bscale != 1:
        data *= np.float32(bscale)
    if bzero != 0:
        data += np.float32(bzero)
    return data


def open_raw(path: str | Path) -> fits.HDUList:
    """Open a raw FITS file read-only, memory-mapped, with scaling left to :func:`scaled_rows`."""
    return fits.open(path, mode="readonly", memmap=True, do_not_scale_image_data=True)


def read_image(path: str | Path, scale_factor: float = 1.0, rows=slice(None)) -> np.ndarray:
    """Read ``rows`` of the image of a FITS file as float32 divided by ``scale_factor``.

    Raises
    ------
    ValueError
        If the file holds no 2-D image.
    """
    with open_raw(path) as hdul:
        hdu = image_hdu(hdul)
        if hdu is None:
            raise ValueError(f"{path}: no 2-D image data")
        return scaled_rows(hdu, rows) / np.float32(scale_factor)


def read_section(path: str | Path, ext, index) -> np.ndarray:
    """Read ``data[index]`` of extension ``ext`` of an unscaled product, memory-mapped (only that section)."""
    with fits.open(path, memmap=True) as hdul:
        return np.array(hdul[ext].data[index])


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
    header["DATE"] = (datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC creation time")
    for key, value in keywords.items():
        header[key.upper()] = value
    for item in inputs:
        header.add_history(f"input: {item}")
    return header


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; products are as readable as any file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(hdul: fits.HDUList, path: str | Path) -> Path:
    """Write ``hdul`` to ``path`` atomically, with checksums."""
    with atomic_path(path) as tmp:
        hdul.writeto(tmp, overwrite=True, checksum=True)
    return Path(path)


def write_hdus(path: str | Path, data: np.ndarray, header: fits.Header, extensions=()) -> Path:
    """Write a primary image and named image/table extensions atomically.

    ``extensions`` is a sequence of ``(name, array_or_table_hdu, bunit)``.
    """
    hdus = [fits.PrimaryHDU(data=data, header=header)]
    for name, ext, bunit in extensions:
        if isinstance(ext, fits.BinTableHDU):
            ext.name = name
            hdus.append(ext)
        else:
            hdu = fits.ImageHDU(data=ext, name=name)
            hdu.header["BUNIT"] = bunit
            hdus.append(hdu)
    return write_atomic(fits.HDUList(hdus), path)


def write_table(table, path: str | Path) -> Path:
    """Write an astropy Table atomically; the format follows the suffix (.ecsv, .fits)."""
    with atomic_path(path) as tmp:
        table.write(tmp, overwrite=True)
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
