"""Real-array models at table speed: the per-input cost of IR drop.

Run: ``python -m experiments.benchmarks.devices_bench``

The deterministic models (on/off ratio, wire resistance, I-V nonlinearity,
ADC non-linearity) are folded into the conductances, and from them into
the ``table`` dataflow's per-pattern ADC outputs, when the weights are
programmed. So the per-input call should cost what the ideal crossbar's
does. This prints, measured in this one process:

* per-input ``apply`` with ``Device(on_off_ratio=...)`` and ``Wires(...)``
  against the ideal table path, same shape (x ``[1024, 1152]``, w
  ``[1152, 64]``, ISAAC-like 4-bit ``clip`` ADC): the ratio is the claim;
* both against a float32 matmul, for scale;
* ``prepare`` with and without wires (the IR-drop solve is a one-off cost
  per programming), for 9-row OUs and for tall ones (direct dataflow).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import rsjax
from rsjax import kernels as rk

from experiments.benchmarks import hwaware_bench


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--m", type=int, default=1024)
  parser.add_argument("--k", type=int, default=1152)
  parser.add_argument("--n", type=int, default=64)
  parser.add_argument("--ratio", type=float, default=20.0)
  parser.add_argument("--r_wire", type=float, default=1e-3)
  args = parser.parse_args(argv)

  hw = rsjax.HardwareSpec(adc_bits=4)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (args.m, args.k)), jnp.int32)
  w = jnp.asarray(rng.integers(-127, 128, (args.k, args.n)), jnp.int32)
  models = dict(device=rk.Device(on_off_ratio=args.ratio),
                wires=rk.Wires(args.r_wire, args.r_wire))
  ideal = rk.prepare(w, hw, dataflow="table")
  real = rk.prepare(w, hw, dataflow="table", **models)
  apply = jax.jit(rk.apply)
  xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
  t_mm, t_ideal, t_real = hwaware_bench.best_times(
      [(jax.jit(jnp.matmul), xf, wf), (apply, ideal, x), (apply, real, x)],
      args.reps)
  print(f"device {jax.devices()[0].device_kind}; x {args.m}x{args.k} @ w "
        f"{args.k}x{args.n}, 4-bit clip ADC, on/off {args.ratio:g}, wire "
        f"segments {args.r_wire:g} Rmin")
  print(f"per-input apply, ideal table:        {t_ideal * 1e3:8.2f} ms  "
        f"({t_ideal / t_mm:5.1f}x float32 matmul)")
  print(f"per-input apply, on/off + IR drop:   {t_real * 1e3:8.2f} ms  "
        f"({t_real / t_mm:5.1f}x float32 matmul)")
  print(f"ratio real / ideal:                  {t_real / t_ideal:8.3f}x "
        "(target <= 1.5x)")

  for rows in (9, 32):
    tall = hw.replace(ou_rows=rows, ou_cols=8, adc_bits=6)
    prep = lambda w, m, tall=tall: rk.prepare(w, tall, dataflow="direct", **m)
    p_ideal = jax.jit(lambda w, tall=tall: rk.prepare(w, tall,
                                                      dataflow="direct"))
    p_real = jax.jit(lambda w, prep=prep: prep(w, models))
    t0, t1 = hwaware_bench.best_times([(p_ideal, w), (p_real, w)],
                                      max(2, args.reps // 5))
    print(f"prepare {rows:3d}-row OUs (direct): ideal {t0 * 1e3:8.2f} ms, "
          f"with IR-drop solve {t1 * 1e3:9.2f} ms")


if __name__ == "__main__":
  main()
