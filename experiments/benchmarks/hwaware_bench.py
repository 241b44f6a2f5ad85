"""Hardware-aware training speed against float (issue 17, item 2).

Run: ``python -m experiments.benchmarks.hwaware_bench``

Every figure is the best of ``--reps`` runs of an already compiled function,
measured in this one process, so the ratios are against float code of the
same shape on the same machine and load:

* per-step MVM: ``jit(lambda w, x: apply(prepare(w, hw), x))`` with the
  weights an argument, so the per-weight work (bit slicing, programming,
  the ADC table of all input patterns) is paid on every call, as in a
  training step whose weights change every step; x ``[1024, 1152]`` int
  inputs, w ``[1152, 64]`` int weights, ISAAC-like 4-bit ``clip`` ADC,
  against ``jit(x @ w)`` in float32. The per-input call (weights prepared
  once) and ``prepare`` alone are printed too.
* LeNet-5 training step (batch 128, 28x28x1 inputs, BN folded, Adam): the
  hardware-aware step (:func:`rsjax.kernels.hwaware` at the same
  ADC) against the plain float step, with the straight-through backward and
  with the saturation-aware one (``backward='saturation'``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rsjax
from rsjax import kernels as rk

from experiments import models


def best_times(calls, reps=10):
  """Best seconds of each ``(fn, *args)``, run in turn ``reps`` times.

  Interleaved, so that a burst of load on the shared machine hits every
  function alike rather than one of them.
  """
  for fn, *args in calls:
    jax.block_until_ready(fn(*args))
  best = [float("inf")] * len(calls)
  for _ in range(reps):
    for i, (fn, *args) in enumerate(calls):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[i] = min(best[i], time.perf_counter() - start)
  return best


def mvm(hw, m, k, n, reps):
  """``(float, per-step, two calls, per-input, prepare)`` seconds.

  ``two calls`` is the per-step work as two jitted calls, ``prepare`` then
  ``apply``: the one-jit step has measured slower than the pair (XLA CPU
  schedules the two loops worse in one module), so both are printed.
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 2**hw.input_bits, (m, k)), jnp.int32)
  w = jnp.asarray(rng.integers(-hw.max_weight, hw.max_weight + 1, (k, n)),
                  jnp.int32)
  xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
  step = jax.jit(lambda w, x: rk.apply(rk.prepare(w, hw), x))
  prepare, apply = jax.jit(lambda w: rk.prepare(w, hw)), jax.jit(rk.apply)
  times = best_times([(jax.jit(jnp.matmul), xf, wf), (step, w, x),
                      (lambda w, x: apply(prepare(w), x), w, x),
                      (apply, prepare(w), x), (prepare, w)], reps)
  # Timing the per-step path is only meaningful if it is the emulator's.
  np.testing.assert_array_equal(np.asarray(step(w, x)[:64]), np.asarray(
      rk.crossbar_matmul(x[:64], w, hw, dataflow="direct")))
  return tuple(times)


def lenet_steps(hw, batch, reps, model_name="lenet5", saturation=True):
  """``(plain, hardware-aware, saturation-aware)`` step seconds, LeNet-5
  (or another model of :mod:`experiments.models` on 28x28x1 inputs);
  saturation-aware None unless ``saturation``."""
  model = models.create_model(model_name, num_classes=10, use_bn=False)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.random((batch, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  params = model.init(jax.random.key(0), x[:1])["params"]
  calib = rk.calibrate_hwaware(model, [x], hw, variables={"params": params})
  tx = optax.adam(1e-4)

  def make_step(forward):
    @jax.jit
    def step(params, opt_state, x, y):
      def loss(p):
        logits = forward({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y).mean()
      grads = jax.grad(loss)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    return step

  plain = make_step(model.apply)
  hwaware = make_step(
      lambda v, x: rk.hwaware(model, hw, calib, variables=v)(x))
  saturation_step = make_step(lambda v, x: rk.hwaware(
      model, hw, calib, variables=v, backward="saturation")(x))
  state = tx.init(params)
  steps = [plain, hwaware] + ([saturation_step] if saturation else [])
  times = best_times([(step, params, state, x, y) for step in steps], reps)
  return tuple(times) + (() if saturation else (None,))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--m", type=int, default=1024)
  parser.add_argument("--k", type=int, default=1152)
  parser.add_argument("--n", type=int, default=64)
  parser.add_argument("--adc-bits", type=int, default=4)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args()
  hw = rsjax.HardwareSpec(adc_bits=args.adc_bits)
  t_float, t_step, t_two, t_apply, t_prep = mvm(hw, args.m, args.k, args.n,
                                                args.reps)
  print(f"MVM x [{args.m}, {args.k}] @ w [{args.k}, {args.n}], "
        f"{args.adc_bits}-bit clip ADC")
  print(f"  float32 matmul             {t_float * 1e3:9.3f} ms    1.0x")
  print(f"  per-step (prepare + apply) {t_step * 1e3:9.3f} ms "
        f"{t_step / t_float:6.1f}x")
  print(f"  prepare, apply: two calls  {t_two * 1e3:9.3f} ms "
        f"{t_two / t_float:6.1f}x")
  print(f"  per-input apply            {t_apply * 1e3:9.3f} ms "
        f"{t_apply / t_float:6.1f}x")
  print(f"  prepare alone              {t_prep * 1e3:9.3f} ms "
        f"{t_prep / t_float:6.1f}x")
  t_plain, t_hw, t_sat = lenet_steps(hw, args.batch, args.reps)
  print(f"LeNet-5 training step, batch {args.batch}")
  print(f"  plain step                 {t_plain * 1e3:9.3f} ms    1.0x")
  print(f"  hardware-aware step        {t_hw * 1e3:9.3f} ms "
        f"{t_hw / t_plain:6.1f}x")
  print(f"  saturation-aware backward  {t_sat * 1e3:9.3f} ms "
        f"{t_sat / t_plain:6.1f}x")


if __name__ == "__main__":
  main()
