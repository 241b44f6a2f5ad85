"""The emulator and hardware-aware training against float, on one device.

Run: ``python -m experiments.benchmarks.gpu_bench --json_out=bench.json``
(``--dry_run``: small sizes, for a CPU rehearsal).

Every figure is a ratio against float code of the same shape timed in this
one process on the same device (best of ``--reps`` compiled calls), so it
reads the same on any machine; the JSON names the device, the CPU and the
library versions. It is written after every section, so a run stopped
early keeps what it measured. The sections, in this order (the helpers of
:mod:`hwaware_bench` and :mod:`emulator_resnet_bench`):

* ``apply``: the per-input call ``rsjax.kernels.apply`` on weights
  prepared once (ISAAC-like 4-bit ``clip`` ADC: the ``table`` dataflow),
  x ``[m, k]`` @ w ``[k, n]``, against ``jit(x @ w)`` in float32.
* ``crossbar_matmul``: the per-step work, ``prepare`` + ``apply`` in one
  jit (what ``rsjax.kernels.crossbar_matmul`` does, weights an argument)
  against the same float32 matmul.
* ``hwaware_step``: a LeNet-5 training step with the emulated forward
  (``rk.hwaware``, straight-through backward) against the plain
  step; the saturation-aware backward too.
* ``vgg8_eval``: VGG-8 (28x28x1, random weights) evaluated on the emulated
  crossbars against float, in images/s.

docs/benchmarks.md says how to read the table on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax

import rsjax
from rsjax import kernels as rk

from experiments import provenance
from experiments.benchmarks import emulator_resnet_bench
from experiments.benchmarks import hwaware_bench

SIZES = {
    "full": dict(m=1024, k=1152, n=64, reps=10, step_model="lenet5",
                 batch=128, saturation=True, model="vgg8", images=512,
                 eval_batch=128, eval_reps=2),
    # A rehearsal: every section in seconds on a CPU (small shapes, the MLP
    # in place of the compile-heavy convolutional models).
    "dry_run": dict(m=64, k=288, n=32, reps=2, step_model="mlp", batch=16,
                    saturation=False, model="mlp", images=32, eval_batch=16,
                    eval_reps=1),
}


def header(sizes: dict[str, Any]) -> dict[str, Any]:
  dev = jax.devices()[0]
  return {"device": dev.device_kind, "platform": dev.platform,
          "cpu": provenance.cpu_model(), "versions": provenance.versions(),
          **provenance.git_state(), "sizes": sizes, "rows": []}


def row(name: str, seconds: float, baseline: str, baseline_s: float,
        **extra) -> dict[str, Any]:
  return {"name": name, "seconds": seconds, "baseline": baseline,
          "baseline_seconds": baseline_s, "ratio": seconds / baseline_s,
          **extra}


def sections(sz: dict[str, Any], hw: rsjax.HardwareSpec):
  """Yields each section's rows as soon as they are measured."""
  t_float, t_step, _, t_apply, t_prep = hwaware_bench.mvm(
      hw, sz["m"], sz["k"], sz["n"], sz["reps"])
  shape = f"x [{sz['m']}, {sz['k']}] @ w [{sz['k']}, {sz['n']}]"
  matmul = f"float32 matmul, {shape}"
  flow = rk.prepare(jax.numpy.zeros((sz["k"], sz["n"]), jax.numpy.int32),
                    hw).dataflow
  yield [row("apply: per-input call", t_apply, matmul, t_float,
             dataflow=flow, prepare_seconds=t_prep)]
  yield [row("crossbar_matmul: per-step (prepare + apply)", t_step, matmul,
             t_float)]
  plain, hwaware, saturation = hwaware_bench.lenet_steps(
      hw, sz["batch"], sz["reps"], sz["step_model"], sz["saturation"])
  name = sz["step_model"]
  step = f"plain {name} step, batch {sz['batch']}"
  rows = [row(f"hwaware_step: {name}, straight-through", hwaware, step,
              plain)]
  if saturation is not None:
    rows.append(row(f"hwaware_step: {name}, saturation-aware", saturation,
                    step, plain))
  yield rows
  t = emulator_resnet_bench.eval_times(
      sz["model"], (28, 28, 1), sz["images"], sz["eval_batch"],
      sz["eval_reps"], hw)
  yield [row(f"{sz['model']}_eval: emulated evaluation", t["emulated_s"],
             f"float evaluation, {sz['images']} images", t["float_s"],
             images_per_s=sz["images"] / t["emulated_s"],
             float_images_per_s=sz["images"] / t["float_s"],
             prepare_seconds=t["prepare_s"], dataflows=t["dataflows"],
             agreement=t["agreement"])]


def table(result: dict[str, Any]) -> str:
  lines = [f"{result['device']} ({result['platform']}), CPU "
           f"{result['cpu']}, jax {result['versions'].get('jax')}",
           f"{'what':46s} {'ms':>10s} {'baseline ms':>12s} {'ratio':>8s}  "
           "baseline"]
  for r in result["rows"]:
    lines.append(f"{r['name']:46s} {r['seconds'] * 1e3:10.3f} "
                 f"{r['baseline_seconds'] * 1e3:12.3f} {r['ratio']:7.1f}x  "
                 f"{r['baseline']}")
    if "images_per_s" in r:
      lines.append(f"{'':46s} {r['images_per_s']:,.0f} images/s emulated, "
                   f"{r['float_images_per_s']:,.0f} float")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--json_out", default="",
                      help="write the figures here (after every section)")
  parser.add_argument("--dry_run", action="store_true",
                      help="small sizes: a rehearsal on a CPU")
  parser.add_argument("--adc-bits", type=int, default=4)
  args = parser.parse_args()
  sizes = SIZES["dry_run" if args.dry_run else "full"]
  hw = rsjax.HardwareSpec(adc_bits=args.adc_bits)
  result = header({**sizes, "adc_bits": args.adc_bits})
  for rows in sections(sizes, hw):
    result["rows"] += rows
    for r in rows:
      print(f"{r['name']}: {r['ratio']:.1f}x {r['baseline']}", flush=True)
    if args.json_out:
      tmp = args.json_out + ".tmp"
      with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
      os.replace(tmp, args.json_out)
  print(table(result))


if __name__ == "__main__":
  main()
