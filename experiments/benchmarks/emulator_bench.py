"""Crossbar emulator speed and memory against a float32 matmul (issue 4).

Run: ``python experiments/benchmarks/emulator_bench.py``

All times are the best of ``--reps`` runs of an already compiled function,
measured in this one process, so ratios are against the float32 matmul of
the same shape on the same machine and load. What is counted:

* ``float32``: ``jit(x @ w)``, x ``[1024, 1152]``, w ``[1152, 64]``.
* ``apply``: the per-input call ``rsjax.kernels.apply(weights, x)`` on int32
  inputs. The per-weight work (``prepare``: slicing, programming, the ADC
  table) is timed separately; it is done once per weight matrix and reused
  for every batch, as a programmed crossbar is.
* ``end to end``: ``prepare`` + ``apply`` for one batch.
* shared layers (every row-block stores ``G / s`` blocks): ``apply`` on the
  routed table, ``prepare`` (tabulating only the stored blocks) and the
  direct path (all partial sums of the stored blocks, then index-and-add),
  each against the dense layer's.
* memory: XLA's compiled memory analysis of ``jit(apply)`` (arguments +
  outputs + temporaries; the table is an argument).
* a large layer (``--big-k`` x ``--big-n``, by default a VGG 3x3 conv with
  256 input and output channels) whose table exceeds
  ``rsjax.kernels.crossbar.TABLE_MAX_BYTES``: the streamed table (each
  row-block's table built inside the call), the whole table forced
  (``dataflow='table'``) and the direct path, each per input row.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import rsjax
from rsjax import kernels as rk


def best_time(fn, *args, reps=20):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def peak_mib(fn, *args):
  mem = jax.jit(fn).lower(*args).compile().memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes
           + mem.temp_size_in_bytes)
  return total / 2**20


def shared_layer(rng, hw, k, n, s):
  """A layer whose every row-block stores ``G / s`` blocks (sharing s)."""
  bh, bw = hw.block_shape
  nrb, ngr = -(-k // bh), -(-n // bw)
  slots = max(1, ngr // s)
  codebook = rng.integers(-hw.max_weight, hw.max_weight + 1,
                          (nrb, slots, bh, bw)).astype(np.int32)
  index = np.stack([rng.permutation(np.arange(ngr) % slots)
                    for _ in range(nrb)]).astype(np.int32)
  return codebook, index


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--m", type=int, default=1024)
  parser.add_argument("--k", type=int, default=1152)
  parser.add_argument("--n", type=int, default=64)
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--direct-rows", type=int, default=128,
                      help="rows of x for the (slow) direct-path timings")
  parser.add_argument("--big-m", type=int, default=9800,
                      help="rows of x for the large layer (50 images of "
                      "14x14 positions)")
  parser.add_argument("--big-k", type=int, default=2304)
  parser.add_argument("--big-n", type=int, default=256)
  args = parser.parse_args()
  m, k, n = args.m, args.k, args.n
  rng = np.random.default_rng(0)
  lossy = rsjax.HardwareSpec(weight_bits=8, cell_bits=2, input_bits=8,
                             dac_bits=1, ou_rows=9, ou_cols=8, adc_bits=4,
                             adc_mode="clip")
  lossless = lossy.replace(adc_bits=5)
  x = jnp.asarray(rng.integers(0, 256, (m, k)), jnp.int32)
  w = jnp.asarray(rng.integers(-127, 128, (k, n)), jnp.int32)
  xf = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  wf = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"x [{m}, {k}] @ w [{k}, {n}], best of {args.reps}")
  t_float = best_time(matmul, xf, wf, reps=max(args.reps, 50))
  print(f"float32 matmul           {t_float * 1e3:8.3f} ms      1.0x")
  apply = jax.jit(rk.apply)

  def report(name, weights, t_ref=None):
    t = best_time(apply, weights, x, reps=args.reps)
    extra = "" if t_ref is None else f"  {t / t_ref:5.2f}x of dense"
    print(f"{name:24s} {t * 1e3:8.3f} ms {t / t_float:6.1f}x  "
          f"peak {peak_mib(rk.apply, weights, x):6.1f} MiB{extra}")
    return t

  table_w = rk.prepare(w, lossy)
  t_prep = best_time(lambda a: rk.prepare(a, lossy).table, w, reps=5)
  assert table_w.dataflow == "table"
  t_dense = report("lossy 4-bit clip, table", table_w)
  print(f"  prepare (once/weights)  {t_prep * 1e3:8.3f} ms; end to end "
        f"{(t_prep + t_dense) / t_float:6.1f}x")
  exact_w = rk.prepare(w, lossless)
  assert exact_w.dataflow == "exact"
  report("lossless 5-bit, exact", exact_w)
  y_table = apply(table_w, x)
  y_direct = apply(rk.prepare(w, lossy, dataflow="direct"), x[:64])
  assert np.array_equal(np.asarray(y_table[:64]), np.asarray(y_direct))
  # Shared layers. The index-and-add conversions happen when the table is
  # built (once per stored block), so per input the shared and dense tables
  # cost the same lookups; the direct path (all partial sums per input, the
  # one read noise needs) converts each stored block once per input.
  direct_x = x[:args.direct_rows]
  dense_direct = rk.prepare(w, lossy, dataflow="direct")
  t_dd = best_time(apply, dense_direct, direct_x, reps=3)
  print(f"lossy, direct ({args.direct_rows} rows) {t_dd * 1e3:8.3f} ms "
        f"{t_dd * m / args.direct_rows / t_float:6.1f}x (scaled to {m} rows)")
  for s in (2, 4, 8):
    codebook, index = shared_layer(rng, lossy, k, n, s)
    kw = dict(in_features=k, out_features=n)
    sw = rk.prepare_shared(codebook, index, lossy, **kw)
    report(f"shared s={s}, table", sw, t_ref=t_dense)
    t_sp = best_time(lambda c: rk.prepare_shared(c, index, lossy, **kw).table,
                     codebook, reps=5)
    sd = rk.prepare_shared(codebook, index, lossy, dataflow="direct", **kw)
    t_sd = best_time(apply, sd, direct_x, reps=3)
    print(f"  prepare {t_sp * 1e3:7.2f} ms ({t_sp / t_prep:5.2f}x of dense); "
          f"direct {t_sd * 1e3:7.2f} ms ({t_sd / t_dd:5.2f}x of dense direct,"
          f" target 1.5/s = {1.5 / s:.3f})")
    assert np.array_equal(np.asarray(apply(sd, direct_x)),
                          np.asarray(apply(sw, direct_x)))
  large_layer(args, rng, lossy, apply)


def large_layer(args, rng, hw, apply):
  """Streamed vs whole table vs direct on a layer too large to tabulate."""
  m, k, n = args.big_m, args.big_k, args.big_n
  x = jnp.asarray(rng.integers(0, 256, (m, k)), jnp.int32)
  w = jnp.asarray(rng.integers(-127, 128, (k, n)), jnp.int32)
  table_mib = (-(-k // hw.ou_rows) * rk.dataflow.num_patterns(hw) * n * 4
               / 2**20)
  print(f"large layer x [{m}, {k}] @ w [{k}, {n}] (whole table "
        f"{table_mib:.0f} MiB), per 1000 rows:")
  streamed = rk.prepare(w, hw)
  assert streamed.dataflow == "streamed"
  t_s = best_time(apply, streamed, x, reps=3)
  whole = rk.prepare(w, hw, dataflow="table")
  t_t = best_time(apply, whole, x, reps=3)
  t_prep = best_time(lambda a: rk.prepare(a, hw, dataflow="table").table, w,
                     reps=2)
  direct = rk.prepare(w, hw, dataflow="direct")
  rows = args.direct_rows
  t_d = best_time(apply, direct, x[:rows], reps=2)
  per = lambda t, r: t / r * 1000 * 1e3
  print(f"  streamed {per(t_s, m):8.2f} ms   whole table "
        f"{per(t_t, m):8.2f} ms (+ prepare {t_prep * 1e3:.0f} ms once)   "
        f"direct {per(t_d, rows):8.2f} ms ({rows} rows)")
  print(f"  streamed / whole table {t_s / t_t:5.2f}x; direct / streamed "
        f"{per(t_d, rows) / per(t_s, m):6.1f}x")
  got = np.asarray(apply(streamed, x[:rows]))
  assert np.array_equal(got, np.asarray(apply(direct, x[:rows])))
  assert np.array_equal(got, np.asarray(apply(whole, x[:rows])))


if __name__ == "__main__":
  main()
