"""The front door for whole models: one function per step, Linen or NNX.

Each function takes a Flax Linen module (with ``variables=``, as
``model.apply`` needs them) or an NNX module (which holds its own; no
``variables``) and hands it to :mod:`rsjax.kernels._linen` or
:mod:`rsjax.kernels._nnx`:

* inference: :func:`calibrate` (hardware-free statistics), then
  :func:`rsjax.kernels.program` (on a ``HardwareSpec``), then
  :func:`emulate` (the model on the programmed layers);
* hardware-aware training: :func:`calibrate_hwaware`, then :func:`hwaware`
  (the model with its current weights emulated, in the training step).

:func:`emulate` and :func:`hwaware` both return the model to call as the
model is called: ``emulated(x, **call_kwargs)``, where a Linen model's
keywords go to ``model.apply`` (``train=False``, ``mutable=...``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from flax import linen as nn
from flax import nnx
from flax import struct

from rsjax._src import hardware
from rsjax.kernels import _linen
from rsjax.kernels import _nnx
from rsjax.kernels import training as hwaware_lib
from rsjax.kernels import model as model_lib


def _is_linen(model, variables, caller: str) -> bool:
  """Whether ``model`` is Linen (else NNX); raises for a wrong pairing.

  Raises:
    TypeError: for a model that is neither, a Linen model without
      ``variables`` or an NNX model with them.
  """
  if isinstance(model, nn.Module):
    if variables is None:
      raise TypeError(f"{caller}: a Linen model runs on its variables: pass "
                      f"them as {caller}(model, ..., variables=variables)")
    return True
  if isinstance(model, nnx.Module):
    if variables is not None:
      raise TypeError(f"{caller}: an NNX model holds its own variables, so "
                      "variables= is for Linen models only: leave it unset "
                      "(nnx.update the model to give it other weights)")
    return False
  raise TypeError(f"{caller} takes a flax.linen.Module or a flax.nnx.Module,"
                  f" got {type(model).__name__}")


def calibrate(model, batches: Iterable[Any], *, variables=None,
              rules: str = r".*", on_unmapped: str = "warn", **call_kwargs
              ) -> model_lib.Calibration:
  """Runs the float model on a few batches and records its crossbar layers.

  Eager (not under ``jit``). Every ``Dense``/``Conv`` (Linen) or
  ``Linear``/``Conv`` (NNX) whose kernel path matches ``rules`` is
  recorded: its largest input, whether inputs go negative, a sample of its
  first input (for ``adc_mode='calibrated'``), its kernel and bias, and a
  BatchNorm that directly consumes its output. The result is
  hardware-free: :func:`rsjax.kernels.program` programs it on any
  hardware, as often as needed. An NNX model is cloned, not modified.

  Args:
    model: a Linen module or an NNX module (in eval mode).
    batches: a few input batches (the first positional input of the model).
    variables: a Linen model's variables (``params``, ``batch_stats``...);
      None for an NNX model.
    rules: ``re.search`` over the kernel paths, ``'params/<module
      path>/kernel'`` (Linen) or ``'<attribute path>/kernel'`` (NNX).
    on_unmapped: what to do about a matching layer with a kernel that the
      emulator does not map (an ``Einsum``, ``DenseGeneral``,
      ``LinearGeneral``, ``ConvTranspose``, a custom module with a
      ``kernel``), which would stay digital: ``'warn'``
      (:class:`DigitalLayerWarning`, naming each), ``'error'`` (a
      ``ValueError``) or ``'ignore'``.
    **call_kwargs: passed to the model's call (Linen: ``model.apply``, e.g.
      ``train=False``).

  Returns:
    The :class:`rsjax.kernels.Calibration`.

  Raises:
    TypeError: for a model that is not Linen or NNX, or ``variables``
      missing (Linen) or given (NNX).
    ValueError: if no layer matched ``rules``, for a layer the emulator
      refuses (a grouped convolution) or, with ``on_unmapped='error'``, a
      layer that would stay digital.
  """
  if _is_linen(model, variables, "calibrate"):
    return _linen.calibrate(model, variables, batches, rules=rules,
                            on_unmapped=on_unmapped, **call_kwargs)
  return _nnx.calibrate(model, batches, rules=rules, on_unmapped=on_unmapped,
                        **call_kwargs)


# Identity equality: jax.jit(emulated) hashes the callable, and its fields
# (dicts of arrays) have no hash.
@struct.dataclass(eq=False)
class _EmulatedLinen:
  """A Linen model on programmed layers, called like ``model.apply``.

  A pytree (variables, layers and key are its leaves), so that a jitted
  function taking it as an argument compiles once for every programming of
  the same hardware.
  """

  model: nn.Module = struct.field(pytree_node=False)
  variables: Any
  layers: dict[str, model_lib.EmulatedLayer]
  key: Any = None

  def __call__(self, x, **apply_kwargs):
    return _linen.emulate(self.model, self.variables, x, self.layers,
                          key=self.key, **apply_kwargs)


def emulate(model, layers: dict[str, model_lib.EmulatedLayer], *,
            variables=None, key=None) -> Callable[..., Any]:
  """The model with ``layers`` on the emulator, to call like the model.

  ``emulate(model, layers, variables=v)(x, train=False)`` is
  ``model.apply(v, x, train=False)`` (Linen) and ``emulate(model,
  layers)(x)`` is ``model(x)`` (NNX), with every programmed layer run on
  its crossbars and every folded BatchNorm skipped. The result is a pytree
  (for NNX, a copy of the model with those layers swapped): jit it
  directly, ``jax.jit(emulated)``, or pass it to a jitted function,
  ``jax.jit(lambda m, x: m(x))(emulated, x)``, which compiles once for
  every programming of the same hardware (e.g. all fault seeds).

  Args:
    model: the Linen or NNX model that was calibrated.
    layers: ``{path: EmulatedLayer}`` from :func:`rsjax.kernels.program`.
    variables: a Linen model's variables; None for an NNX model.
    key: read-noise key (one per layer is folded from it); None without
      read noise.

  Returns:
    The emulated model, a callable pytree.

  Raises:
    TypeError: for a model that is not Linen or NNX, ``variables`` missing
      (Linen) or given (NNX), or ``layers`` that are not programmed layers.
  """
  if isinstance(layers, model_lib.Calibration):
    raise TypeError("emulate takes programmed layers: program the "
                    "calibration first, rk.program(calib, hw)")
  if not isinstance(layers, dict) or not all(
      isinstance(v, model_lib.EmulatedLayer) for v in layers.values()):
    raise TypeError(f"layers must be the {{path: EmulatedLayer}} that "
                    f"rk.program returns, got {type(layers).__name__}")
  if _is_linen(model, variables, "emulate"):
    return _EmulatedLinen(model, variables, layers, key)
  return _nnx.emulate(model, layers, key=key)


def calibrate_hwaware(model, batches: Iterable[Any],
                      hw: hardware.HardwareSpec, *, variables=None,
                      rules: str = r".*", previous=None,
                      scales: str = "running_max", per: str = "layer",
                      on_unmapped: str = "warn", **call_kwargs
                      ) -> hwaware_lib.HwCalibration:
  """Input scales (and ADC ranges) of a model's layers, for :func:`hwaware`.

  Eager (outside ``jit``), like :func:`calibrate`; call it again every few
  steps with ``previous=`` to re-calibrate on the current weights.

  Args:
    model: a Linen or NNX model (NNX in eval mode).
    batches: a few input batches.
    hw: the hardware (``adc_mode='calibrated'`` also calibrates ranges:
      :func:`rsjax.kernels.calibrate_adc_range` on the first batch).
    variables: a Linen model's variables (the params the model trains on,
      e.g. ``rsjax.training_params`` of the shared model); None for NNX.
    rules: as :func:`calibrate`.
    previous: the calibration being updated, or None.
    scales: with ``previous``, ``'running_max'`` raises its input scales to
      the largest input seen, so inputs never saturate for lack of range;
      ``'fixed'`` keeps them (only the ADC ranges follow the current
      weights): inputs that grow past a kept scale saturate, which a
      warning names (layer, kept and needed scale) and :func:`hwaware`'s
      ``saturation`` shows.
    per: weight scale, ``'layer'`` (shared layers need it) or ``'column'``.
    on_unmapped: as :func:`calibrate`.
    **call_kwargs: passed to the model's call (Linen: ``model.apply``).

  Returns:
    The :class:`rsjax.kernels.HwCalibration`.

  Raises:
    TypeError, ValueError: as :func:`calibrate`; ValueError for a
      ``scales`` out of range.
  """
  calib = calibrate(model, batches, variables=variables, rules=rules,
                    on_unmapped=on_unmapped, **call_kwargs)
  return hwaware_lib.from_calibration(calib, hw, previous=previous,
                                      scales=scales, per=per)


def hwaware(model, hw: hardware.HardwareSpec,
            calib: hwaware_lib.HwCalibration, *, variables=None, key=None,
            device=None, wires=None, adc=None, per: str = "layer",
            backward: str = "ste",
            saturation: dict | None = None) -> Callable[..., Any]:
  """The model with its calibrated layers trained on ``hw``, to call.

  Inside the (jitted) loss: ``rk.hwaware(model, hw, calib, variables={
  'params': p}, key=k)(x, train=True)`` for Linen (what ``model.apply``
  returns, ``mutable=`` included; gradients reach ``p``), ``rk.hwaware(
  model, hw, calib, key=k)(x)`` for NNX (the layers are swapped in place
  for the call and restored, so gradients reach the model's own params and
  BatchNorm statistics update). Each calibrated layer runs
  :func:`rsjax.kernels.hwaware_layer` on its current weights: emulated
  forward, straight-through backward.

  Args:
    model: the Linen or NNX model.
    hw: the hardware (``adc_bits``/``adc_mode`` may differ from the one the
      model was compressed for, not the block shape of shared layers).
    calib: from :func:`calibrate_hwaware`.
    variables: a Linen model's variables (``params`` differentiable); None
      for NNX.
    key: this step's key for the non-idealities (one per layer is folded).
    device, wires, adc: the hardware models, as
      :func:`rsjax.kernels.hwaware_layer`: the device's random effects are
      drawn anew every step.
    per: weight scale (``'layer'`` for shared layers).
    backward: ``'ste'`` or ``'saturation'`` (see
      :func:`rsjax.kernels.hwaware_layer`).
    saturation: a dict that each call fills with ``{layer path: fraction
      of its inputs beyond its input range}`` (traced): return it from the
      step as a metric, as a fixed input scale that no longer fits the
      inputs shows there first.

  Returns:
    A function ``f(x, **call_kwargs)`` that runs the model (Linen: the
    keywords go to ``model.apply``).

  Raises:
    TypeError: as :func:`emulate`, or a ``calib`` that is not an
      ``HwCalibration``.
    ValueError: for a ``backward`` out of range, or a calibration made for
      another ``per`` or without the ADC ranges ``hw`` needs.
  """
  hwaware_lib.check_training(calib, hw, backward, per)
  options = dict(key=key, device=device, wires=wires, adc=adc, per=per,
                 backward=backward, saturation=saturation)
  if _is_linen(model, variables, "hwaware"):
    return lambda x, **apply_kwargs: _linen.hwaware_apply(
        model, variables, x, hw, calib, **options, **apply_kwargs)

  def run(x, **call_kwargs):
    with _nnx.hwaware(model, hw, calib, **options) as swapped:
      return swapped(x, **call_kwargs)

  return run
