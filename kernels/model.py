"""Whole-model emulation of Flax Linen and NNX models on crossbars.

Shared machinery; the front door is :mod:`rsjax.kernels.api`
(``rk.calibrate``, ``rk.program``, ``rk.emulate``), which hands a Linen
model to :mod:`rsjax.kernels._linen` and an NNX one to
:mod:`rsjax.kernels._nnx`.

Two steps, without rewriting the model:

1. Calibration runs the float model on a few batches (eagerly) and records,
   for every ``Dense``/``Conv`` (Linen) or ``Linear``/``Conv`` (NNX) whose
   kernel path matches ``rules`` (``re.search`` on
   ``'params/<module path>/kernel'`` for Linen, ``'<attribute path>/kernel'``
   for NNX): the largest input seen (the input scale is
   ``max / (2^input_bits - 1)``), whether inputs go negative, and a
   ``BatchNorm`` that directly consumes the layer's output, into a
   hardware-free :class:`Calibration`. Any other layer with a kernel (an
   ``Einsum``, a ``DenseGeneral``...) would stay digital: it is reported
   (:class:`DigitalLayerWarning`) or refused (``on_unmapped='error'``).
   :func:`program` then programs it on a ``HardwareSpec``: the BatchNorm is
   folded into the layer (:func:`rsjax.fold_batchnorm`) and skipped at
   emulation time, weights are quantized to ``weight_bits`` (per layer or
   per column) and programmed with :func:`rsjax.kernels.prepare`, so the
   per-weight work is done once.
2. Emulation (through ``flax.linen.intercept_methods`` for Linen, a copy of
   the model with the layers swapped for emulated ones for NNX) then runs
   inference; both work under ``jax.jit``.

A layer's inputs are quantized to unsigned ``input_bits`` integers with its
calibrated scale (values above the calibrated maximum saturate). A layer fed
signed inputs (e.g. normalised pixels) is emulated as two unsigned passes,
``f(relu(x)) - f(relu(-x))`` (``signed_scheme='two_pass'``, the default), or
in two's complement with a negative MSB cycle (``'twos_complement'``).
Biases are added digitally in float. Models must run in inference mode
(``train=False`` / ``model.eval()``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any
import warnings

from flax import struct
import jax
import jax.numpy as jnp

from rsjax._src import batchnorm
from rsjax._src import export
from rsjax._src import hardware
from rsjax._src import kmeans
from rsjax._src import lowering
from rsjax._src import quantize
from rsjax.kernels import adc as adc_lib
from rsjax.kernels import calibration as calibration_lib
from rsjax.kernels import conv as conv_lib
from rsjax.kernels import crossbar


@struct.dataclass
class EmulatedLayer:
  """One emulated layer (a pytree).

  Attributes:
    weights: the programmed crossbar matrix (BatchNorm folded in).
    w_scale: weight scale, scalar or ``[N]``.
    x_scale: input scale, a scalar.
    bias: ``[N]`` float32 digital bias.
    hw: the hardware.
    signed: whether the layer's inputs go negative.
    conv: ``(kernel_size, strides, padding, dilation)`` for a conv, else None.
    folded: the path of the folded BatchNorm, or None.
    signed_scheme: for signed inputs, ``'two_pass'`` (``f(relu(x)) -
      f(relu(-x))``, full resolution per sign, twice the cycles) or
      ``'twos_complement'`` (one pass plus a negative MSB cycle, one bit
      less of magnitude).
  """

  weights: crossbar.CrossbarWeights
  w_scale: jax.Array
  x_scale: jax.Array
  bias: jax.Array
  hw: hardware.HardwareSpec = struct.field(pytree_node=False)
  signed: bool = struct.field(pytree_node=False)
  conv: tuple | None = struct.field(pytree_node=False)
  folded: str | None = struct.field(pytree_node=False, default=None)
  signed_scheme: str = struct.field(pytree_node=False, default="two_pass")


def _hashable_padding(padding):
  if isinstance(padding, str):
    return padding
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def conv_config(conv) -> tuple:
  """``(kernel_size, strides, padding, dilation)`` of a Linen or NNX Conv.

  Both Flax APIs name the attributes alike.

  Raises:
    ValueError: for what the emulator does not support: grouped or
      input-dilated convolutions, padding other than SAME, VALID or pairs.
  """
  padding, dilation = conv.padding, conv.kernel_dilation
  if conv.feature_group_count != 1:
    raise ValueError("grouped convolutions are not supported by the emulator")
  input_dilation = conv.input_dilation
  if input_dilation not in (None, 1) and any(
      d != 1 for d in (input_dilation if not isinstance(input_dilation, int)
                       else (input_dilation,))):
    raise ValueError("input dilation is not supported by the emulator")
  if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID"):
    raise ValueError(f"padding {padding!r} is not supported by the emulator")
  return (tuple(conv.kernel_size),
          conv.strides if conv.strides is not None else 1,
          _hashable_padding(padding), dilation if dilation is not None else 1)


# Each of these is one compiled program per layer shape: op by op, they
# were most of a model's first programming.
@functools.partial(jax.jit, static_argnames=("epsilon",))
def _fold_compiled(kernel, bias, stats, *, epsilon):
  n = kernel.shape[-1]
  matrix = jnp.asarray(kernel, jnp.float32).reshape(-1, n)
  bias = (jnp.zeros((n,), jnp.float32) if bias is None
          else jnp.asarray(bias, jnp.float32))
  if stats is not None:
    matrix, bias = batchnorm.fold_batchnorm(matrix, bias, **stats,
                                            epsilon=epsilon)
  return matrix, bias


def _folded(kernel, bias, bn):
  """The crossbar matrix and bias with a BatchNorm (or None) folded in.

  One compiled program; the BatchNorm's epsilon is a static number.
  """
  if bn is None:
    return _fold_compiled(kernel, bias, None, epsilon=None)
  stats = {k: v for k, v in bn.items() if k != "epsilon"}
  return _fold_compiled(kernel, bias, stats, epsilon=bn["epsilon"])


_quantized = jax.jit(quantize.quantize_weights, static_argnames=("bits",
                                                                 "per"))


@functools.partial(jax.jit, static_argnames=("bits", "shape"))
def _quantized_shared(codebook, index, *, bits, shape):
  """A shared layer's integer codebook (one layer scale: a stored block
  serves several output columns), its scale and the decompressed matrix."""
  qcb, scale = quantize.quantize_weights(codebook, bits, per="layer")
  return qcb, scale, lowering.from_ous(kmeans.decompress(qcb, index), shape)


def _layer_name(path: str) -> str:
  """``'params/a/b/kernel'`` or ``'a/b'`` -> ``'a/b'``."""
  path = path[len("params/"):] if path.startswith("params/") else path
  return path[:-len("/kernel")] if path.endswith("/kernel") else path


def last_axis(v, ndim):
  """``v`` (scalar or ``[N]``) shaped to broadcast over ``ndim`` dims."""
  return v if v.ndim == 0 else v.reshape((1,) * (ndim - 1) + (-1,))


def run_layer(layer: EmulatedLayer, x, key=None):
  """The emulated layer on float inputs ``x`` (float32 out)."""
  x = jnp.asarray(x, jnp.float32)
  unbatched = layer.conv is not None and x.ndim == 3
  if unbatched:
    x = x[None]

  def one(xpos, pass_key):
    q = crossbar.quantize_inputs(xpos, layer.x_scale, layer.hw)
    if layer.conv is None:
      y = crossbar.apply(layer.weights, q, key=pass_key)
    else:
      y = conv_lib.conv_apply(layer.weights, q, *layer.conv, key=pass_key)
    scale = layer.x_scale * layer.w_scale
    return y.astype(jnp.float32) * last_axis(scale, y.ndim)

  keys = (None, None) if key is None else jax.random.split(key)
  if layer.signed and layer.signed_scheme == "twos_complement":
    half = float(2 ** (layer.hw.input_bits - 1))
    q = jnp.clip(jnp.round(x / layer.x_scale), -half, half - 1).astype(
        jnp.int32)
    if layer.conv is None:
      y = crossbar.apply(layer.weights, q, key=keys[0], signed_inputs=True)
    else:
      y = conv_lib.conv_apply(layer.weights, q, *layer.conv, key=keys[0],
                              signed_inputs=True)
    y = y.astype(jnp.float32) * last_axis(layer.x_scale * layer.w_scale,
                                           y.ndim)
  else:
    y = one(jnp.maximum(x, 0.0), keys[0])
    if layer.signed:
      y = y - one(jnp.maximum(-x, 0.0), keys[1])
  y = y + last_axis(layer.bias, y.ndim)
  return y[0] if unbatched else y


# Inputs kept per layer for adc_mode='calibrated': rows of a dense layer,
# images of a conv (calibrate_adc_range samples its max_rows patch rows
# across all of them).
_SAMPLE_ROWS = 256


class DigitalLayerWarning(UserWarning):
  """A layer with a kernel that the emulator does not map stays digital."""


ON_UNMAPPED = ("warn", "error", "ignore")


class Stats:
  """Running input statistics of the layers (calibration only).

  A front end reports the call of each layer whose kernel path ``rules``
  match (:meth:`matches`; :meth:`layer`), each BatchNorm's
  (:meth:`batchnorm`) and each matching layer with a kernel that it cannot
  map (:meth:`unmapped`) while :meth:`record` runs the model. ``kinds``
  names the layer classes it maps, for the messages.
  """

  def __init__(self, rules: str, kinds: str, on_unmapped: str = "warn"):
    if on_unmapped not in ON_UNMAPPED:
      raise ValueError(f"on_unmapped must be one of {ON_UNMAPPED}, got "
                       f"{on_unmapped!r}")
    self.rules = rules
    self.kinds = kinds
    self.on_unmapped = on_unmapped
    self._regex = re.compile(rules)
    self.layers: dict[str, dict[str, Any]] = {}
    self.produced: dict[int, str] = {}
    self.alive: list[Any] = []
    self.bn: dict[str, tuple[str, dict[str, Any]]] = {}
    self.digital: dict[str, str] = {}

  def matches(self, kernel_path: str) -> bool:
    """Whether the layer of ``kernel_path`` is emulated (``re.search``)."""
    return self._regex.search(kernel_path) is not None

  def layer(self, name, x, call, *, kernel, bias, conv=None):
    """Records the input ``x`` of layer ``name`` and returns ``call(x)``.

    Args:
      name: the layer's path.
      x: its input.
      call: runs the layer (the float model's own call).
      kernel: its kernel.
      bias: its bias, or None.
      conv: the Conv module (for :func:`conv_config`), None for a dense
        layer.
    """
    if name not in self.layers:
      # A copy of the first rows only: enough for calibrate_adc_range
      # without holding a whole calibration batch, or a buffer the caller
      # may reuse, for the calibration's lifetime.
      batched = x.ndim == 4 if conv is not None else x.ndim >= 2
      sample = x[:_SAMPLE_ROWS] if batched else x
      self.layers[name] = {
          "max": 0.0, "min": 0.0, "sample": jnp.array(sample, copy=True),
          "kernel": kernel, "bias": bias,
          "conv": None if conv is None else conv_config(conv)}
    stat = self.layers[name]
    stat["max"] = max(stat["max"], float(jnp.max(x)), float(-jnp.min(x)))
    stat["min"] = min(stat["min"], float(jnp.min(x)))
    y = call(x)
    # Ids identify the very array a BatchNorm consumes; keep it alive so the
    # id is not reused within the batch.
    self.produced[id(y)] = name
    self.alive.append(y)
    return y

  def batchnorm(self, x, bn_path, **stats):
    """Notes a BatchNorm on ``x``: folded if ``x`` is a layer's output.

    Args:
      x: the BatchNorm's input.
      bn_path: its path.
      **stats: its ``mean``, ``var``, ``scale``, ``offset`` and ``epsilon``
        (the keywords of :func:`rsjax.fold_batchnorm`).
    """
    name = self.produced.get(id(x))
    if name is not None:
      self.bn[name] = (bn_path, stats)

  def unmapped(self, name: str, kind: str, kernel_path: str):
    """Notes layer ``name``, a ``kind`` with a kernel the emulator can't map.

    A layer whose ``kernel_path`` the rules exclude is left digital on
    purpose and not noted.
    """
    if self.matches(kernel_path):
      self.digital.setdefault(name, kind)

  def _report_unmapped(self):
    """Warns of (or, on request, refuses) the layers that stay digital."""
    if not self.digital or self.on_unmapped == "ignore":
      return
    names = ", ".join(f"{k} ({v})" for k, v in sorted(self.digital.items()))
    message = (f"these layers have a kernel but are not {self.kinds} "
               f"layers, so the emulator leaves them digital: {names}; "
               "exclude them with rules, or pass on_unmapped='ignore' to "
               "keep them digital without this message")
    if self.on_unmapped == "error":
      raise ValueError(message)
    warnings.warn(message, DigitalLayerWarning, stacklevel=5)

  def record(self, batches, run) -> Calibration:
    """Runs ``run(batch)`` on every batch; the finished :class:`Calibration`.

    The layers left digital are reported after the first batch (which
    calls every layer), before the rest run.

    Raises:
      ValueError: if no layer was recorded, or a layer stays digital and
        ``on_unmapped='error'``.
    """
    for i, batch in enumerate(batches):
      self.produced.clear()
      self.alive.clear()
      run(batch)
      if i == 0:
        self._report_unmapped()
    if not self.layers:
      raise ValueError(f"no {self.kinds} layer matched the rules "
                       f"{self.rules!r}")
    return Calibration(dict(self.layers), dict(self.bn))


@dataclasses.dataclass(frozen=True)
class Calibration:
  """What calibration recorded of a model (independent of the hardware).

  Attributes:
    layers: ``{layer path: stats}`` of the emulated layers: the largest input
      magnitude (``max``), the smallest input (``min``; negative means
      signed inputs), a copy of the first 256 entries of the first
      calibration batch's input (``sample``, for ``adc_mode='calibrated'``),
      ``kernel``, ``bias`` and ``conv``. Read-only by convention:
      :func:`program` reads it every time it programs the model.
    bn: ``{layer path: (BatchNorm path, statistics)}`` of the BatchNorms
      that directly consume a layer's output; the statistics are the
      ``mean``, ``var``, ``scale``, ``offset`` and ``epsilon`` keywords of
      :func:`rsjax.fold_batchnorm`.
  """

  layers: dict[str, dict[str, Any]]
  bn: dict[str, tuple[str, dict[str, Any]]]


def layer_keys(layers, key) -> dict[str, Any]:
  """Each emulated layer's read-noise key (``key`` folded with its rank)."""
  return {name: None if key is None else jax.random.fold_in(key, i)
          for i, name in enumerate(sorted(layers))}


def folded_batchnorms(layers) -> set[str]:
  """The paths of the BatchNorms folded into ``layers`` (skipped when run)."""
  return {layer.folded for layer in layers.values()
          if layer.folded is not None}


def adc_range_from(stats, qw, hw, x_scale):
  """The calibrated ADC range from the first calibration batch."""
  x = jnp.maximum(jnp.asarray(stats["sample"], jnp.float32), 0.0)
  if stats.get("conv") is not None:
    x = conv_lib.im2col(x if x.ndim == 4 else x[None], *stats["conv"])
  q = crossbar.quantize_inputs(x, x_scale, hw)
  return calibration_lib.calibrate_adc_range(q, qw, hw)


SIGNED_SCHEMES = ("two_pass", "twos_complement")


def _check_options(**options):
  """Raises for a ``per``, ``dataflow`` or ``signed_scheme`` out of range."""
  choices = {"per": quantize.PER, "dataflow": crossbar.DATAFLOWS,
             "signed_scheme": SIGNED_SCHEMES}
  for name, value in options.items():
    if name in choices and value not in choices[name]:
      raise ValueError(f"{name} must be one of {choices[name]}, got "
                       f"{value!r}")


def _trained_calibration(compressed, calibration):
  """``(compressed layers, HwCalibration or None)`` of program's arguments.

  A :class:`rsjax.CompressedModel` brings its layers and, unless
  ``calibration`` says otherwise, the calibration saved with it.
  """
  if isinstance(compressed, export.CompressedModel):
    if calibration is None:
      calibration = compressed.calibration
    compressed = compressed.layers
  if isinstance(calibration, str):
    if calibration != "data":
      raise ValueError(f"calibration must be a HwCalibration (or its "
                       f"to_dict()), 'data' or None, got {calibration!r}")
    calibration = None
  if calibration is not None:
    calibration = calibration_lib.HwCalibration.from_dict(calibration)
  return compressed, calibration


def _check_trained(calibration, calib, hw, *, per, fold_bn, signed_scheme):
  """Raises where a training's calibration does not fit what is programmed."""
  if calibration.hw != hw:
    differ = {f.name: (getattr(calibration.hw, f.name), getattr(hw, f.name))
              for f in dataclasses.fields(hw)
              if getattr(calibration.hw, f.name) != getattr(hw, f.name)}
    raise ValueError(
        f"the calibration was made for other hardware (field: (calibration, "
        f"hw)) {differ}: program with its hardware, or calibrate afresh "
        "from the batches with calibration='data'")
  if calibration.per != per:
    raise ValueError(f"the calibration was made with per="
                     f"{calibration.per!r}, not per={per!r}")
  if fold_bn:
    raise ValueError("the calibration's scales and ranges are those of the "
                     "layers as trained, their BatchNorm digital: leave "
                     "fold_bn unset (or False)")
  if signed_scheme != "two_pass":
    raise ValueError("a training's calibration is for signed_scheme="
                     "'two_pass' (as hardware-aware training feeds signed "
                     "inputs)")
  if set(calibration.x_scales) != set(calib.layers):
    raise ValueError(
        f"the calibration holds the layers {sorted(calibration.x_scales)}, "
        f"the emulated ones are {sorted(calib.layers)}: emulate the layers "
        "it was trained with (the same rules), or calibration='data'")


def program(calib: Calibration, hw: hardware.HardwareSpec, *,
            per: str = "layer", device=None, wires=None, adc=None, key=None,
            dataflow: str = "auto", fold_bn: bool | None = None,
            compressed=None, calibration=None,
            signed_scheme: str = "two_pass", index_and_add: bool = True
            ) -> dict[str, EmulatedLayer]:
  """Programs every calibrated layer on ``hw`` (shared ones from codebooks).

  The second step after :func:`rsjax.kernels.calibrate`: one calibration
  programmed many times (other hardware, fault seeds) gives the same layers
  as calibrating afresh each time, without running the model again.

  Args:
    calib: from :func:`rsjax.kernels.calibrate`.
    hw: the hardware.
    per: weight scale per ``'layer'`` or ``'column'``.
    device: the ReRAM device (:class:`rsjax.kernels.Device`), None for ideal
      cells.
    wires: wire resistance (:class:`rsjax.kernels.Wires`), None for ideal
      wires.
    adc: the converter's non-linearity (:class:`rsjax.kernels.NonlinearADC`),
      None for ideal converters.
    key: ``jax.random`` key for the programming non-idealities (one per
      layer is folded from it).
    dataflow: as :func:`rsjax.kernels.prepare`, for every layer.
    fold_bn: fold a BatchNorm that directly follows a layer into it
      (:func:`rsjax.fold_batchnorm`); False keeps it digital. Unset: folded,
      except with a training's ``calibration`` (digital, as trained).
    compressed: ``{path: rsjax.CompressedLayer}`` of shared layers (module
      or attribute path, or ``'params/<path>/kernel'``), or the
      :class:`rsjax.CompressedModel` :func:`rsjax.load_compressed` returns
      (its layers, and its saved calibration unless ``calibration`` says
      otherwise): these run the index-and-add dataflow on their codebook,
      quantized with one layer scale, and index table (the model's kernel
      is not used); their BatchNorm stays digital. Calibrate with the
      decompressed kernels in the model, so that downstream input scales
      see the compressed model's activations.
    calibration: the input scales and ADC ranges to program with, instead
      of those from ``calib``'s data: a
      :class:`rsjax.kernels.HwCalibration` (or its ``to_dict()``), the one a
      hardware-aware training ran with; ``'data'`` calibrates from
      ``calib`` even where ``compressed`` brings a saved one. It must be
      for ``hw`` and ``per`` and name the emulated layers; BatchNorm stays
      digital, as in the training.
    signed_scheme: how layers with negative inputs are fed: ``'two_pass'``
      or ``'twos_complement'`` (see :class:`EmulatedLayer`).
    index_and_add: False programs the ``compressed`` layers densely instead:
      the decompressed matrix, quantized exactly as for index-and-add (the
      codebook, one layer scale) and with its BatchNorm kept digital, so the
      two layouts hold the same numbers and differ only in the dataflow (and
      the hardware need not be the one the layer was shared for).

  Returns:
    ``{layer path: EmulatedLayer}`` for :func:`rsjax.kernels.emulate`.

  Raises:
    TypeError: if ``calib`` is not a :class:`Calibration`.
    ValueError: for an unknown ``per``, ``dataflow`` or ``signed_scheme``,
      or a compressed layer that is not calibrated or has another shape.
  """
  if not isinstance(calib, Calibration):
    raise TypeError(f"calib must be a rsjax.kernels.Calibration (from "
                    f"rsjax.kernels.calibrate), got "
                    f"{type(calib).__name__}")
  _check_options(per=per, dataflow=dataflow, signed_scheme=signed_scheme)
  compressed, calibration = _trained_calibration(compressed, calibration)
  if calibration is not None:
    _check_trained(calibration, calib, hw, per=per, fold_bn=fold_bn,
                   signed_scheme=signed_scheme)
  fold_bn = calibration is None if fold_bn is None else fold_bn
  phys = crossbar.physics(hw, device=device, wires=wires, adc_model=adc)
  models = phys.kwargs()
  compressed = {_layer_name(k): v for k, v in (compressed or {}).items()}
  unknown = sorted(set(compressed) - set(calib.layers))
  if unknown:
    raise ValueError(f"compressed layers {unknown} are not among the "
                     f"emulated layers {sorted(calib.layers)}")
  top = float(2**hw.input_bits - 1)
  layers = {}
  for i, (name, st) in enumerate(sorted(calib.layers.items())):
    shared = compressed.get(name)
    # A shared layer keeps its BatchNorm digital: folding would scale the
    # columns of a shared block differently and unshare it.
    bn_path, bn = ((None, None) if not fold_bn or shared is not None
                   else calib.bn.get(name, (None, None)))
    matrix, bias = _folded(st["kernel"], st["bias"], bn)
    if calibration is not None:
      signed = name in calibration.signed
      x_scale = calibration.x_scales[name]
    else:
      signed = st["min"] < 0
      levels = (2 ** (hw.input_bits - 1) - 1
                if signed and signed_scheme == "twos_complement" else top)
      x_scale = jnp.float32(st["max"] / levels if st["max"] > 0 else 1.0)
    if shared is None:
      qw, w_scale = _quantized(matrix, bits=hw.weight_bits, per=per)
    else:
      if tuple(shared.kernel_shape) != tuple(st["kernel"].shape):
        raise ValueError(f"compressed layer {name} has kernel shape "
                         f"{shared.kernel_shape}, the model's is "
                         f"{tuple(st['kernel'].shape)}")
      qcb, w_scale, qw = _quantized_shared(shared.codebook, shared.index,
                                           bits=hw.weight_bits,
                                           shape=matrix.shape)
    if not adc_lib.mode(hw).calibrated:
      adc_range = None
    elif calibration is not None:
      adc_range = calibration.adc_ranges[name]
    else:
      adc_range = adc_range_from(st, qw, hw, x_scale)
    layer_key = None if key is None else jax.random.fold_in(key, i)
    if shared is None or not index_and_add:
      weights = crossbar.prepare(qw, hw, adc_range=adc_range, **models,
                                 key=layer_key, dataflow=dataflow)
    else:
      weights = crossbar.prepare_shared(
          qcb, shared.index, hw, in_features=matrix.shape[0],
          out_features=matrix.shape[1], adc_range=adc_range, **models,
          key=layer_key, dataflow=dataflow)
    layers[name] = EmulatedLayer(weights, w_scale, x_scale, bias, hw, signed,
                                 st.get("conv"), bn_path, signed_scheme)
  return layers
