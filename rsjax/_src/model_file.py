"""The container under rsjax's compressed model files: a checked ``.npz``.

Writing is atomic (a temporary file in the same directory, renamed over the
target) and the temporary file is created with the caller's umask, as
``open`` would. Reading never hands a damaged byte to a parser that could
fail in its own way: every zip member's sizes are checked against the file,
its CRC-32 is checked by :mod:`zipfile`, each ``.npy`` header is parsed
without pickle and its shape must account for the member's bytes exactly.
Whatever goes wrong in there becomes one ``ValueError`` naming the file.
The SHA-256 digest (:func:`digest`) is the format's own check on top.

Also here: the encodings the format uses inside its arrays and JSON (raw
bits for bfloat16, bit-packed index tables, metadata as plain JSON values).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import secrets
import zipfile
from typing import Any, BinaryIO, Callable, Mapping

import jax
import ml_dtypes  # pylint: disable=unused-import  (registers 'bfloat16' ..)
import numpy as np

# zlib's deflate cannot expand data by more than about 1032:1; a member
# that claims more is damaged, so a flipped size never drives a huge read.
_MAX_DEFLATE_RATIO = 1032


def damaged(path: str, detail: Any) -> ValueError:
  """The one error every unreadable file becomes."""
  return ValueError(
      f"{path} is damaged (truncated or corrupted) or not an rsjax compressed "
      f"model file: {detail}")


def atomic_write(path: str | os.PathLike,
                 write: Callable[[BinaryIO], None]) -> None:
  """Writes a file so readers see the old or the new one, never half.

  ``write(f)`` fills a temporary file beside ``path``, which then replaces
  ``path``; on any error the temporary file is removed. The file gets the
  usual permissions (the umask applies).

  Raises:
    FileNotFoundError: the directory of ``path`` does not exist (it is not
      created).
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"cannot save {path}: the directory {directory!r} does not exist")
  tmp = os.path.join(
      directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
  # os.open with 0o666 applies the umask, unlike tempfile.mkstemp's 0o600.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]
              ) -> None:
  """Writes ``arrays`` as a compressed ``.npz`` at ``path``, atomically."""
  atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read_source(source) -> tuple[bytes, str]:
  """``(the bytes, a name for messages)`` of a path or a binary file object.

  Raises:
    FileNotFoundError: no such file (other ``OSError`` s of opening it pass
      through too: they are not damage).
  """
  if hasattr(source, "read"):
    data = source.read()
    if not isinstance(data, bytes):
      raise TypeError(f"{source!r} is not opened in binary mode")
    return data, str(getattr(source, "name", "<file object>"))
  path = os.fspath(source)
  with open(path, "rb") as f:
    return f.read(), path


def read_npz(data: bytes, name: str) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` file's bytes, read defensively.

  Raises:
    ValueError: the file ``name`` is damaged, truncated or not an ``.npz``
      of plain arrays.
  """
  try:
    return _read_members(data)
  except Exception as e:  # zipfile, zlib and the npy parser raise many kinds.
    raise damaged(name, f"{type(e).__name__}: {e}") from e


def _read_members(data: bytes) -> dict[str, np.ndarray]:
  arrays = {}
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
      raise ValueError("the archive names a member twice")
    for info in infos:
      if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not a .npy array")
      if info.compress_type == zipfile.ZIP_STORED:
        most = info.compress_size
      elif info.compress_type == zipfile.ZIP_DEFLATED:
        most = info.compress_size * _MAX_DEFLATE_RATIO + 1024
      else:
        raise ValueError(f"member {info.filename!r} uses compression method "
                         f"{info.compress_type}")
      if info.compress_size > len(data) or info.file_size > most:
        raise ValueError(f"member {info.filename!r} claims "
                         f"{info.file_size} bytes from {info.compress_size}")
      arrays[info.filename[:-len(".npy")]] = _parse_npy(archive.read(info))
  return arrays


# The one header layout NumPy writes for a plain array (format 1.0 / 2.0);
# anything else is not a file this module wrote, so a strict match replaces
# NumPy's own parser (Python's tokenizer, which fails in its own ways).
_NPY_HEADER = re.compile(
    r"\{'descr': '([^']+)', 'fortran_order': (True|False), "
    r"'shape': \(((?:\d+, )*\d+,?)?\), \} *\n")
_NPY_MAGIC = b"\x93NUMPY"


def _parse_npy(blob: bytes) -> np.ndarray:
  """One ``.npy`` member; its shape must account for its bytes exactly."""
  if blob[:6] != _NPY_MAGIC or blob[6:8] not in (b"\x01\x00", b"\x02\x00"):
    raise ValueError("a member is not a .npy array of format 1.0 or 2.0")
  size_bytes = 2 if blob[6] == 1 else 4
  start = 8 + size_bytes
  end = start + int.from_bytes(blob[8:start], "little")
  match = _NPY_HEADER.fullmatch(blob[start:end].decode("latin1"))
  if match is None:
    raise ValueError(f"an unexpected .npy header {blob[start:end][:80]!r}")
  descr, fortran_order, shape_text = match.groups()
  dtype = np.dtype(descr)
  if dtype.hasobject:
    raise ValueError("an object array (would need pickle)")
  shape = tuple(int(d) for d in (shape_text or "").split(",") if d.strip())
  payload = blob[end:]
  if math.prod(shape) * dtype.itemsize != len(payload):
    raise ValueError(f"a {dtype} array of shape {shape} in "
                     f"{len(payload)} bytes")
  array = np.frombuffer(payload, dtype)
  order = "F" if fortran_order == "True" else "C"
  return array.reshape(shape, order=order).copy()


def digest(meta_bytes: bytes, arrays: Mapping[str, np.ndarray]) -> str:
  """SHA-256 over the metadata, then each array's name, dtype, shape, bytes.

  Arrays go in sorted name order; ``'__sha256__'`` itself must not be in
  ``arrays``.
  """
  h = hashlib.sha256(meta_bytes)
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def to_storable(array: np.ndarray) -> tuple[np.ndarray, str]:
  """``(array NumPy can save, dtype name)``.

  ``.npy`` has no bfloat16 (nor the other ``ml_dtypes``): those are kept as
  their raw bits in an unsigned integer array of the same width.
  """
  dtype = array.dtype
  if dtype.kind in "biufc":
    return array, dtype.name
  if dtype.type.__module__.startswith("ml_dtypes"):
    return array.view(np.dtype(f"u{dtype.itemsize}")), dtype.name
  raise TypeError(f"dtype {dtype} is not a numeric dtype")


def from_storable(array: np.ndarray, dtype_name: str) -> np.ndarray:
  """The inverse of :func:`to_storable`."""
  dtype = np.dtype(dtype_name)
  stored = dtype if dtype.kind in "biufc" else np.dtype(f"u{dtype.itemsize}")
  if array.dtype != stored:
    raise ValueError(f"a {dtype_name} array stored as {array.dtype}")
  return array.view(dtype)


def pack_index(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Bit-packs an index table ``[R, G]`` (``-1`` = pruned).

  Returns:
    ``(packed uint8, widths [R] uint8)``: row ``r`` uses ``widths[r]`` bits a
    code, the least bits that hold its largest code ``index + 1``.
  """
  codes = np.asarray(index, np.int64) + 1
  if codes.size and codes.min() < 0:
    raise ValueError("index values must be >= -1")
  widths = np.array([int(m).bit_length() for m in codes.max(axis=1)]
                    if codes.shape[1] else [0] * codes.shape[0], np.uint8)
  max_width = int(widths.max()) if widths.size else 0
  bits = (codes[:, :, None] >> np.arange(max_width)) & 1
  mask = np.arange(max_width)[None, None, :] < widths[:, None, None]
  flat = bits[np.broadcast_to(mask, bits.shape)].astype(np.uint8)
  return np.packbits(flat, bitorder="little"), widths


def unpack_index(packed: np.ndarray, widths: np.ndarray,
                 num_groups: int) -> np.ndarray:
  """The inverse of :func:`pack_index`: ``[R, G]`` int32."""
  widths = np.asarray(widths, np.int64)
  max_width = int(widths.max()) if widths.size else 0
  total = int(widths.sum()) * num_groups
  flat = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")
  if flat.size < total or flat.size - total >= 8:
    raise ValueError(
        f"packed index holds {flat.size} bits, expected {total} (+ padding)")
  mask = np.arange(max_width)[None, None, :] < widths[:, None, None]
  mask = np.broadcast_to(mask, (widths.size, num_groups, max_width))
  bits = np.zeros(mask.shape, np.int64)
  bits[mask] = flat[:total]
  codes = np.sum(bits << np.arange(max_width), axis=-1)
  return (codes - 1).astype(np.int32)


def jsonable(value, where: str):
  """``value`` with NumPy/JAX scalars and arrays as Python values."""
  if isinstance(value, (str, bool, int, float, type(None))):
    return value
  if isinstance(value, Mapping):
    out = {}
    for key, item in value.items():
      if not isinstance(key, str):
        raise TypeError(f"{where} has the key {key!r}: metadata keys must be "
                        "strings")
      out[key] = jsonable(item, f"{where}[{key!r}]")
    return out
  if isinstance(value, (list, tuple)):
    return [jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    array = np.asarray(value)
    if array.dtype.kind in "biuf":
      return array.tolist()
    if array.dtype.type.__module__.startswith("ml_dtypes"):
      return array.astype(np.float64).tolist()
  raise TypeError(f"{where} = {value!r:.60} (type {type(value).__name__}) "
                  "is not JSON-serialisable")
