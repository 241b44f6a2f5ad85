"""Crossbar MVMs: prepare the weights once, then emulate per input batch.

:func:`prepare` (dense) and :func:`prepare_shared` (codebook and index table)
do the per-weight work: signed mapping, bit slicing, programming
non-idealities and, where the input patterns are few and the table fits
``TABLE_MAX_BYTES``, the table of ADC outputs (a larger one is built per
row-block in each call: the ``streamed`` dataflow). :func:`apply` is the
per-input call. :func:`crossbar_matmul` and :func:`shared_crossbar_matmul`
do both.

Zero blocks: an all-zero ``(ou_rows, ou_cols // slices)`` weight block of the
dense matrix counts as pruned, as a pruned block of a shared layer: it is
never stored and never activated, so it adds nothing (not even the ``offset``
mapping's constant cells through a lossy ADC) and its rows get no offset
correction. That is what makes the dense emulation of a decompressed layer
equal to its index-and-add emulation, bit for bit.

Inputs are unsigned ``input_bits`` integers. A signed input (a first layer
fed normalised pixels) is either two's complement with a negative MSB cycle
(``signed_inputs=True``: one extra cycle) or two unsigned passes,
``f(x+) - f(x-)``, as the whole-model emulation does (full resolution for
each sign, twice the cycles).
"""

from __future__ import annotations

import functools

from typing import NamedTuple

from flax import struct
import jax
import jax.numpy as jnp

from rsjax._src import hardware
from rsjax.kernels import adc as adc_lib
from rsjax.kernels import cells as cells_lib
from rsjax.kernels import checks
from rsjax.kernels import dataflow as dataflow_lib
from rsjax.kernels import devices as devices_lib
from rsjax.kernels import wires as wires_lib

DATAFLOWS = ("auto", "sliced", "exact", "table", "streamed", "direct")
TABLE_MAX_PATTERNS = 4096
TABLE_MAX_BYTES = 64 << 20


@struct.dataclass
class CrossbarWeights:
  """One layer's weights as programmed on crossbars (a pytree).

  Attributes:
    cells: ``[arrays, R, ou_rows, C, slices]`` float32 conductances of the
      ``C`` stored columns (``streamed`` and ``direct`` paths), else None.
    table: ``[R, 2^(dac_bits ou_rows), C]`` int32 ADC outputs per input
      pattern (``table`` path), else None.
    matrix: ``[in_features, out_features]`` int32 weights (``exact``
      path), else None.
    route: ``[R, N]`` int32 index table per output column: the stored column
      it reads in row-block ``r``, ``C`` for pruned (``streamed`` and
      ``direct`` paths of a shared layer); None for a dense layer and for
      tables, which are routed when built.
    active: ``[R, N]`` int32, 1 where the block is stored (offset correction).
    adc_range: int32 scalar, the partial sum mapped to the top ADC code.
    hw: the hardware.
    dataflow: ``'exact'``, ``'table'``, ``'streamed'`` or ``'direct'``.
    in_features: rows of the crossbar matrix (the input width).
    out_features: columns of the crossbar matrix.
    read_sigma: read noise std of every partial sum (``direct`` path only).
    read_std: ``cells``-shaped per-cell read-noise std (``direct`` path
      only), else None.
    adc_model: the converter's :class:`rsjax.kernels.NonlinearADC`, or None
      for the ideal converter.
    signed_sums: whether a partial sum can come out negative (wire
      resistance with the ``Gmin`` reference subtracted), so the ADC clips
      at code 0 too.
  """

  cells: jax.Array | None
  table: jax.Array | None
  matrix: jax.Array | None
  route: jax.Array | None
  active: jax.Array
  adc_range: jax.Array
  hw: hardware.HardwareSpec = struct.field(pytree_node=False)
  dataflow: str = struct.field(pytree_node=False)
  in_features: int = struct.field(pytree_node=False)
  out_features: int = struct.field(pytree_node=False)
  read_sigma: float = struct.field(pytree_node=False, default=0.0)
  read_std: jax.Array | None = None
  adc_model: adc_lib.NonlinearADC | None = struct.field(pytree_node=False,
                                                    default=None)
  signed_sums: bool = struct.field(pytree_node=False, default=False)

  @property
  def num_row_blocks(self) -> int:
    return -(-self.in_features // self.hw.ou_rows)


def _pick_dataflow(hw, physics, dataflow, num_rb, cols):
  if dataflow not in DATAFLOWS:
    raise ValueError(f"dataflow must be one of {DATAFLOWS}, got {dataflow!r}")
  device, wires, adc_model = physics
  reads = device is not None and device.reads
  ideal = physics.ideal
  pats = (dataflow_lib.num_patterns(hw) if hw.dac_bits * hw.ou_rows <= 24
          else None)
  if dataflow == "exact" and (not ideal or not hw.adc_lossless):
    raise ValueError("dataflow='exact' needs a lossless ADC and an ideal "
                     "device, wires and converter")
  if dataflow in ("table", "streamed") and (reads or pats is None
                                           or pats > TABLE_MAX_PATTERNS):
    raise ValueError(f"dataflow={dataflow!r} needs no read noise and at most "
                     f"{TABLE_MAX_PATTERNS} input patterns per row-block")
  if dataflow not in ("auto", "sliced"):
    return dataflow
  # 'sliced' never short-cuts to the integer matmul: it is how a lossless
  # ADC is checked against 'exact' through the bit-sliced dataflow.
  if dataflow == "auto" and ideal and hw.adc_lossless:
    return "exact"
  if reads or pats is None or pats > TABLE_MAX_PATTERNS:
    return "direct"
  # A table too large to keep is built row-block by row-block per call.
  return "table" if num_rb * pats * cols * 4 <= TABLE_MAX_BYTES else "streamed"


class Physics(NamedTuple):
  """The device, wire and converter models of one programming (static)."""

  device: devices_lib.Device | None
  wires: wires_lib.Wires | None
  adc_model: adc_lib.NonlinearADC | None

  @property
  def ideal(self) -> bool:
    return ((self.device is None or self.device.ideal)
            and (self.wires is None or not self.wires.active)
            and self.adc_model is None)

  @property
  def signed_sums(self) -> bool:
    return self.wires is not None and self.wires.active

  def kwargs(self) -> dict:
    """The models as :func:`prepare`'s keyword arguments."""
    return {"device": self.device, "wires": self.wires, "adc": self.adc_model}


def physics(hw: hardware.HardwareSpec, *, device=None, wires=None,
            adc_model=None) -> Physics:
  """Checks and bundles the models of ``prepare``'s keyword arguments."""
  device = devices_lib.checked(device)
  if wires is not None and not isinstance(wires, wires_lib.Wires):
    raise ValueError(f"wires must be a rsjax.kernels.Wires, got "
                     f"{type(wires).__name__}")
  if adc_model is not None:
    if not isinstance(adc_model, adc_lib.NonlinearADC):
      raise ValueError(f"adc must be a rsjax.kernels.NonlinearADC, got "
                       f"{type(adc_model).__name__}")
    adc_model.check(hw)
  cells_lib.check(hw, device, wires)
  return Physics(device, wires, adc_model)


@functools.partial(jax.jit, static_argnames=("hw", "phys", "dataflow"))
def _program(cells, active, route, hw, phys, dataflow, adc_range, key):
  """Programs ideal levels and (table path) tabulates the ADC outputs."""
  g, read_std = cells_lib.program_array(cells, hw, phys.device, phys.wires,
                                        key)
  if dataflow != "table":
    return g, read_std, None
  ideal_cells = ((phys.device is None or phys.device.ideal)
                 and not phys.signed_sums)
  table = dataflow_lib.build_table(
      g, hw, adc_range, ideal=ideal_cells, adc_model=phys.adc_model,
      signed_sums=phys.signed_sums)
  if route is None:
    return None, None, table * active[:, None, :]
  # Index-and-add: the ADC outputs of each stored block were tabulated once
  # per row-block (above); the index table routes them to every output
  # column that uses the block, once per weight set rather than per input.
  table = jnp.pad(table, ((0, 0), (0, 0), (0, 1)))
  return None, None, jnp.take_along_axis(table, route[:, None, :], axis=2)


def _finish(hw, phys, dataflow, levels, route, active, adc_range, key,
            matrix, in_features, out_features):
  if dataflow == "exact":
    return CrossbarWeights(None, None, matrix, route, active, adc_range, hw,
                           dataflow, in_features, out_features)
  device = phys.device
  if device is not None and device.programs and key is None:
    raise ValueError("programming non-idealities need an explicit key")
  g, read_std, table = _program(levels, active, route, hw, phys, dataflow,
                                adc_range, key)
  sigma = 0.0 if device is None else device.sum_read_sigma
  if dataflow == "table":
    route = None  # routed into the table already
  return CrossbarWeights(g, table, None, route, active, adc_range, hw, dataflow,
                         in_features, out_features, sigma, read_std,
                         phys.adc_model, phys.signed_sums)


def prepare(w, hw: hardware.HardwareSpec, *, adc_range=None,
            device: devices_lib.Device | None = None,
            wires: wires_lib.Wires | None = None,
            adc: adc_lib.NonlinearADC | None = None,
            key=None, dataflow: str = "auto") -> CrossbarWeights:
  """Programs a dense integer crossbar matrix.

  Args:
    w: ``[in_features, out_features]`` signed ints in
      ``[-max_weight, max_weight]``.
    hw: the hardware.
    adc_range: the layer's ADC range, for ``adc_mode='calibrated'`` only.
    device: the ReRAM device (:class:`rsjax.kernels.Device`; its random
      programming effects are drawn here), None for ideal cells.
    wires: wire resistance (:class:`rsjax.kernels.Wires`), None for ideal
      wires.
    adc: the converter's non-linearity (:class:`rsjax.kernels.NonlinearADC`),
      None for an ideal converter.
    key: ``jax.random`` key for the programming non-idealities.
    dataflow: ``'auto'`` (exact if lossless and ideal; else, without read
      noise and with at most ``TABLE_MAX_PATTERNS`` input patterns per
      row-block, the table if it fits ``TABLE_MAX_BYTES`` and the streamed
      table (built per row-block in each call) if not; else direct),
      ``'sliced'`` (as ``'auto'`` but never exact: the bit-sliced dataflow
      even where the ADC is lossless), or force one (``'table'`` ignores
      the size limit).

  Returns:
    The :class:`CrossbarWeights`.
  """
  if getattr(w, "ndim", None) != 2:
    raise ValueError(f"w must be an [in_features, out_features] crossbar "
                     f"matrix, got shape {getattr(w, 'shape', None)}")
  checks.check_ints("w", w, -hw.max_weight, hw.max_weight)
  w = jnp.asarray(w, jnp.int32)
  in_features, out_features = w.shape
  checks.check_int32(hw, in_features)
  rng = adc_lib.resolve_range(hw, adc_range)
  phys = physics(hw, device=device, wires=wires, adc_model=adc)
  num_rb = -(-in_features // hw.ou_rows)
  dataflow = _pick_dataflow(hw, phys, dataflow, num_rb, out_features)
  active, levels = _dense_layout(w, hw, dataflow != "exact")
  return _finish(hw, phys, dataflow, levels, None, active, rng, key, w,
                 in_features, out_features)


# The layouts are one compiled program each: op by op, programming a
# model's layers cost dozens of small compiles.
@functools.partial(jax.jit, static_argnames=("hw", "sliced"))
def _dense_layout(w, hw, sliced):
  """``(active, levels or None)`` of a dense int32 matrix."""
  in_features, out_features = w.shape
  num_rb = -(-in_features // hw.ou_rows)
  bw = hw.block_shape[1]
  groups = -(-out_features // bw)
  wp = jnp.pad(w, ((0, num_rb * hw.ou_rows - in_features),
                   (0, groups * bw - out_features)))
  nonzero = jnp.any(wp.reshape(num_rb, hw.ou_rows, groups, bw) != 0,
                    axis=(1, 3))
  active = jnp.repeat(nonzero.astype(jnp.int32), bw, axis=1)[:, :out_features]
  if not sliced:
    return active, None
  levels = cells_lib.signed_to_cells(wp[:, :out_features], hw)
  return active, levels.reshape(hw.arrays, num_rb, hw.ou_rows, out_features,
                                hw.slices)


def prepare_shared(codebook, index, hw: hardware.HardwareSpec, *,
                   out_features: int | None = None,
                   in_features: int | None = None, adc_range=None,
                   device: devices_lib.Device | None = None,
                   wires: wires_lib.Wires | None = None,
                   adc: adc_lib.NonlinearADC | None = None,
                   key=None, dataflow: str = "auto") -> CrossbarWeights:
  """Programs a shared layer's stored blocks and its index table.

  Args:
    codebook: ``[R, Kc, ou_rows, ou_cols // slices]`` signed int stored
      blocks (e.g. ``rsjax.quantize_weights`` of a float codebook with a
      layer scale).
    index: ``[R, G]`` int ids into ``codebook[r]``, ``-1`` = pruned.
    hw: the hardware; ``hw.block_shape`` must be the block shape.
    out_features: columns of the crossbar matrix (default ``G * bw``).
    in_features: rows of the crossbar matrix (default ``R * ou_rows``).
    adc_range, device, wires, adc, key, dataflow: as :func:`prepare`.

  Returns:
    The :class:`CrossbarWeights` (index-and-add dataflow).
  """
  if getattr(codebook, "ndim", None) != 4 or getattr(index, "ndim", 0) != 2:
    raise ValueError("expected codebook [R, Kc, bh, bw] and index [R, G], "
                     f"got shapes {getattr(codebook, 'shape', None)} and "
                     f"{getattr(index, 'shape', None)}")
  num_rb, slots, bh, bw = codebook.shape
  if (bh, bw) != hw.block_shape:
    raise ValueError(f"codebook blocks {(bh, bw)} do not match the "
                     f"hardware's block_shape {hw.block_shape}")
  if index.shape[0] != num_rb:
    raise ValueError(f"index has {index.shape[0]} row-blocks, codebook has "
                     f"{num_rb}")
  checks.check_ints("codebook", codebook, -hw.max_weight, hw.max_weight)
  checks.check_ints("index", index, -1, slots - 1)
  groups = index.shape[1]
  out_features = (groups * bw if out_features is None
                  else int(out_features))
  in_features = num_rb * bh if in_features is None else int(in_features)
  if not (groups - 1) * bw < out_features <= groups * bw:
    raise ValueError(f"out_features={out_features} does not match {groups} "
                     f"column groups of {bw} columns")
  if not (num_rb - 1) * bh < in_features <= num_rb * bh:
    raise ValueError(f"in_features={in_features} does not match {num_rb} "
                     f"row-blocks of {bh} rows")
  checks.check_int32(hw, in_features)
  codebook = jnp.asarray(codebook, jnp.int32)
  index = jnp.asarray(index, jnp.int32)
  rng = adc_lib.resolve_range(hw, adc_range)
  phys = physics(hw, device=device, wires=wires, adc_model=adc)
  dataflow = _pick_dataflow(hw, phys, dataflow, num_rb,
                            max(slots * bw, out_features))
  active, route, matrix, levels = _shared_layout(
      codebook, index, hw, in_features, out_features, dataflow == "exact")
  return _finish(hw, phys, dataflow, levels, route, active, rng, key,
                 matrix, in_features, out_features)


@functools.partial(jax.jit, static_argnames=("hw", "in_features",
                                             "out_features", "exact"))
def _shared_layout(codebook, index, hw, in_features, out_features, exact):
  """``(active, route, matrix, levels)`` of stored blocks and their index
  (the decompressed matrix for ``exact``, else the stored blocks' levels)."""
  num_rb, slots, bh, bw = codebook.shape
  cols = slots * bw
  col = jnp.arange(out_features, dtype=jnp.int32)
  grp = index[:, col // bw]
  active = (grp >= 0).astype(jnp.int32)
  route = jnp.where(grp >= 0, grp * bw + col[None] % bw, cols)
  if exact:
    blocks = jnp.take_along_axis(codebook, jnp.maximum(index, 0)[:, :, None,
                                                                  None], 1)
    blocks = blocks * (index >= 0)[:, :, None, None].astype(jnp.int32)
    matrix = jnp.transpose(blocks, (0, 2, 1, 3)).reshape(num_rb * bh, -1)
    return active, route, matrix[:in_features, :out_features], None
  stored = jnp.transpose(codebook, (0, 2, 1, 3)).reshape(num_rb, bh, cols)
  return active, route, None, cells_lib.signed_to_cells(stored, hw)


def _dense_direct(weights: CrossbarWeights) -> bool:
  """Whether the direct path runs row-block-major (dense, no read noise)."""
  return (weights.dataflow == "direct" and weights.route is None
          and not _reads(weights))


def _reads(weights: CrossbarWeights) -> bool:
  """Whether the weights read with noise (a key is needed per call)."""
  return bool(weights.read_sigma) or weights.read_std is not None


def _codes_sum(weights: CrossbarWeights, x, key, rows, hw):
  """``S`` of unsigned ``x`` fed as ``hw`` says (its cycles)."""
  if weights.dataflow == "exact":
    return dataflow_lib.map_rows(lambda c, _: dataflow_lib.exact_apply(
        weights.matrix, c, hw), x, rows)
  pad = weights.num_row_blocks * hw.ou_rows - x.shape[1]
  xp = jnp.pad(x, ((0, 0), (0, pad)))
  if weights.dataflow == "table":
    fn = lambda c, _: dataflow_lib.table_apply(weights.table, c, hw)
  elif weights.dataflow == "streamed":
    fn = lambda c, _: dataflow_lib.streamed_apply(
        weights.cells, weights.route, weights.active, c, hw,
        weights.adc_range, adc_model=weights.adc_model,
        signed_sums=weights.signed_sums)
  elif _dense_direct(weights):
    fn = lambda c, _: dataflow_lib.direct_dense_apply(
        weights.cells, weights.active, c, hw, weights.adc_range,
        adc_model=weights.adc_model)
  else:
    fn = lambda c, chunk_key: dataflow_lib.direct_apply(
        weights.cells, weights.route, weights.active, c, hw,
        weights.adc_range, weights.read_sigma, chunk_key,
        read_std=weights.read_std, adc_model=weights.adc_model)
  return dataflow_lib.map_rows(fn, xp, rows, key)


@functools.partial(jax.jit, static_argnames=("rows", "signed"))
def _apply(weights: CrossbarWeights, x, key, rows, signed):
  hw = weights.hw
  dataflow = weights.dataflow
  if signed:
    # Two's complement: the unsigned reading u of the bits, then one more
    # cycle that feeds the sign bits again, weighted -2^input_bits:
    # x = u - 2^input_bits * msb.
    u = x & (2**hw.input_bits - 1)
    msb = (u >> (hw.input_bits - 1)) & 1
    k_u, k_msb = (None, None) if key is None else jax.random.split(key)
    one_cycle = hw.replace(input_bits=hw.dac_bits)
    s = _codes_sum(weights, u, k_u, rows, hw) - jnp.left_shift(
        _codes_sum(weights, msb, k_msb, rows, one_cycle), hw.input_bits)
  else:
    s = _codes_sum(weights, x, key, rows, hw)
  corr = None
  if hw.signed == "offset" and dataflow != "exact":
    pad = weights.num_row_blocks * hw.ou_rows - x.shape[1]
    xsum = jnp.sum(jnp.pad(x, ((0, 0), (0, pad))).reshape(
        x.shape[0], -1, hw.ou_rows), axis=-1, dtype=jnp.int32)
    corr = jnp.left_shift(
        jnp.dot(xsum, weights.active, preferred_element_type=jnp.int32),
        hw.weight_bits - 1)
  if adc_lib.mode(hw).unit_lsb:
    return s if corr is None else s - corr
  step = weights.adc_range.astype(jnp.float32) / jnp.float32(hw.adc_max)
  y = s.astype(jnp.float32) * step if dataflow != "exact" else s.astype(
      jnp.float32)
  return y if corr is None else y - corr.astype(jnp.float32)


def apply(weights: CrossbarWeights, x, *, key=None,
          signed_inputs: bool = False):
  """Emulates ``x @ W`` on programmed crossbars.

  Args:
    weights: from :func:`prepare` or :func:`prepare_shared`.
    x: ``[..., in_features]`` unsigned ints in ``[0, 2^input_bits)``, or with
      ``signed_inputs`` two's complement ints in
      ``[-2^(input_bits-1), 2^(input_bits-1))``.
    key: ``jax.random`` key for read noise (required with read noise).
    signed_inputs: feed the two's complement bits as unsigned cycles plus
      one extra cycle of the sign bits whose output is weighted
      ``-2^input_bits`` (a negative MSB cycle): ``x = u - 2^input_bits msb``.

  Returns:
    ``[..., N]``: the digital output after ADC, shift-and-add and the signed
    mapping correction, in units of one weight LSB times one input LSB;
    int32 for ``clip``, float32 for ``scale``/``calibrated``.
  """
  hw = weights.hw
  if getattr(x, "ndim", 0) < 1 or x.shape[-1] != weights.in_features:
    raise ValueError(f"x must be [..., {weights.in_features}], got shape "
                     f"{getattr(x, 'shape', None)}")
  if signed_inputs:
    half = 2 ** (hw.input_bits - 1)
    checks.check_ints("x", x, -half, half - 1)
  else:
    checks.check_ints("x", x, 0, 2**hw.input_bits - 1)
  if _reads(weights) and key is None:
    raise ValueError("read noise needs an explicit key")
  lead = x.shape[:-1]
  x2 = jnp.asarray(x, jnp.int32).reshape(-1, weights.in_features)
  cols = weights.out_features
  if weights.table is not None:
    cols = weights.table.shape[2]
  elif weights.cells is not None:
    cols = weights.cells.shape[3]
  rows = dataflow_lib.chunk_rows(
      hw, "direct_dense" if _dense_direct(weights) else weights.dataflow,
      weights.num_row_blocks, max(cols, weights.out_features),
      reads=weights.read_std is not None)
  y = _apply(weights, x2, key if _reads(weights) else None, rows,
             bool(signed_inputs))
  return y.reshape(lead + (weights.out_features,))


def crossbar_matmul(x, w, hw: hardware.HardwareSpec, *, key=None,
                    adc_range=None,
                    device: devices_lib.Device | None = None,
                    wires: wires_lib.Wires | None = None,
                    adc: adc_lib.NonlinearADC | None = None,
                    dataflow: str = "auto", signed_inputs: bool = False):
  """Emulated ``x @ w`` on ReRAM crossbars (docs/hardware.md, docs/emulator.md).

  Args:
    x: ``[..., in_features]`` unsigned ints in ``[0, 2^input_bits)``.
    w: ``[in_features, out_features]`` signed ints in
      ``[-max_weight, max_weight]``.
    hw: the hardware.
    key: ``jax.random`` key for non-idealities (split into a programming
      and a read key).
    adc_range: per-layer ADC range for ``adc_mode='calibrated'``.
    device, wires, adc: the hardware models, see :func:`prepare`.
    dataflow: see :func:`prepare`.
    signed_inputs: two's complement inputs, see :func:`apply`.

  Returns:
    As :func:`apply`.
  """
  k_prog, k_read = (None, None) if key is None else jax.random.split(key)
  weights = prepare(w, hw, adc_range=adc_range, device=device, wires=wires,
                    adc=adc, key=k_prog, dataflow=dataflow)
  return apply(weights, x, key=k_read, signed_inputs=signed_inputs)


def shared_crossbar_matmul(x, codebook, index, hw: hardware.HardwareSpec, *,
                           out_features: int | None = None, key=None,
                           adc_range=None,
                           device: devices_lib.Device | None = None,
                           wires: wires_lib.Wires | None = None,
                           adc: adc_lib.NonlinearADC | None = None,
                           dataflow: str = "auto", signed_inputs: bool = False):
  """Index-and-add emulation of a shared layer (docs/hardware.md, docs/emulator.md).

  Each stored block is converted once per row-block and cycle and its ADC
  outputs are routed by the index table. Equal, bit for bit, to
  :func:`crossbar_matmul` on the decompressed matrix.

  Args:
    x: ``[..., in_features]`` unsigned ints, ``in_features`` within the
      last row-block.
    codebook: ``[R, Kc, bh, bw]`` signed int stored blocks.
    index: ``[R, G]`` int32, ``-1`` = pruned.
    hw: the hardware.
    out_features: columns of the crossbar matrix (default ``G * bw``).
    key, adc_range, device, wires, adc, dataflow, signed_inputs: as
      :func:`crossbar_matmul`.

  Returns:
    As :func:`apply`.
  """
  k_prog, k_read = (None, None) if key is None else jax.random.split(key)
  in_features = x.shape[-1] if getattr(x, "ndim", 0) >= 1 else None
  weights = prepare_shared(codebook, index, hw, out_features=out_features,
                           in_features=in_features, adc_range=adc_range,
                           device=device, wires=wires, adc=adc, key=k_prog,
                           dataflow=dataflow)
  return apply(weights, x, key=k_read, signed_inputs=signed_inputs)


def quantize_inputs(x, scale, hw: hardware.HardwareSpec):
  """Unsigned ``input_bits`` integers ``clip(round(x / scale), 0, max)``."""
  x = jnp.asarray(x, jnp.float32)
  top = jnp.float32(2**hw.input_bits - 1)
  return jnp.clip(jnp.round(x / jnp.asarray(scale, jnp.float32)), 0.0,
                  top).astype(jnp.int32)
