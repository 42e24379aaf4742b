"""Reader for the IDX format (MNIST, Fashion-MNIST): magic, big-endian dims, raw big-endian data."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from tocha.errors import UserError

# Type code (3rd magic byte) -> big-endian numpy dtype, as in the format's specification.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_FIX = "re-install the dataset (apt-get install --reinstall dataset-fashion-mnist) or download it again"


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"'{path}' is not a valid IDX file: {what}", where="IDX data file", fix=_FIX)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"IDX file '{path}' does not exist", where="IDX data file", fix=_FIX) from None
    except (EOFError, OSError, zlib.error) as e:
        # gzip raises EOFError for a cut-off stream and BadGzipFile (an OSError) for a non-gzip file.
        raise _bad(path, f"cannot decompress it ({e})") from None


def read_idx(path: str | Path) -> torch.Tensor:
    """The array stored in an IDX file (`.gz` or plain), as a CPU tensor in native byte order.

    The magic number and the size implied by the header are checked, so a truncated or foreign
    file fails here with its name instead of producing garbage images later.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise _bad(path, f"expected at least a 4-byte magic number, found {len(raw)} bytes")
    zero1, zero2, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or code not in IDX_DTYPES:
        raise _bad(
            path,
            f"expected magic 0x0000TTNN with type TT in "
            f"{{{', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}}}, found 0x{raw[:4].hex().upper()}",
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _bad(path, f"expected a {header}-byte header for {ndim} dimensions, found {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        shape = "x".join(map(str, dims))
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise _bad(path, f"{state}: header says {shape} of {dtype.name}, i.e. {expected} bytes, found {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    # astype to native order also copies out of the read-only bytes, which torch wants writable.
    return torch.from_numpy(data.astype(dtype.newbyteorder("="), copy=True))
