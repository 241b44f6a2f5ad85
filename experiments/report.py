"""A finished run's report: ``results.json``, the CSV, the plots, a summary.

``results.json`` holds ``model``, ``dataset``, ``config``, ``recipe``
(variant, stages, rules, sharing, distillation; with ``share.
allocate_ou_ratio`` the target and the allocated rules), ``hardware``,
``provenance`` (commit, dirty tree, library versions, devices),
``accuracy`` {float, quantized, compressed, emulated}, ``accuracy_detail``,
``compression`` (the totals of :func:`rsjax.compression_report`, headline
``ou_ratio``), ``layers``, ``cost`` (energy, latency and area per
inference of the dense, pruned and shared layouts at the run's ADC,
:func:`rsjax.inference_cost`), ``adc_sweep`` and ``timing_s``.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import rsjax

from experiments import stages as stages_lib
from experiments import workdir as workdir_lib

COMPRESSION_KEYS = ("ou_ratio", "bit_ratio", "fp32_ratio", "crossbar_ratio",
                    "stored_ous", "dense_ous", "index_bits")


def layer_positions(model, variables, image_shape) -> dict[str, int]:
  """MVMs per inference of each kernel path: a conv's output pixels."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)

  def apply(x):
    return model.apply(variables, x, train=False,
                       capture_intermediates=True, mutable=["intermediates"])

  _, state = jax.eval_shape(apply, x)
  inter = dict(rsjax.named_leaves(state["intermediates"]))
  out = {}
  for path, leaf in rsjax.named_leaves(variables):
    if not path.endswith("/kernel"):
      continue
    module = path[len("params/"):-len("/kernel")]
    shape = inter.get(f"{module}/__call__/0")
    if shape is not None:
      out[path] = int(np.prod(shape.shape[1:-1])) if leaf.ndim == 4 else 1
  return out


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save_fig(fig, path):
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
  _pyplot().close(fig)
  workdir_lib.atomic_write(path, buf.getvalue())


def plot_sweep(path, sweep, title, references):
  fig, ax = _pyplot().subplots(figsize=(5, 3.5))
  bits = [s["adc_bits"] for s in sweep]
  ax.plot(bits, [s["accuracy"] for s in sweep], "o-", label="emulated")
  for (name, value), style in zip(references.items(), ("--", ":")):
    if value is not None:
      ax.axhline(value, color="gray", linestyle=style, label=name)
  ax.set_xticks(bits)
  ax.legend(fontsize=8)
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


def _sweep_csv(sweep) -> str:
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["adc_bits", "accuracy"])
  for s in sweep:
    writer.writerow([s["adc_bits"], s["accuracy"]])
  return out.getvalue()


def write(run, wall_s: float) -> dict[str, Any]:
  """Writes results.json, the CSV and the plots of a finished run.

  Args:
    run: the :class:`experiments.pipeline.Run`, every stage done.
    wall_s: this invocation's wall time so far.

  Returns:
    The results (JSON values).
  """
  variables, layers = stages_lib.load_model(run)
  positions = layer_positions(run.compress_model, variables,
                              run.info.image_shape)
  report = rsjax.compression_report(layers, run.hw, positions)
  evaluated = run.results("evaluate")
  accuracy = {k: evaluated[k]
              for k in ("float", "quantized", "compressed", "emulated")}
  detail = {"compressed_quantized": evaluated["compressed_quantized"]}
  for stage in ("prune", "share", "finetune", "hwaware"):
    if run.applies(stage):
      detail[f"after_{stage}"] = run.results(stage)[f"accuracy_{stage}"]
  recipe = dict(run.recipe_json)
  if run.config.share.allocate_ou_ratio:
    recipe["allocate_ou_ratio"] = run.config.share.allocate_ou_ratio
    recipe["allocated_rules"] = run.results("share")["allocated_rules"]
  if run.applies("hwaware"):
    hwaware = run.results("hwaware")
    for k in ("steps", "adc_bits", "adc_mode", "emulated_before",
              "emulated_after", "emulated_lossless_before"):
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
      "cost": rsjax.inference_cost(report, run.hw)["layouts"],
      "adc_sweep": sweep,
      "timing_s": timing,
  })
  workdir = run.workdir
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  workdir_lib.atomic_write(os.path.join(workdir, "adc_sweep.csv"),
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
  cost = results.get("cost")
  if cost:
    rows.append(("energy / inference", ", ".join(
        f"{layout} {c['energy_pj']['total'] / 1e6:.3f} uJ"
        for layout, c in cost.items())))
  if results["adc_sweep"]:
    rows.append(("adc sweep", ", ".join(
        f"{s['adc_bits']}b: {s['accuracy']:.4f}"
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
