"""The product writer: streamed images are the bytes astropy writes."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cmoscal import fitsio
from cmoscal.fitsio import read_product, write_hdus


@pytest.fixture(params=[1, 3], ids=["one thread", "3 threads, 8 kB segments"])
def threads(request, monkeypatch):
    """Threads writing a product; with several, images are cut into many segments written at once."""
    if request.param > 1:
        monkeypatch.setattr(fitsio, "_SEGMENT", 8192)
    return request.param


@pytest.mark.parametrize("primary", ["f4", "f8", "u1", "i2", "u2", "i4", "u4", None])
def test_streamed_products_are_the_bytes_astropy_writes_and_leave_the_arrays_alone(tmp_path, primary, threads):
    rng = np.random.default_rng(5)
    shape = (301, 517)  # rows of odd length: the data ends inside a 2880-byte block and a buffer chunk
    images = {"f4": rng.normal(size=shape).astype("f4"), "f8": rng.normal(size=(3,) + shape),
              "u1": rng.integers(0, 256, shape).astype("u1"), "i2": rng.integers(-3000, 3000, shape).astype("i2"),
              "u2": rng.integers(0, 65536, shape).astype("u2"), "i4": rng.integers(-9, 9, shape).astype("i4"),
              "u4": rng.integers(0, 1 << 32, shape).astype("u4")}
    images["f4"][0, 0] = np.nan
    copies = {k: v.copy() for k, v in images.items()}
    header = fits.Header([("BUNIT", "DN"), ("TEMP", -5.0, "degC")])
    header.add_history("input: a.fits")
    data = None if primary is None else images[primary]
    table = fits.table_to_hdu(Table({"x": [1, 2], "name": ["a", "bb"]}))

    write_hdus(tmp_path / "streamed.fits", data, header.copy(),
               [(k.upper(), v, "DN") for k, v in images.items()] + [("TABLE", table, "")], threads=threads)

    hdus = [fits.PrimaryHDU(data, header.copy())]
    for k, v in images.items():
        hdus.append(fits.ImageHDU(v, name=k.upper()))
        hdus[-1].header["BUNIT"] = "DN"
    hdus.append(fits.table_to_hdu(Table({"x": [1, 2], "name": ["a", "bb"]})))
    hdus[-1].name = "TABLE"
    fits.HDUList(hdus).writeto(tmp_path / "astropy.fits")
    assert (tmp_path / "streamed.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
    for k, v in images.items():
        assert v.dtype.isnative and np.array_equal(v, copies[k], equal_nan=True)
    with fits.open(tmp_path / "streamed.fits") as hdul:
        assert np.array_equal(hdul["U2"].data, images["u2"]) and hdul["TABLE"].data["name"][1] == "bb"
        assert np.array_equal(hdul["U4"].data, images["u4"])
    for k, v in images.items():  # and the product reader gives them back, unsigned ones included
        assert np.array_equal(read_product(tmp_path / "streamed.fits", k.upper()), v, equal_nan=True), k


def test_streamed_checksums_verify_and_a_changed_byte_is_caught(tmp_path, threads):
    rng = np.random.default_rng(6)
    images = [("SIGNAL", rng.normal(size=(3, 77, 131)).astype("f4"), "DN"),  # 3 * 77 * 131 * 4 bytes: whole words
              ("DQ", rng.integers(0, 1 << 32, (77, 131)).astype("u4"), ""),
              ("COUNT", rng.integers(0, 256, (77, 131)).astype("u1"), "")]  # ends inside a word
    table = fits.table_to_hdu(Table({"x": [1, 2]}))
    path = write_hdus(tmp_path / "sums.fits", None, fits.Header([("BUNIT", "")]),
                      images + [("TABLE", table, "")], checksum=True, threads=threads)
    with fits.open(path, checksum=True) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SIGNAL", "DQ", "COUNT", "TABLE"]
        assert all(h.verify_checksum() == 1 and h.verify_datasum() == 1 for h in hdul)
        assert np.array_equal(hdul["DQ"].data, images[1][1]) and hdul["PRIMARY"].header["DATASUM"] == "0"
    astropy_hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(data, name=name) for name, data, _ in images]
    fits.HDUList(astropy_hdus).writeto(tmp_path / "astropy.fits", checksum=True)
    with fits.open(path) as ours, fits.open(tmp_path / "astropy.fits") as theirs:
        assert [h.header["DATASUM"] for h in ours][:4] == [h.header["DATASUM"] for h in theirs]
    raw = bytearray(path.read_bytes())
    raw[2880 * 3 + 100] ^= 1  # a bit of the first extension's data
    (tmp_path / "bad.fits").write_bytes(bytes(raw))
    with fits.open(tmp_path / "bad.fits") as hdul:
        assert hdul["SIGNAL"].verify_datasum() == 0 and hdul["SIGNAL"].verify_checksum() == 0


def test_data_given_later_is_written_after_the_rest_with_the_same_bytes(tmp_path, threads):
    rng = np.random.default_rng(7)
    first, dq = rng.normal(size=(3, 77, 131)).astype("f4"), rng.integers(0, 1 << 16, (77, 131)).astype("u2")
    seen = []

    def dq_when_asked():  # with one thread, the other images are in the (temporary) file by now
        if threads == 1:
            (written,) = tmp_path.glob(".later.*.fits")
            seen.append(np.frombuffer(written.read_bytes(), ">f4", first.size, 2880 * 2))
        return dq

    write_hdus(tmp_path / "later.fits", None, fits.Header([("BUNIT", "")]),
               [("FIRST", first, "DN"), ("DQ", fitsio.Later(dq.shape, dq.dtype, dq_when_asked), "")], checksum=True,
               threads=threads)
    write_hdus(tmp_path / "now.fits", None, fits.Header([("BUNIT", "")]), [("FIRST", first, "DN"), ("DQ", dq, "")],
               checksum=True, threads=threads)
    with fits.open(tmp_path / "later.fits", checksum=True) as later, fits.open(tmp_path / "now.fits") as now:
        assert all(h.verify_checksum() == 1 for h in later)
        assert np.array_equal(later["DQ"].data, dq) and later["DQ"].header["DATASUM"] == now["DQ"].header["DATASUM"]
    assert all(np.array_equal(found, first.ravel()) for found in seen) and len(seen) == (threads == 1)


@pytest.mark.parametrize("given", ["an error", "another shape"])
def test_data_given_later_that_fails_or_differs_fails_the_write_and_leaves_nothing(tmp_path, given, threads):
    def get():
        if given == "an error":
            raise RuntimeError("classification failed")
        return np.zeros((5, 5), "u2")

    expected = "classification failed" if given == "an error" else r"shape \(5, 5\).*\(4, 5\)"
    with pytest.raises((RuntimeError, ValueError), match=expected):
        write_hdus(tmp_path / "model.fits", None, fits.Header(),
                   [("A", np.ones((4, 5), "f4"), ""), ("DQ", fitsio.Later((4, 5), np.dtype("u2"), get), "")],
                   threads=threads)
    assert list(tmp_path.iterdir()) == []
