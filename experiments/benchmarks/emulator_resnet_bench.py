"""Emulated vs float evaluation time of a whole model, issue 4.

Run: ``python -m experiments.benchmarks.emulator_resnet_bench`` (ResNet-20,
CIFAR shapes) or ``... --model vgg8 --shape 28,28,1`` (VGG-8 on Fashion-MNIST
shapes, whose 3x3 convs with 256-512 channels take the streamed dataflow).

A model from ``experiments.models`` with random weights and BatchNorm
statistics (timing does not depend on accuracy) on random images.
Every Conv and Dense layer runs on the emulated crossbars (ISAAC-like,
4-bit clip ADC: the lossy table path; the stem gets signed inputs and so two
unsigned passes); BatchNorms are folded. Both evaluations are jitted per
batch; the times are the best of ``--reps`` passes over ``--images`` images,
after compilation. ``rk.calibrate`` + ``rk.program`` (calibration and
programming, once per model) is timed separately.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import rsjax
from rsjax import kernels as rk
from experiments import models


def eval_times(model_name: str, shape: tuple[int, int, int], images: int,
               batch: int, reps: int, hw: rsjax.HardwareSpec,
               dataflow: str = "auto") -> dict:
  """Float and emulated evaluation of ``images`` random images, timed.

  Returns:
    ``float_s``, ``emulated_s`` (best of ``reps`` passes, compiled),
    ``prepare_s`` (calibrating and programming, once per model), ``layers``,
    ``dataflows`` and ``agreement`` (top-1 float vs emulated, one batch).

  Raises:
    ValueError: ``images`` not a multiple of ``batch``.
  """
  if images % batch:
    raise ValueError(f"images ({images}) must be a multiple of the batch "
                     f"({batch})")
  model = models.create_model(model_name, num_classes=10)
  variables = models.init_variables(model, jax.random.key(0), shape)
  rng = np.random.default_rng(0)
  batches = jnp.asarray(rng.standard_normal((images, *shape)),
                        jnp.float32).reshape(-1, batch, *shape)
  start = time.perf_counter()
  layers = rk.program(rk.calibrate(model, list(batches[:2]),
                                   variables=variables, train=False),
                      hw, dataflow=dataflow)
  t_prep = time.perf_counter() - start
  float_eval = jax.jit(lambda x: model.apply(variables, x, train=False))
  emu_eval = jax.jit(lambda x: rk.emulate(model, layers, variables=variables)(
      x, train=False))

  def run(fn):
    jax.block_until_ready(fn(batches[0]))
    best = float("inf")
    for _ in range(reps):
      start = time.perf_counter()
      for b in batches:
        jax.block_until_ready(fn(b))
      best = min(best, time.perf_counter() - start)
    return best

  t_float = run(float_eval)
  t_emu = run(emu_eval)
  agree = float(jnp.mean(jnp.argmax(float_eval(batches[0]), -1)
                         == jnp.argmax(emu_eval(batches[0]), -1)))
  return {"float_s": t_float, "emulated_s": t_emu, "prepare_s": t_prep,
          "layers": len(layers), "agreement": agree,
          "dataflows": sorted({layer.weights.dataflow
                               for layer in layers.values()})}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--adc-bits", type=int, default=4)
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--shape", default="32,32,3",
                      help="image height,width,channels")
  parser.add_argument("--dataflow", default="auto",
                      help="dataflow for every layer (rsjax.kernels.prepare)")
  args = parser.parse_args()
  shape = tuple(int(v) for v in args.shape.split(","))
  if len(shape) != 3 or args.images % args.batch:
    raise SystemExit("--shape is H,W,C and --images a multiple of --batch")
  t = eval_times(args.model, shape, args.images, args.batch, args.reps,
                 rsjax.HardwareSpec(adc_bits=args.adc_bits), args.dataflow)
  print(f"jax {jax.__version__}, {args.model} {shape}, {args.images} images "
        f"in batches "
        f"of {args.batch}, {t['layers']} emulated layers ({t['dataflows']}), "
        f"adc_bits={args.adc_bits}")
  print(f"float eval    {t['float_s']:8.3f} s")
  print(f"emulated eval {t['emulated_s']:8.3f} s  "
        f"{t['emulated_s'] / t['float_s']:6.1f}x")
  print(f"calibrate+program {t['prepare_s']:8.3f} s (once per model)")
  print(f"top-1 agreement float vs emulated on one batch: "
        f"{t['agreement']:.2f}")


if __name__ == "__main__":
  main()
