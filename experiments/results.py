"""A finished run's report: ``results.json`` (its keys: docs/experiments.md),
the CSV, the plots, a summary table. With a per-layer budget ``recipe`` also
holds ``allocate_objective`` and ``allocate_target``."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Mapping

import rsjax

from experiments import evaluation
from experiments import models as models_lib
from experiments import workdir as workdir_lib

COMPRESSION_KEYS = ("ou_ratio", "bit_ratio", "fp32_ratio", "crossbar_ratio",
                    "stored_ous", "dense_ous", "index_bits")


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save_fig(fig, path):
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
  _pyplot().close(fig)
  workdir_lib.write_file(path, buf.getvalue())


def plot_sweep(path, sweep, title, references):
  fig, ax = _pyplot().subplots(figsize=(5, 3.5))
  bits = [s["adc_bits"] for s in sweep]
  ax.plot(bits, [s["accuracy"] for s in sweep], "o-", label="emulated")
  for (name, value), style in zip(references.items(), ("--", ":")):
    if value is not None:
      ax.axhline(value, color="gray", linestyle=style, label=name)
  priced = [s for s in sweep if s.get("energy_pj") is not None]
  if priced:
    # Energy on its own axis: it is what a resolution costs beside what it
    # keeps of the accuracy.
    energy_ax = ax.twinx()
    energy_ax.plot([s["adc_bits"] for s in priced],
                   [s["energy_pj"] * 1e-3 for s in priced], "s--",
                   color="C1", label=f"energy ({priced[0]['layout']})")
    energy_ax.set_ylabel("energy per inference (nJ)", color="C1")
    energy_ax.legend(fontsize=8, loc="lower right")
  ax.set_xticks(bits)
  ax.legend(fontsize=8, loc="center right")
  ax.set_xlabel("ADC bits")
  ax.set_ylabel("accuracy")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  _save_fig(fig, path)


def plot_layers(path, layer_figs, title):
  names = list(layer_figs)
  ratios = [float(layer_figs[n].get("ou_ratio") or 0.0) for n in names]
  short = [n.removeprefix("params/").removesuffix("/kernel") for n in names]
  fig, ax = _pyplot().subplots(figsize=(max(5, 0.5 * len(names) + 2), 3.5))
  ax.bar(range(len(names)), ratios)
  ax.set_xticks(range(len(names)), short, rotation=60, ha="right",
                fontsize=7)
  ax.set_ylabel("OU-level compression (x)")
  ax.set_title(title)
  fig.tight_layout()
  _save_fig(fig, path)


SWEEP_CSV_COLUMNS = ("adc_bits", "accuracy", "energy_pj", "layout")


def _sweep_csv(sweep) -> str:
  """One row per ADC resolution; energy and layout empty where the sweep
  has none (runs before the energy was added, or no ADC figure)."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(SWEEP_CSV_COLUMNS)
  for s in sweep:
    writer.writerow(["" if s.get(k) is None else s[k]
                     for k in SWEEP_CSV_COLUMNS])
  return out.getvalue()


def write(run, wall_s: float) -> dict[str, Any]:
  """Writes results.json, the CSV and the plots of a finished run.

  Args:
    run: the :class:`experiments.pipeline.Run`, every stage done.
    wall_s: this invocation's wall time so far.

  Returns:
    The results (JSON values).
  """
  variables, layers, _ = evaluation.load_model(run.model_file, run.hw)
  report = models_lib.inference_report(run.compress_model, variables,
                                       layers, run.hw, run.info.image_shape)
  evaluated = run.results("evaluate")
  accuracy = {k: evaluated[k]
              for k in ("float", "quantized", "compressed", "emulated")}
  detail = {"compressed_quantized": evaluated["compressed_quantized"],
            "emulated_calibration": evaluated.get("emulated_calibration")}
  for stage in run.recipe.stages:
    detail[f"after_{stage}"] = run.results(stage)[f"accuracy_{stage}"]
  recipe = dict(run.recipe_json)
  sc = run.config.share
  if sc.allocate_ou_ratio or sc.allocate_target:
    recipe["allocate_objective"] = sc.allocate_objective
    recipe["allocate_target"] = sc.allocate_target or sc.allocate_ou_ratio
    if sc.allocate_objective == "ou_ratio":
      recipe["allocate_ou_ratio"] = recipe["allocate_target"]
    recipe["allocated_rules"] = run.results("share")["allocated_rules"]
  if run.applies("hwaware"):
    hwaware = run.results("hwaware")
    for k in ("steps", "adc_bits", "adc_mode", "emulated_before",
              "emulated_after", "emulated_lossless_before",
              "emulated_after_fresh_calibration", "emulated_calibration"):
      detail[f"hwaware_{k}"] = hwaware.get(k)
  sweep = run.results("adc_sweep")["sweep"]
  timing = {s: v["time_s"] for s, v in run.state["stages"].items()}
  # Stage times are from the invocations that ran them; 'total' is the
  # compute the results cost, 'this_invocation' this call's wall time.
  timing["total"] = sum(timing.values())
  timing["this_invocation"] = wall_s
  results = workdir_lib.jsonable({
      "model": run.config.model.name,
      "dataset": run.config.data.name,
      "config": workdir_lib.config_json(run.config),
      "recipe": recipe,
      "hardware": run.hw.to_dict(),
      "provenance": run.provenance,
      "accuracy": accuracy,
      "accuracy_detail": detail,
      "compression": dict(report["total"]),
      "layers": dict(report["layers"]),
      "hardware_cost": rsjax.hardware_cost(report, run.hw)["layouts"],
      "adc_sweep": sweep,
      "timing_s": timing,
  })
  workdir = run.workdir
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  workdir_lib.write_file(os.path.join(workdir, "adc_sweep.csv"),
                           _sweep_csv(sweep))
  title = f"{run.config.model.name} / {run.config.data.name}"
  if sweep:
    plot_sweep(os.path.join(workdir, "accuracy_vs_adc_bits.png"), sweep,
               title, {"float": accuracy["float"],
                       "compressed (float)": accuracy["compressed"]})
  plot_layers(os.path.join(workdir, "layer_compression.png"),
              results["layers"], title)
  return results


def summary_table(results: Mapping[str, Any]) -> str:
  """A plain-text summary of a results dict."""
  def fmt(v, spec=".4f"):
    if v is None:
      return "n/a"
    if isinstance(v, str):
      return v
    return format(v, spec)

  rows = [("model", results["model"]), ("dataset", results["dataset"]),
          ("recipe", f"{results['recipe']['variant']}: "
                     f"{', '.join(results['recipe']['rules']) or '-'}")]
  for k, v in results["accuracy"].items():
    rows.append((f"accuracy {k}", fmt(v)))
  for k in COMPRESSION_KEYS:
    v = results["compression"].get(k)
    rows.append((k, fmt(v, ".2f" if "ratio" in k else ",.0f")))
  cost = results["hardware_cost"]
  if cost:
    rows.append(("energy / inference", ", ".join(
        f"{layout} {c['energy_pj']['total'] / 1e6:.3f} uJ"
        for layout, c in cost.items())))
  if results["adc_sweep"]:
    rows.append(("adc sweep", ", ".join(
        f"{s['adc_bits']}b: {s['accuracy']:.4f}"
        + ("" if s.get("energy_pj") is None
           else f" ({s['energy_pj'] / 1e3:,.1f} nJ {s['layout']})")
        for s in results["adc_sweep"])))
  else:
    rows.append(("adc sweep", "skipped (no emulation)"))
  commit = results["provenance"].get("commit") or "unknown"
  dirty = " (dirty tree)" if results["provenance"].get("dirty") else ""
  rows.append(("commit", commit[:12] + dirty))
  for k, v in results["timing_s"].items():
    rows.append((f"time {k} (s)", f"{v:.1f}"))
  width = max(len(r[0]) for r in rows)
  line = "-" * (width + 30)
  return "\n".join([line] + [f"{a:<{width}}  {b}" for a, b in rows] + [line])
