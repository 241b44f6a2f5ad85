"""Real-array studies of :mod:`experiments.study.sweeps`: on/off ratio, IR drop
against the OU height, drift.

Each programs the subject's compressed model on a real array
(:class:`rsjax.kernels.Device`, :class:`rsjax.kernels.Wires`;
docs/devices.md) in the ``shared`` layout (index-and-add) and the ``dense``
layout of the same quantized weights, so that a row of each answers
whether sharing changes robustness: a stored block's error reaches every
output that reuses it.

``onoff``
  The on/off ratio with the measured ReRAM programming error
  (:class:`rsjax.kernels.WanRRAM2022`, ``--seeds`` keys) and, separately,
  with wire resistance ``--onoff_r_wire`` (deterministic): ``Gmin`` is
  subtracted by a reference, so the ratio acts through what sees absolute
  conductance.
``wires``
  Wire resistance per segment (units of ``Rmin``) at each OU height, the
  dense layout at every height and the shared one at the run's own (its
  blocks are that height), with a lossless ADC at each height so that the
  IR drop is the only error; each row also gives the worst column current's
  fall with every cell of an OU on and every row driven, for the OU placed
  farthest from its crossbar's drivers and terminals (``fall_all_on``) and
  for an OU alone (``fall_all_on_alone``): the physics behind the accuracy.
``drift``
  Time since programming, with and without global drift compensation, the
  drift exponent ``--drift_nu_min`` (at ``G = 0``) to ``--drift_nu_max``
  (at ``Gmax``) with spread ``--drift_nu_std`` (``--seeds`` keys).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import kernels as rk
from rsjax.kernels import wires as wires_lib

LAYOUTS = ("shared", "dense")


def _stats(accs: Sequence[float]) -> dict[str, Any]:
  return {"seeds": len(accs), "mean": float(np.mean(accs)),
          "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
          "min": float(np.min(accs)), "max": float(np.max(accs)),
          "accuracies": [float(a) for a in accs]}


def _accuracies(em, hw, layout, seeds, **models) -> list[float]:
  out = []
  for seed in range(seeds):
    layers = em.program(hw, shared=layout == "shared",
                        key=jax.random.key(seed), **models)
    out.append(em.accuracy(em.logits(layers)))
  return out


def _ratio(value: float) -> float:
  return math.inf if not value else float(value)


def onoff(em, *, ratios: Sequence[float], seeds: int, r_wire: float,
          g_max_us: float = 39.26) -> list[dict[str, Any]]:
  """Accuracy against the on/off ratio (0: infinite), per layout."""
  hw = em.subject.hw
  out = []
  for layout in LAYOUTS:
    for value in ratios:
      ratio = _ratio(value)
      device = rk.Device(ratio, programming=rk.WanRRAM2022(g_max_us))
      out.append({"layout": layout, "on_off_ratio": value,
                  "effect": "wan2022", "g_max_us": g_max_us,
                  **_stats(_accuracies(em, hw, layout, seeds,
                                       device=device))})
      if r_wire:
        accs = _accuracies(em, hw, layout, 1, device=rk.Device(ratio),
                           wires=rk.Wires(r_wire, r_wire))
        out.append({"layout": layout, "on_off_ratio": value,
                    "effect": "wires", "r_wire": r_wire, **_stats(accs)})
  return out


def fall_all_on(hw, r_wire: float, placement: bool = True) -> float:
  """The worst column current's relative fall, every cell of an OU at
  ``Gmax`` and every row driven; with ``placement``, for the OU farthest
  from its crossbar's drivers and terminals (top row-block, last column
  group), else for the OU alone."""
  g = jnp.ones((1, hw.ou_rows, hw.ou_cols), jnp.float32)
  last = max(hw.xbar_cols // hw.ou_cols, 1) - 1
  t = wires_lib.transfer(g, rk.Wires(r_wire, r_wire, placement=placement),
                         hw, row_slots=jnp.zeros((1,), jnp.int32),
                         col_slots=jnp.full((1,), last, jnp.int32))
  return float(1.0 - np.min(np.asarray(t[0]).sum(axis=0)) / hw.ou_rows)


def wires(em, *, ou_rows: Sequence[int], resistances: Sequence[float],
          on_off_ratio: float, placement: bool = True
          ) -> list[dict[str, Any]]:
  """Accuracy against wire resistance at each OU height (lossless ADC)."""
  base = em.subject.hw
  device = rk.Device(_ratio(on_off_ratio))
  out = []
  for o in ou_rows:
    hw = base.replace(ou_rows=int(o))
    hw = hw.replace(adc_bits=hw.lossless_adc_bits)
    layouts = LAYOUTS if hw.block_shape == base.block_shape else ("dense",)
    for layout in layouts:
      for r in resistances:
        wire = rk.Wires(r, r, placement=placement) if r else None
        accs = _accuracies(em, hw, layout, 1, device=device, wires=wire)
        out.append({"layout": layout, "ou_rows": int(o),
                    "adc_bits": hw.adc_bits, "r_wire": float(r),
                    "on_off_ratio": on_off_ratio, "placement": placement,
                    "fall_all_on": fall_all_on(hw, r, placement) if r
                                   else 0.0,
                    "fall_all_on_alone": fall_all_on(hw, r, False) if r
                                         else 0.0,
                    "accuracy": accs[0]})
  return out


def drift(em, *, times: Sequence[float], seeds: int, nu_min: float,
          nu_max: float, nu_std: float, on_off_ratio: float
          ) -> list[dict[str, Any]]:
  """Accuracy against the time since programming, with and without global
  drift compensation, per layout."""
  hw = em.subject.hw
  out = []
  for layout in LAYOUTS:
    for compensate in (False, True):
      for t in times:
        device = rk.Device(_ratio(on_off_ratio), drift=rk.Drift(
            t=float(t), nu_min=nu_min, nu_max=nu_max, nu_std=nu_std,
            compensate=compensate))
        out.append({"layout": layout, "t_s": float(t),
                    "compensate": compensate, "nu_min": nu_min,
                    "nu_max": nu_max, "nu_std": nu_std,
                    "on_off_ratio": on_off_ratio,
                    **_stats(_accuracies(em, hw, layout, seeds,
                                         device=device))})
  return out
