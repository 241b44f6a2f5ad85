"""The real array of a run: ``config.array`` to the emulator's models.

``config.array`` (defaults: the ideal crossbar) describes the device, the
wires and the ADC's non-linearity that every emulated evaluation of the run
uses (the evaluation, the ADC sweep, the ``hwaware`` stage's before and
after) and that the ``hwaware`` stage trains against, its random effects
drawn anew every step (docs/devices.md, docs/experiments.md).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections

import rsjax
from rsjax import kernels as rk


def defaults() -> ml_collections.ConfigDict:
  """``config.array``: every field at its ideal value."""
  a = ml_collections.ConfigDict()
  # Gmax / Gmin (> 1); 0 is an infinite ratio (Gmin = 0).
  a.on_off_ratio = 0.0
  # Programming error: '' none, 'independent' / 'proportional' / 'inverse'
  # (program_sigma, rk.Programming), 'wan2022' (measured ReRAM, Wan et al.
  # 2022, top level at g_max_us).
  a.programming = ""
  a.program_sigma = 0.0
  a.g_max_us = 39.26
  a.stuck_at_0 = 0.0
  a.stuck_at_1 = 0.0
  # Drift to drift_t seconds after programming (0: none), nu linear in G
  # from drift_nu_min (G = 0) to drift_nu_max (Gmax), spread drift_nu_std.
  a.drift_t = 0.0
  a.drift_t0 = 1.0
  a.drift_nu_min = 0.0
  a.drift_nu_max = 0.0
  a.drift_nu_std = 0.0
  a.drift_compensate = False
  # Read noise per cell, fresh on every read (forces the direct dataflow).
  a.read_sigma = 0.0
  a.read_form = "independent"
  # sinh I-V nonlinearity, k = V_read / V0 (0: linear).
  a.iv_k = 0.0
  # Wire segments and terminals, in units of Rmin = 1 / Gmax.
  a.r_row = 0.0
  a.r_col = 0.0
  a.r_row_terminal = 0.0
  a.r_col_terminal = 0.0
  a.placement = True
  # ADC DNL (normal, LSB) and offset, one converter drawn per run.
  a.adc_dnl_sigma = 0.0
  a.adc_offset_sigma = 0.0
  return a


def _device(a) -> rk.Device | None:
  if a.programming == "wan2022":
    programming = rk.WanRRAM2022(a.g_max_us)
  elif a.programming or a.program_sigma:
    # rk.Programming checks the form: also '' under a program_sigma.
    try:
      programming = rk.Programming(a.program_sigma, a.programming)
    except ValueError as e:
      raise ValueError(f"array.programming ('wan2022' or the form of "
                       f"program_sigma's error): {e}") from None
  else:
    programming = None
  faults = (rk.StuckAt(a.stuck_at_0, a.stuck_at_1)
            if a.stuck_at_0 or a.stuck_at_1 else None)
  drift = (rk.Drift(a.drift_t, a.drift_t0, a.drift_nu_min, a.drift_nu_max,
                    a.drift_nu_std, a.drift_compensate)
           if a.drift_t else None)
  read = rk.ReadNoise(a.read_sigma, a.read_form) if a.read_sigma else None
  iv = rk.SinhIV(a.iv_k) if a.iv_k else None
  ratio = a.on_off_ratio or math.inf
  device = rk.Device(ratio, programming, faults, drift, read, iv)
  return None if device == rk.Device() else device


def models(a: ml_collections.ConfigDict, hw: rsjax.HardwareSpec, key, *,
           adc: bool = True) -> dict[str, Any]:
  """``{'device', 'wires', 'adc'}`` keywords for the emulator.

  Args:
    a: ``config.array``.
    hw: the hardware the models are for (the ADC's resolution).
    key: draws the ADC's non-linearity (the same converter for every
      resolution of one run is drawn from the same key).
    adc: False leaves the converter ideal (a lossless reference).

  Raises:
    ValueError: naming the ``array.`` field that is wrong.
  """
  try:
    device = _device(a)
    wires = rk.Wires(a.r_row, a.r_col, a.r_row_terminal, a.r_col_terminal,
                     a.placement)
    converter = None
    if adc and (a.adc_dnl_sigma or a.adc_offset_sigma):
      converter = rk.NonlinearADC.random(
          jax.random.fold_in(key, hw.adc_bits), hw,
          dnl_sigma=a.adc_dnl_sigma, offset_sigma=a.adc_offset_sigma)
  except ValueError as e:
    raise ValueError(f"config.array: {e}") from e
  return {"device": device, "wires": wires if wires.active else None,
          "adc": converter}


def for_run(config: ml_collections.ConfigDict, run_key,
            hw: rsjax.HardwareSpec, *, adc: bool = True) -> dict[str, Any]:
  """:func:`models` of a run's ``config.array``, the converter drawn from
  the run's key: the same array for every evaluation and training step."""
  return models(config.array, hw, jax.random.fold_in(run_key, 7), adc=adc)

