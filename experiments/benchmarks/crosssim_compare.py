"""rsjax's real-array models against CrossSim's, in one process.

  git clone https://github.com/sandialabs/cross-sim /tmp/cross-sim
  python -m experiments.benchmarks.crosssim_compare --crosssim_dir=/tmp/cross-sim

CrossSim (Sandia) is not on PyPI: this script imports it from a checkout
(numpy and scipy are its only dependencies). It compares, configured
identically:

* **On/off ratio** alone: CrossSim's balanced core and rsjax, each against
  its own output at an infinite ratio (``Gmin`` cancels in both).
* **IR drop** on one OU (9 rows x 8 cells, CrossSim's non-interleaved
  input-source array, segments ``Rp / Rmin`` of 1e-5 to 1e-2, no terminal
  resistance): random conductances between ``Gmin`` and ``Gmax`` (on/off
  ratio 20) and random 1-bit inputs; rsjax's column currents ``v @ T``
  (``rk.Wires``, the transfer matrix) against CrossSim's iterative solver
  (``solve_mvm``, converged to a voltage error of 1e-9). Printed: the
  largest relative error of a column current, and the share of identical
  codes of an 8-bit ADC whose full scale is the OU's largest current.
* **Programming error** of the measured ReRAM fit: cells programmed to
  each level of a 2-bit cell, ``Gmax = 39.26`` uS, on/off ratio 20; the
  standard deviation in uS of CrossSim's ``RRAMWan.programming_error`` and
  of ``rk.WanRRAM2022``, and the fit's value.
* **Speed** with parasitics on: the per-input time of CrossSim's solver
  over every OU of a ``[144, 64]`` layer (the analog part only), against
  rsjax's per-input ``apply`` of the same layer on programmed weights
  (ADC, shift-and-add and index included), as a ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import rsjax
from rsjax import kernels as rk
from rsjax.kernels import wires as wires_lib


def _crosssim(crosssim_dir: str):
  if not os.path.isdir(os.path.join(crosssim_dir, "simulator")):
    raise SystemExit(f"--crosssim_dir={crosssim_dir} is not a CrossSim "
                     "checkout (no simulator/ folder)")
  sys.path.insert(0, crosssim_dir)
  from simulator.backend import ComputeBackend  # pylint: disable=g-import-not-at-top
  ComputeBackend(use_gpu=False)
  import simulator  # pylint: disable=g-import-not-at-top
  return simulator


def _array(simulator, r: float):
  """CrossSim's non-interleaved input-source array at ``Rp = r Rmin``."""
  from simulator.circuits.array.NonInterleaved_InputSource import (  # pylint: disable=g-import-not-at-top
      NoninterleavedInputSourceArray)
  p = simulator.CrossSimParameters()
  p.xbar.device.Rmin = 1000.0
  p.xbar.array.parasitics.enable = True
  p.xbar.array.parasitics.Rp_row = r * 1000.0
  p.xbar.array.parasitics.Rp_col = r * 1000.0
  p.simulation.Verr_th_mvm = 1e-9
  p.simulation.Niters_max_parasitics = 100000
  p.simulation.hide_convergence_msg = True
  p.core.style = "OFFSET"
  return NoninterleavedInputSourceArray(p)


def on_off(simulator):
  """A finite on/off ratio alone: CrossSim's balanced core (the pair's
  currents subtracted in the analog domain) against rsjax's reference
  current, each against its own infinite-ratio output."""
  rng = np.random.default_rng(2)
  w = rng.integers(-127, 128, (144, 64))
  x = rng.integers(0, 256, (8, 144))
  hw = rsjax.HardwareSpec(adc_bits=4)
  ideal = np.asarray(rk.crossbar_matmul(x, w, hw))
  theirs_ideal = None
  print("On/off ratio alone (largest output change from the infinite "
        "ratio; CrossSim in units of the [-1, 1] weight range):")
  for ratio in (0.0, 10.0, 100.0):
    p = simulator.CrossSimParameters()
    p.core.style = "BALANCED"
    p.xbar.device.Rmin = 1000.0
    if ratio:
      p.xbar.device.Rmax = 1000.0 * ratio
    else:
      p.xbar.device.infinite_on_off_ratio = True
    p.core.mapping.weights.min, p.core.mapping.weights.max = -1.0, 1.0
    p.core.mapping.inputs.mvm.min, p.core.mapping.inputs.mvm.max = 0.0, 1.0
    core = simulator.AnalogCore(w.T / 127.0, p)
    theirs = np.stack([np.asarray(core @ (row / 255.0)) for row in x])
    if theirs_ideal is None:
      theirs_ideal = theirs
      continue
    ours = np.asarray(rk.crossbar_matmul(x, w, hw, device=rk.Device(ratio)))
    print(f"  ratio {ratio:5g}: CrossSim {np.max(np.abs(theirs - theirs_ideal)):.1e}"
          f" (float rounding), rsjax {np.max(np.abs(ours - ideal))} "
          "(integer outputs, identical)")


def ir_drop(simulator, trials: int, rows: int = 9, cols: int = 8):
  hw = rsjax.HardwareSpec(ou_rows=rows, ou_cols=cols)
  rng = np.random.default_rng(0)
  print("IR drop, one OU (9 x 8 cells), on/off 20, random G and 1-bit "
        "inputs:")
  print("  Rp/Rmin   max rel. error   8-bit codes identical")
  for r in (1e-5, 1e-4, 1e-3, 1e-2):
    arr = _array(simulator, r)
    g = rng.uniform(1 / 20, 1.0, (trials, rows, cols))
    t = np.asarray(wires_lib.transfer(
        jnp.asarray(g, jnp.float32), rk.Wires(r, r, placement=False), hw),
                   np.float64)
    errs, same, total = [], 0, 0
    for i in range(trials):
      v = rng.integers(0, 2, rows).astype(np.float64)
      v[rng.integers(rows)] = 1.0  # at least one row driven
      ours = v @ t[i]
      theirs = np.asarray(arr.solve_mvm(v, g[i].T), np.float64)
      errs.append(np.max(np.abs(ours - theirs) / np.abs(theirs)))
      full = rows / 255.0
      same += int(np.sum(np.round(ours / full) == np.round(theirs / full)))
      total += cols
    print(f"  {r:7.0e}   {max(errs):14.2e}   {100 * same / total:6.2f} %")


def programming_error(simulator, cells: int = 200000):
  from simulator.devices.custom.RRAM_Wan import RRAMWan  # pylint: disable=g-import-not-at-top
  p = simulator.CrossSimParameters()
  p.xbar.device.Rmin = 1e6 / 39.26
  p.xbar.device.Rmax = 20 * p.xbar.device.Rmin
  p.xbar.device.programming_error.enable = True
  p.xbar.device.programming_error.model = "RRAMWan"
  dev_params = p.xbar.device
  cs = RRAMWan(dev_params, dev_params.programming_error)
  hw = rsjax.HardwareSpec()
  device = rk.Device(20.0, programming=rk.WanRRAM2022(39.26))
  g0 = device.g0(hw)
  us_per_level = 39.26 / (3 + g0)
  print("Programming error (Wan et al. 2022 fit), Gmax 39.26 uS, on/off 20,"
        " std in uS:")
  print("  level   G (uS)   CrossSim   rsjax    fit")
  gmin_norm = dev_params.Gmin_norm
  np.random.seed(0)
  for level in range(4):
    g_norm = gmin_norm + (1 - gmin_norm) * level / 3
    target = np.full(cells, g_norm)
    theirs = (np.asarray(cs.programming_error(target.copy())) - target) * (
        39.26 / (1 - gmin_norm)) * (1 - gmin_norm)
    ours, _ = device.program(jnp.full((cells,), level, jnp.int32), hw,
                             jax.random.key(level))
    ours_us = (np.asarray(ours, np.float64) - level) * us_per_level
    g_us = (level + g0) * us_per_level
    fit = float(rk.WanRRAM2022().sigma_us(jnp.float32(g_us)))
    print(f"  {level:5d}   {g_us:6.2f}   {np.std(theirs):8.3f}   "
          f"{np.std(ours_us):6.3f}   {fit:5.3f}")


def speed(simulator, inputs: int, r: float = 1e-4):
  hw = rsjax.HardwareSpec(adc_bits=4)
  rng = np.random.default_rng(1)
  w = rng.integers(-127, 128, (144, 64))
  x = rng.integers(0, 256, (inputs, 144))
  weights = rk.prepare(w, hw, device=rk.Device(20.0),
                       wires=rk.Wires(r, r, placement=False),
                       dataflow="table")
  apply = jax.jit(rk.apply)
  jax.block_until_ready(apply(weights, x))
  start = time.perf_counter()
  jax.block_until_ready(apply(weights, x))
  ours = (time.perf_counter() - start) / inputs
  # CrossSim: every OU's analog solve for every input cycle (8 bits), the
  # 4 slices of each weight in the OU's 8 cell columns.
  arr = _array(simulator, r)
  g = rng.uniform(1 / 20, 1.0, (16, 32, 9, 8))  # row-blocks x groups
  bits = rng.integers(0, 2, (hw.cycles, 144))
  start = time.perf_counter()
  for t in range(hw.cycles):
    for rb in range(16):
      v = bits[t, rb * 9:(rb + 1) * 9].astype(np.float64)
      for grp in range(32):
        arr.solve_mvm(v, g[rb, grp].T)
  theirs = time.perf_counter() - start
  print(f"Speed, [144, 64] layer with IR drop at {r:g} Rmin, per input: "
        f"CrossSim's solver {theirs * 1e3:.1f} ms, rsjax apply "
        f"{ours * 1e6:.1f} us: {theirs / ours:.0f}x")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--crosssim_dir", required=True)
  parser.add_argument("--trials", type=int, default=200)
  parser.add_argument("--inputs", type=int, default=256)
  args = parser.parse_args(argv)
  simulator = _crosssim(args.crosssim_dir)
  on_off(simulator)
  ir_drop(simulator, args.trials)
  programming_error(simulator)
  speed(simulator, args.inputs)


if __name__ == "__main__":
  main()
