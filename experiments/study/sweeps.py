"""Emulation sweeps of a finished run's compressed model (RESULTS.md).

  python -m experiments.study.sweeps --run=experiments/study/runs/lenet5_base \
      --out=experiments/study/runs/sweeps/lenet5_base.json

Loads the model a pipeline run exported (``compressed_model.rsjax.npz``,
rsjax's whole-model format: codebooks, index tables, the digital parameters
and the hardware) and runs three studies on the crossbar
emulator, every one on the same first ``--limit`` test images, with input
scales calibrated on the first ``--calibration`` *training* images:

``grid``
  Accuracy vs ADC bits for every (OU height, cell bits). The sharing was
  done for the run's own OU block shape (``hw.block_shape``); another OU
  height or cell resolution tiles the matrix into other blocks, so there the
  compressed weights are programmed as dense crossbars of that hardware
  (index-and-add is defined only at the run's hardware, and ``equality``
  shows it computes the same numbers). At each hardware the lossless ADC
  resolution (``2^bits - 1 >= p_max``) is run through the bit-sliced
  dataflow (``dataflow='sliced'``) and compared logit for logit with the
  integer matmul of the same quantized weights and inputs
  (``dataflow='exact'``): the quantized model.
``equality``
  At the run's hardware, for every ADC resolution: the index-and-add
  dataflow on the codebooks and index tables against the decompressed
  matrix programmed densely; accuracy of both, the largest logit
  difference (0 means bit-identical) and the energy per inference of both
  layouts (:func:`rsjax.hardware_cost`).
``onoff``, ``wires``, ``drift``
  Real arrays (docs/devices.md): the on/off ratio with the measured ReRAM
  programming error, wire resistance (IR drop) at each OU height, drift
  with and without compensation; see :mod:`experiments.study.sweeps_devices`.
``faults``
  Stuck-at faults (half stuck at the lowest level, half at the highest) and
  programming variation (Gaussian, in cell levels), ``--seeds`` keys each;
  mean and standard deviation of the accuracy, for the shared layout (a
  faulty cell of a stored block hits every output that reuses the block)
  and for the dense layout of the same weights.

The result is one JSON file; :mod:`experiments.study.sweep_report` turns a
folder of them into RESULTS.md sections and plots. A large study can run in
parts (e.g. one process per OU height and cell resolution, in parallel on a
GPU, or one part a session on a CPU, each its own JSON) that ``--merge``
joins::

  python -m experiments.study.sweeps --merge=part1.json,part2.json --out=all.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import rsjax
from rsjax import kernels as rk

from experiments import data as data_lib
from experiments import evaluation
from experiments import models as models_lib
from experiments.study import sweeps_devices
from experiments import workdir as workdir_lib

STUDIES = ("grid", "equality", "faults", "onoff", "wires", "drift")
# What a sweep runs unless told: the real-array studies are asked for.
DEFAULT_STUDIES = ("grid", "equality", "faults")


@dataclasses.dataclass(frozen=True)
class Subject:
  """A run's compressed model and the images it is emulated on."""

  name: str
  model: Any
  params: Any
  layers: dict[str, rsjax.CompressedLayer]
  hw: rsjax.HardwareSpec
  images: np.ndarray  # [N, H, W, C] float32, normalised
  labels: np.ndarray  # [N] int32
  calibration: np.ndarray  # [M, H, W, C] float32, training images


def load_subject(workdir: str, *, limit: int, calibration: int = 1000,
                 data_dir: str | None = None,
                 source_dir: str | None = None) -> Subject:
  """Reads a finished run's export and its test images.

  Args:
    workdir: the run's workdir (``config.json`` and the model file).
    limit: how many test images (the first ones; 0: all).
    calibration: how many training images calibrate the input scales.
    data_dir, source_dir: override the run's data locations.

  Returns:
    The :class:`Subject`.
  """
  export = os.path.join(workdir, workdir_lib.MODEL_FILE)
  config_path = os.path.join(workdir, "config.json")
  for path in (export, config_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path} is missing: --run must be the workdir of a finished "
          "pipeline run (experiments/main.py)")
  with open(config_path) as f:
    dc = json.load(f)
  data_cfg = dc["data"]
  kwargs = data_lib.split_kwargs(data_cfg)
  kwargs["data_dir"] = data_dir or kwargs["data_dir"]
  kwargs["source_dir"] = source_dir or kwargs["source_dir"]
  test = data_lib.load_split(data_cfg["name"], "eval", limit=limit or None,
                             **kwargs)
  train = data_lib.load_split(data_cfg["name"], "train", limit=calibration,
                              **kwargs)
  saved = rsjax.load_compressed(export)
  params = jax.tree_util.tree_map(jnp.asarray, saved.params)
  layers, hw = dict(saved.layers), saved.hw
  # A run with compress.fold_bn=False exports its BatchNorm statistics.
  model = models_lib.create_model(dc["model"]["name"],
                                  num_classes=test.info.num_classes,
                                  use_bn="batch_stats" in params)
  images, labels = test.get(np.arange(len(test)))
  calib, _ = train.get(np.arange(len(train)))
  return Subject(os.path.basename(os.path.normpath(workdir)), model, params,
                 layers, hw, data_lib.normalize(images, test.info),
                 np.asarray(labels, np.int32),
                 data_lib.normalize(calib, train.info))


def with_signed(subject: Subject, signed: str) -> Subject:
  """``subject`` with its weights programmed in the ``signed`` mapping.

  Raises:
    ValueError: if that changes the weight block (``ou_cols / slices``):
      the run's shared layers hold blocks of its own.
  """
  hw = subject.hw.replace(signed=signed)
  if hw.block_shape != subject.hw.block_shape:
    raise ValueError(
        f"signed={signed!r} changes the weight block from "
        f"{subject.hw.block_shape} to {hw.block_shape}: the run's shared "
        "layers cannot be programmed on it")
  return dataclasses.replace(subject, hw=hw)


class Emulator:
  """Emulated and float logits of one :class:`Subject`, batch by batch.

  The product's :class:`experiments.evaluation.Emulation` (calibrated once,
  on the subject's training images; one compilation per hardware) over the
  subject's whole test set, padded to one batch shape.
  """

  def __init__(self, subject: Subject, batch_size: int = 500):
    self.subject = subject
    self.batch_size = batch_size
    model, params = subject.model, subject.params
    self.emulation = evaluation.Emulation(
        model, params, subject.layers,
        [subject.calibration[i:i + batch_size]
         for i in range(0, len(subject.calibration), batch_size)])
    self._float = jax.jit(lambda x: model.apply(params, x, train=False))

  def program(self, hw: rsjax.HardwareSpec, *, shared: bool, key=None,
              dataflow: str = "auto", **models):
    """Programs the model on ``hw``: index-and-add if ``shared``, else the
    dense layout of the same compressed model (same quantized numbers, a
    shared layer's BatchNorm kept digital as in index-and-add; folding it
    into the decompressed kernel would be another quantized model).
    ``models``: ``device``, ``wires``, ``adc`` (docs/devices.md).
    """
    return self.emulation.program(hw, index_and_add=shared, key=key,
                                  dataflow=dataflow, **models)

  def _batched(self, fn) -> np.ndarray:
    images, b = self.subject.images, self.batch_size
    out = []
    for start in range(0, len(images), b):
      x = images[start:start + b]
      n = len(x)
      if n < b:  # one batch shape, one compilation
        x = np.concatenate([x, np.zeros((b - n, *x.shape[1:]), x.dtype)])
      out.append(np.asarray(fn(jnp.asarray(x)))[:n])
    return np.concatenate(out)

  def logits(self, layers) -> np.ndarray:
    return self._batched(lambda x: self.emulation.logits(layers, x))

  def float_logits(self) -> np.ndarray:
    return self._batched(self._float)

  def accuracy(self, logits: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == self.subject.labels))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def grid(em: Emulator, *, ou_rows: Sequence[int], cell_bits: Sequence[int],
         adc_bits: Sequence[int]) -> list[dict[str, Any]]:
  """Accuracy vs ADC bits per (OU height, cell bits), dense layout."""
  rows = []
  for o in ou_rows:
    for c in cell_bits:
      hw = em.subject.hw.replace(ou_rows=int(o), cell_bits=int(c))
      lossless = hw.lossless_adc_bits
      exact = em.logits(em.program(hw.replace(adc_bits=lossless),
                                   shared=False, dataflow="exact"))
      row = {"ou_rows": int(o), "cell_bits": int(c),
             "block_shape": list(hw.block_shape),
             "p_max": hw.partial_sum_max, "lossless_adc_bits": lossless,
             "quantized": em.accuracy(exact), "adc": []}
      for b in sorted({int(x) for x in adc_bits} | {lossless}):
        logits = em.logits(em.program(hw.replace(adc_bits=b), shared=False,
                                      dataflow="sliced"))
        point = {"adc_bits": b, "accuracy": em.accuracy(logits),
                 "lossless": b >= lossless}
        if b >= lossless:
          point["max_abs_diff_vs_quantized"] = _max_diff(logits, exact)
        row["adc"].append(point)
      rows.append(row)
  return rows


def equality(em: Emulator, adc_bits: Sequence[int]) -> list[dict[str, Any]]:
  """Index-and-add vs the dense layout of the same weights, with each
  layout's energy per inference (:func:`rsjax.hardware_cost`, pJ; None at
  a resolution :class:`rsjax.CostModel` has no ADC figure for)."""
  sub = em.subject
  report = (models_lib.inference_report(sub.model, sub.params, sub.layers,
                                        sub.hw, sub.images.shape[1:])
            if sub.layers else None)
  out = []
  for b in sorted({int(x) for x in adc_bits}):
    hw = em.subject.hw.replace(adc_bits=b)
    shared = em.logits(em.program(hw, shared=True, dataflow="sliced"))
    dense = em.logits(em.program(hw, shared=False, dataflow="sliced"))
    energy = (None if report is None else
              models_lib.inference_energy(report, hw, ("shared", "dense")))
    out.append({"adc_bits": b, "shared": em.accuracy(shared),
                "dense": em.accuracy(dense),
                "max_abs_diff": _max_diff(shared, dense),
                "energy_pj": energy})
  return out


def _fault_device(kind: str, value: float) -> rk.Device:
  """The device of one fault setting: stuck-at cells (``value`` split
  evenly between level 0 and the top level) or Gaussian programming error
  of ``value`` levels; a zero setting is the ideal device."""
  if kind == "stuck":
    faults = rk.StuckAt(value / 2, value / 2)
    return rk.Device(faults=faults if faults.active else None)
  if kind == "program_sigma":
    programming = rk.Programming(value)
    return rk.Device(programming=programming if programming.active else None)
  raise ValueError(f"unknown fault kind {kind!r}")


def faults(em: Emulator, *, stuck_rates: Sequence[float],
           program_sigmas: Sequence[float], seeds: int,
           layouts: Sequence[str] = ("shared", "dense")
           ) -> list[dict[str, Any]]:
  """Accuracy over ``seeds`` keys per fault setting and layout."""
  out = []
  settings = ([("stuck", float(r)) for r in stuck_rates]
              + [("program_sigma", float(s)) for s in program_sigmas])
  for layout in layouts:
    for kind, value in settings:
      accs = []
      for seed in range(seeds):
        emulated = em.program(em.subject.hw, shared=layout == "shared",
                              device=_fault_device(kind, value),
                              key=jax.random.key(seed))
        accs.append(em.accuracy(em.logits(emulated)))
      out.append({"layout": layout, "kind": kind, "value": value,
                  "seeds": seeds, "mean": float(np.mean(accs)),
                  "std": float(np.std(accs, ddof=1)) if seeds > 1 else 0.0,
                  "min": float(np.min(accs)), "max": float(np.max(accs)),
                  "accuracies": accs})
  return out


def run_sweeps(subject: Subject, *, studies: Sequence[str] = DEFAULT_STUDIES,
               ou_rows: Sequence[int] = (8, 9, 16, 32),
               cell_bits: Sequence[int] = (1, 2, 4),
               adc_bits: Sequence[int] = (3, 4, 5, 6, 7, 8),
               stuck_rates: Sequence[float] = (0.001, 0.005, 0.01, 0.02,
                                               0.05),
               program_sigmas: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
               seeds: int = 16, batch_size: int = 500,
               device_options: dict[str, Any] | None = None,
               log=print) -> dict[str, Any]:
  """All asked-for studies on one subject; a JSON-able dict.

  ``device_options``: the real-array studies' settings, keywords of
  :data:`DEVICE_DEFAULTS`.
  """
  unknown = sorted(set(studies) - set(STUDIES))
  if unknown:
    raise ValueError(f"unknown studies {unknown}; known: {list(STUDIES)}")
  em = Emulator(subject, batch_size)
  start = time.perf_counter()
  float_logits = em.float_logits()
  result = {"run": subject.name, "hardware": subject.hw.to_dict(),
            "images": len(subject.images),
            "calibration_images": len(subject.calibration),
            "float": em.accuracy(float_logits), "timing_s": {}}
  if subject.layers:
    result["compression"] = rsjax.compression_report(
        subject.layers, subject.hw)["total"]
  fns = {
      "grid": lambda: grid(em, ou_rows=ou_rows, cell_bits=cell_bits,
                           adc_bits=adc_bits),
      "equality": lambda: equality(em, adc_bits),
      "faults": lambda: faults(em, stuck_rates=stuck_rates,
                               program_sigmas=program_sigmas, seeds=seeds),
  }
  opts = {**DEVICE_DEFAULTS, **(device_options or {})}
  unknown = sorted(set(opts) - set(DEVICE_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown device_options {unknown}")
  fns["onoff"] = lambda: sweeps_devices.onoff(
      em, ratios=opts["ratios"], seeds=opts["device_seeds"],
      r_wire=opts["onoff_r_wire"])
  fns["wires"] = lambda: sweeps_devices.wires(
      em, ou_rows=opts["wire_ou_rows"], resistances=opts["resistances"],
      on_off_ratio=opts["wire_on_off_ratio"])
  fns["drift"] = lambda: sweeps_devices.drift(
      em, times=opts["drift_times"], seeds=opts["device_seeds"],
      nu_min=opts["drift_nu_min"], nu_max=opts["drift_nu_max"],
      nu_std=opts["drift_nu_std"], on_off_ratio=opts["drift_on_off_ratio"])
  for study in STUDIES:
    if study in studies:
      t = time.perf_counter()
      result[study] = fns[study]()
      result["timing_s"][study] = time.perf_counter() - t
      log(f"{subject.name}: {study} done in "
          f"{result['timing_s'][study]:.0f} s")
  result["timing_s"]["total"] = time.perf_counter() - start
  return result


# The real-array studies' settings (the command line's defaults).
DEVICE_DEFAULTS = {
    # On/off ratios (0: infinite); its wire resistance row (0: none).
    "ratios": (10.0, 20.0, 50.0, 100.0, 1000.0, 0.0),
    "onoff_r_wire": 1e-4,
    # Wire segments (x Rmin) at each OU height, on/off ratio of the cells.
    "wire_ou_rows": (9, 16, 32, 64, 128),
    "resistances": (0.0, 1e-5, 1e-4, 1e-3),
    "wire_on_off_ratio": 20.0,
    # Seconds since programming: 1 s, 1 h, 1 day, 1 month, 1 year.
    "drift_times": (1.0, 3600.0, 86400.0, 2.592e6, 3.1536e7),
    # An assumption, not a fit to a measured ReRAM: a few % of conductance
    # a year at Gmax, more at low conductance, and a spread.
    "drift_nu_min": 0.01,
    "drift_nu_max": 0.002,
    "drift_nu_std": 0.003,
    "drift_on_off_ratio": 20.0,
    "device_seeds": 4,
}


# What every part of one study must agree on to be merged (the float
# accuracy too, to within one image: GPU kernels chosen per process may
# round one borderline image differently).
_SAME_IN_PARTS = ("run", "hardware", "images", "calibration_images")
# The key of a study's entry: two parts measuring the same one is an error.
_ENTRY_KEYS = {
    "grid": lambda e: (e["ou_rows"], e["cell_bits"]),
    "equality": lambda e: e["adc_bits"],
    "faults": lambda e: (e["layout"], e["kind"], e["value"]),
    "onoff": lambda e: (e["layout"], e["on_off_ratio"], e["effect"]),
    "wires": lambda e: (e["layout"], e["ou_rows"], e["r_wire"]),
    "drift": lambda e: (e["layout"], e["compensate"], e["t_s"]),
}


def merge(parts: Sequence[dict[str, Any]],
          missing: Sequence[str] = ()) -> dict[str, Any]:
  """Joins the JSON results of parts of one study into one.

  Args:
    parts: results of :func:`run_sweeps` on the same run, hardware, images
      and calibration (e.g. one per OU height), in the order wanted.
    missing: names of parts that did not finish (recorded as
      ``'missing_parts'``, so a partial study does not pass for a whole one).

  Returns:
    One result: every study's entries in part order, the times summed, the
    parts' commands in ``'commands'`` (and joined in ``'command'``); the
    first part's float accuracy, and every part's in ``'float_parts'`` when
    they differ (by at most one image).

  Raises:
    ValueError: no parts, parts of different runs or settings, float
      accuracies more than one image apart, or one entry (e.g. the grid row
      of an OU height and cell resolution) in two parts.
  """
  if not parts:
    raise ValueError("nothing to merge")
  first = parts[0]
  for i, part in enumerate(parts[1:], 1):
    for key in _SAME_IN_PARTS:
      if part.get(key) != first.get(key):
        raise ValueError(
            f"part {i} has another {key} ({part.get(key)!r}) than part 0 "
            f"({first.get(key)!r}): only parts of one study merge")
    one_image = 1.0 / max(int(first.get("images") or 1), 1)
    if abs(part["float"] - first["float"]) > one_image + 1e-9:
      raise ValueError(
          f"part {i} has float accuracy {part['float']} and part 0 "
          f"{first['float']}: more than one image apart, not one model")
  out = {key: first[key] for key in _SAME_IN_PARTS if key in first}
  out["float"] = first["float"]
  floats = [part["float"] for part in parts]
  if len(set(floats)) > 1:
    out["float_parts"] = floats
  if "compression" in first:
    out["compression"] = first["compression"]
  timing: dict[str, float] = {}
  for study, key_of in _ENTRY_KEYS.items():
    entries, seen = [], {}
    for i, part in enumerate(parts):
      for entry in part.get(study, []):
        key = key_of(entry)
        if key in seen:
          raise ValueError(f"{study} entry {key} is in part {seen[key]} and "
                           f"part {i}")
        seen[key] = i
        entries.append(entry)
    if any(study in part for part in parts):
      out[study] = entries
  for part in parts:
    for k, v in part.get("timing_s", {}).items():
      timing[k] = timing.get(k, 0.0) + v
  out["timing_s"] = timing
  out["commands"] = [c for part in parts
                     for c in part.get("commands", [part.get("command", "")])]
  out["command"] = " ; ".join(out["commands"])
  gone = [m for part in parts for m in part.get("missing_parts", [])]
  gone += list(missing)
  if gone:
    out["missing_parts"] = gone
  return out


def _main(argv):
  del argv
  if _MERGE.value:
    if not _OUT.value:
      raise app.UsageError("--merge needs --out")
    parts = []
    for path in _MERGE.value:
      with open(path) as f:
        parts.append(json.load(f))
    workdir_lib.write_file(
        _OUT.value, json.dumps(merge(parts, _MERGE_MISSING.value), indent=1))
    print(f"wrote {_OUT.value}")
    return
  if not _RUN.value:
    raise app.UsageError("--run is required (or --merge)")
  subject = load_subject(_RUN.value, limit=_LIMIT.value,
                         calibration=_CALIBRATION.value,
                         data_dir=_DATA_DIR.value or None,
                         source_dir=_SOURCE_DIR.value or None)
  if _SIGNED.value:
    subject = with_signed(subject, _SIGNED.value)
  result = run_sweeps(
      subject, studies=_STUDIES.value,
      ou_rows=[int(x) for x in _OU_ROWS.value],
      cell_bits=[int(x) for x in _CELL_BITS.value],
      adc_bits=[int(x) for x in _ADC_BITS.value],
      stuck_rates=[float(x) for x in _STUCK.value],
      program_sigmas=[float(x) for x in _SIGMA.value], seeds=_SEEDS.value,
      batch_size=_BATCH.value, device_options={
          "ratios": [float(x) for x in _RATIOS.value],
          "onoff_r_wire": _ONOFF_R_WIRE.value,
          "wire_ou_rows": [int(x) for x in _WIRE_OU_ROWS.value],
          "resistances": [float(x) for x in _RESISTANCES.value],
          "wire_on_off_ratio": _WIRE_ON_OFF.value,
          "drift_times": [float(x) for x in _DRIFT_TIMES.value],
          "drift_nu_min": _NU_MIN.value, "drift_nu_max": _NU_MAX.value,
          "drift_nu_std": _NU_STD.value,
          "drift_on_off_ratio": _DRIFT_ON_OFF.value,
          "device_seeds": _DEVICE_SEEDS.value})
  result["command"] = " ".join(["python -m experiments.study.sweeps"]
                               + sys.argv[1:])
  out = _OUT.value or os.path.join(
      os.path.dirname(os.path.normpath(_RUN.value)), "sweeps",
      subject.name + ".json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  workdir_lib.write_file(out, json.dumps(result, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  _RUN = flags.DEFINE_string("run", None, "A finished run's workdir.")
  _MERGE = flags.DEFINE_list(
      "merge", [], "Instead of a run: sweep JSON files (parts of one study) "
      "to merge into --out.")
  _MERGE_MISSING = flags.DEFINE_list(
      "merge_missing", [], "With --merge: parts that did not finish (noted "
      "in the merged file).")
  _OUT = flags.DEFINE_string(
      "out", "", "JSON to write; '' is RUNS_DIR/sweeps/NAME.json.")
  _LIMIT = flags.DEFINE_integer("limit", 2000, "Test images (0: all).")
  _CALIBRATION = flags.DEFINE_integer(
      "calibration", 1000, "Training images for the input scales.")
  _STUDIES = flags.DEFINE_list(
      "studies", list(DEFAULT_STUDIES),
      f"Studies to run, of {', '.join(STUDIES)}.")
  _OU_ROWS = flags.DEFINE_list("ou_rows", ["8", "9", "16", "32"],
                               "OU heights of the grid.")
  _CELL_BITS = flags.DEFINE_list("cell_bits", ["1", "2", "4"],
                                 "Cell resolutions of the grid.")
  _ADC_BITS = flags.DEFINE_list("adc_bits", ["3", "4", "5", "6", "7", "8"],
                                "ADC resolutions.")
  _STUCK = flags.DEFINE_list("stuck_rates",
                             ["0.001", "0.005", "0.01", "0.02", "0.05"],
                             "Stuck-at fault rates (half SA0, half SA1).")
  _SIGMA = flags.DEFINE_list("program_sigmas",
                             ["0.05", "0.1", "0.2", "0.3", "0.5"],
                             "Programming variation, in cell levels.")
  _SEEDS = flags.DEFINE_integer("seeds", 16, "Keys per fault setting.")
  _d = DEVICE_DEFAULTS
  _RATIOS = flags.DEFINE_list("ratios", [f"{v:g}" for v in _d["ratios"]],
                              "onoff: on/off ratios (0: infinite).")
  _ONOFF_R_WIRE = flags.DEFINE_float(
      "onoff_r_wire", _d["onoff_r_wire"],
      "onoff: wire segment resistance (x Rmin) of its IR-drop rows; 0: none.")
  _WIRE_OU_ROWS = flags.DEFINE_list(
      "wire_ou_rows", [str(v) for v in _d["wire_ou_rows"]],
      "wires: OU heights.")
  _RESISTANCES = flags.DEFINE_list(
      "resistances", [f"{v:g}" for v in _d["resistances"]],
      "wires: wire segment resistances, x Rmin.")
  _WIRE_ON_OFF = flags.DEFINE_float("wire_on_off_ratio",
                                    _d["wire_on_off_ratio"],
                                    "wires: the cells' on/off ratio.")
  _DRIFT_TIMES = flags.DEFINE_list(
      "drift_times", [f"{v:g}" for v in _d["drift_times"]],
      "drift: seconds since programming.")
  _NU_MIN = flags.DEFINE_float("drift_nu_min", _d["drift_nu_min"],
                               "drift: exponent at G = 0.")
  _NU_MAX = flags.DEFINE_float("drift_nu_max", _d["drift_nu_max"],
                               "drift: exponent at Gmax.")
  _NU_STD = flags.DEFINE_float("drift_nu_std", _d["drift_nu_std"],
                               "drift: per-cell spread of the exponent.")
  _DRIFT_ON_OFF = flags.DEFINE_float("drift_on_off_ratio",
                                     _d["drift_on_off_ratio"],
                                     "drift: the cells' on/off ratio.")
  _DEVICE_SEEDS = flags.DEFINE_integer(
      "device_seeds", _d["device_seeds"],
      "onoff, drift: keys per random setting.")
  _BATCH = flags.DEFINE_integer("batch_size", 500, "Emulation batch size.")
  _SIGNED = flags.DEFINE_enum(
      "signed", "", ["", "offset", "differential"],
      "Program the run's weights in this signed mapping ('': the run's).")
  _DATA_DIR = flags.DEFINE_string("data_dir", "", "Override the TFDS dir.")
  _SOURCE_DIR = flags.DEFINE_string("source_dir", "",
                                    "Override the Fashion-MNIST IDX dir.")
  app.run(_main)
