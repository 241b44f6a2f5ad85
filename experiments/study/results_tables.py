"""The Markdown tables of the results, and how their cells are formatted.

Per model: the runs (:func:`model_table`), the hardware counts
(:func:`cost_table`) and the energy, latency and area per inference
(:func:`energy_table`) of the point standing for each layout; the points
run with several seeds (:func:`seed_table`); the hardware-aware fine-tune
runs (:func:`hwaware_table`); and the sentence on the commits, versions and
device the figures come from (:func:`provenance_text`). The rows come from
:mod:`experiments.study.results_data` and
:mod:`experiments.study.results_summary`;
:mod:`experiments.study.results` puts the tables together.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from experiments.study import results_data
from experiments.study import results_summary

def format_cell(x, spec: str) -> str:
  """A table cell: ``x`` formatted with ``spec``; ``'n/a'`` for None,
  strings as they are, ``'inf'`` for an infinite float."""
  if x is None:
    return "n/a"
  if isinstance(x, str):
    return x
  if isinstance(x, float) and math.isinf(x):
    return "inf"
  return format(x, spec)


def format_duration(seconds: float | None) -> str:
  """Seconds as ``m:ss``; ``'n/a'`` for None."""
  if seconds is None:
    return "n/a"
  m, s = divmod(int(round(seconds)), 60)
  return f"{m}:{s:02d}"


_HEADER = ("| run | variant | rules | method | float | compressed | "
           "emulated | loss (pp) | ou_ratio | bit_ratio | crossbar_ratio | "
           "time (m:s) |")


def headline_table(points: Sequence[Mapping[str, Any]]) -> str:
  """Markdown: per model, the point with the highest ``ou_ratio`` within
  :data:`experiments.study.results_data.MAX_LOSS_PP` (:func:`results_data.headline`
  of the :func:`results_data.point_rows`)."""
  max_loss = results_data.MAX_LOSS_PP
  lines = ["| model | dataset | run | variant | ou_ratio | bit_ratio | "
           "crossbar_ratio | float | compressed | loss (pp) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for m in sorted({p["model"] for p in points}):
    h = results_data.headline(p for p in points if p["model"] == m)
    if h is None:
      lines.append(f"| {m} | | none within {max_loss} pp | | | | | | | |")
      continue
    lines.append("| " + " | ".join([
        m, h["dataset"], h["name"], h["variant"],
        format_cell(h["ou_ratio"], ".2f"), format_cell(h["bit_ratio"], ".2f"),
        format_cell(h["crossbar_ratio"], ".2f"), format_cell(h["float"], ".4f"),
        format_cell(h["compressed"], ".4f"),
        format_cell(h["loss_pp"], "+.2f")]) + " |")
  return "\n".join(lines)


def model_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A Markdown table of one model's rows (baseline first, then by variant
  and ``ou_ratio``)."""
  order = {v: i for i, v in enumerate(results_data.VARIANTS)}
  lines = [_HEADER, "|" + "---|" * _HEADER.count(" | ") + "---|"]
  baselines = [r for r in rows if r["baseline"]]
  for r in baselines:
    lines.append(
        f"| {r['name']} | float baseline | - | - | "
        f"{format_cell(r['float'], '.4f')}"
        " | - | - | - | 1.00 | 1.00 | 1.00 | "
        f"{format_duration(r['train_s'])} (training) |")
  for r in sorted(rows, key=lambda r: (
      order[results_data.base_variant(r["variant"])], r["variant"],
      r["ou_ratio"] or 0.0, r["name"])):
    lines.append("| " + " | ".join([
        r["name"] + (" (baseline run)" if r["baseline"] else ""),
        r["variant"], r["rules"], r["method"],
        format_cell(r["float"], ".4f"), format_cell(r["compressed"], ".4f"),
        format_cell(r["emulated"], ".4f"), format_cell(r["loss_pp"], "+.2f"),
        format_cell(r["ou_ratio"], ".2f"), format_cell(r["bit_ratio"], ".2f"),
        format_cell(r["crossbar_ratio"], ".2f"),
        format_duration(r["time_s"])]) + " |")
  return "\n".join(lines)


def _vs(value, ref, spec: str = ",.0f") -> str:
  """``value``, with ``ref / value`` as ``(N.NNx)`` when a ``ref`` is
  given and differs."""
  if value is None:
    return "n/a"
  if not ref or value == ref:
    return format(value, spec)
  return f"{format(value, spec)} ({ref / value:.2f}x)" if value else "0"


def _point_label(rep: Mapping[str, Any], within: bool) -> str:
  return rep["name"] + (
      "" if within else f" (none within {results_data.MAX_LOSS_PP} pp)")


def cost_table(runs: Sequence[Mapping[str, Any]]) -> str:
  """Per-inference hardware counts of one model's layouts (Markdown).

  One row per :func:`results_summary.layout_points`. Adds are the digital
  additions that accumulate ADC outputs into output columns: one per ADC
  output routed to a kept (non-pruned) logical OU, i.e. the pruned
  mapping's conversions; index-and-add saves conversions, not additions.
  """
  points = results_summary.layout_points(runs)
  if not points:
    return ""
  dense = points[0][3]["compression"]
  if "ou_activations_dense" not in dense:  # a report without the figures
    return ""
  head = ("| layout | run | loss (pp) | crossbars | OU activations | "
          "ADC conversions | adds | index bits | stored bits |")
  lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
  d_act, d_adc = dense["ou_activations_dense"], dense["adc_conversions_dense"]
  lines.append(
      f"| dense | {points[0][1]['name']} | - | "
      f"{_vs(dense['dense_crossbars'], 0)} | {_vs(d_act, 0)} | "
      f"{_vs(d_adc, 0)} | {_vs(d_adc, 0)} | 0 | "
      f"{_vs(dense['dense_bits'], 0)} |")
  for layout, rep, within, res in points[1:]:
    if rep is None:
      lines.append(f"| {layout} | no run | | | | | | | |")
      continue
    c = res["compression"]
    lines.append("| " + " | ".join([
        layout, _point_label(rep, within), format_cell(rep["loss_pp"], "+.2f"),
        _vs(c.get("packed_crossbars"), dense["dense_crossbars"]),
        _vs(c.get("ou_activations_shared"), d_act),
        _vs(c.get("adc_conversions_shared"), d_adc),
        _vs(c.get("adc_conversions_pruned"), d_adc),
        _vs(c.get("index_bits"), 0),
        _vs(c.get("compressed_bits"), dense["dense_bits"])]) + " |")
  return "\n".join(lines)


# The columns of the energy table: (header, key of layout_cost, scale, format).
ENERGY_COLUMNS = (("energy (nJ)", "energy_pj", 1e-3, ",.1f"),
                  ("ADC (nJ)", "adc_pj", 1e-3, ",.1f"),
                  ("index+add (nJ)", "index_add_pj", 1e-3, ",.2f"),
                  ("latency (us)", "latency_ns", 1e-3, ",.1f"),
                  ("interval (us)", "interval_ns", 1e-3, ",.1f"),
                  ("core area (mm^2)", "core_area_um2", 1e-6, ".4f"),
                  ("area (mm^2)", "area_um2", 1e-6, ".4f"))


def energy_table(runs: Sequence[Mapping[str, Any]]) -> str:
  """Energy, latency and area per inference of one model's layouts.

  The rows of :func:`cost_table` (:func:`results_summary.layout_points`),
  each priced in the layout its run's model uses (``dense``: the baseline's
  dense mapping), priced by :func:`results_data.hardware_cost`;
  ``(N.NNx)`` is dense over the row. Empty without a baseline or a hardware cost in its run.
  """
  points = results_summary.layout_points(runs)
  dense = results_data.layout_cost(points[0][3], "dense") if points else None
  if dense is None:
    return ""
  head = ["layout", "run", "loss (pp)", "run's layout"] + [
      name for name, _, _, _ in ENERGY_COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def cells(cost, ref):
    return [cost["layout"]] + [
        _vs(None if cost[key] is None else cost[key] * scale,
            ref and ref[key] * scale, spec)
        for _, key, scale, spec in ENERGY_COLUMNS]

  lines.append("| " + " | ".join(["dense", points[0][1]["name"], "-"]
                                 + cells(dense, None)) + " |")
  for layout, rep, within, res in points[1:]:
    cost = None if res is None else results_data.layout_cost(res)
    if cost is None:
      lines.append(f"| {layout} | {'no run' if rep is None else rep['name']}"
                   + " |" * (len(head) - 1))
      continue
    lines.append("| " + " | ".join(
        [layout, _point_label(rep, within), format_cell(rep["loss_pp"], "+.2f")]
        + cells(cost, dense)) + " |")
  return "\n".join(lines)


def latency_note(runs: Sequence[Mapping[str, Any]]) -> str:
  """The note under :func:`energy_table` when a row's latency is n/a: what
  is missing and the re-run that records it (every seed of a point)."""
  points = results_summary.layout_points(runs)
  groups = {g[0]["name"]: [r["name"] for r in g]
            for g in results_data.seed_groups(runs)}
  names = []
  for label, rep, _, res in points:
    cost = None if res is None else results_data.layout_cost(
        res, "dense" if label == "dense" else None)
    if cost is not None and cost["latency_ns"] is None:
      names += [n for n in groups.get(rep["run"], [rep["run"]])
                if n not in names]
  if not names:
    return ""
  return ("Latency and interval are n/a where a run's per-layer report lacks "
          "each layer's busiest crossbar (`crossbar_ous_*`) and its counts "
          "do not give it (pruned or shared blocks spread over several "
          "crossbars); energy and area need only the counts. Re-running "
          "the points records it: `python -m experiments.study.grid "
          "--grid=<their grid file> --runs_dir=experiments/study/runs --only='^("
          + "|".join(names) + ")$'`.")


def seed_table(runs: Sequence[Mapping[str, Any]]) -> str:
  """Mean ± std (n - 1) over seeds of every point run with several.

  Seeds that allocated different per-layer ``k`` show each plan and the
  mean ``ou_ratio`` with its range.
  """
  lines = ["| model | runs | variant | rules | method | seeds | ou_ratio | "
           "compressed (mean ± std) | loss pp (mean ± std) | loss pp "
           "min-max |", "|---|---|---|---|---|---|---|---|---|---|"]
  for group in results_data.seed_groups(runs):
    rows = [results_data.row(r) for r in group]
    seeds = [r["config"].get("seed", 0) for r in group]
    comp = results_data.mean_std([r["compressed"] for r in rows])
    loss = results_data.mean_std([r["loss_pp"] for r in rows])
    first = rows[0]
    ratio = format_cell(results_data.group_mean(rows, "ou_ratio"), ".2f")
    ratios = [r["ou_ratio"] for r in rows]
    if None not in ratios and len(set(ratios)) > 1:
      ratio += f" ({min(ratios):.2f} to {max(ratios):.2f})"
    lines.append("| " + " | ".join([
        first["model"], ", ".join(r["name"] for r in rows), first["variant"],
        results_data.group_rules(rows, seeds), first["method"],
        ", ".join(str(s) for s in seeds), ratio,
        f"{comp[0]:.4f} ± {comp[1]:.4f}", f"{loss[0]:+.2f} ± {loss[1]:.2f}",
        f"{min(r['loss_pp'] for r in rows):+.2f} to "
        f"{max(r['loss_pp'] for r in rows):+.2f}"]) + " |")
  return "\n".join(lines) if len(lines) > 2 else ""


def provenance_text(runs: Sequence[Mapping[str, Any]]) -> str:
  """The sentence naming the runs' commits, library versions, device and
  CPU model."""
  found = results_data.commits(runs)
  parts = [f"`{c[:12]}{c[40:]}` ({len(n)} run{'s' if len(n) > 1 else ''})"
           for c, n in sorted(found.items())]
  versions = (runs[0].get("provenance") or {}).get("versions") or {}
  devices = (runs[0].get("provenance") or {}).get("devices") or {}
  libs = ", ".join(f"{k} {versions[k]}" for k in ("jax", "jaxlib", "flax",
                                                  "optax") if versions.get(k))
  cpu = (runs[0].get("provenance") or {}).get("cpu")
  device = (f"; device {devices.get('kind')} x{devices.get('count')}"
            if devices else "") + (f", CPU {cpu}" if cpu else "")
  return (f"Computed at commit{'s' if len(found) > 1 else ''} "
          f"{', '.join(parts)}" + (f"; {libs}" if libs else "") + device +
          " (the first run's versions and device).")


def hwaware_table(runs: Sequence[Mapping[str, Any]]) -> str:
  """Markdown: emulated accuracy before and after the hardware-aware
  fine-tune, against the lossless emulation before it."""
  head = ("| model | run | ADC | steps | test images | lossless before | "
          "ADC before | ADC after | after - lossless (pp) | "
          "float after | lossless after |")
  lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
  for h in results_data.hwaware_rows(runs):
    lines.append("| " + " | ".join([
        h["model"], h["run"], f"{h['adc_bits']}-bit {h['adc_mode']}",
        str(h["steps"]), str(h["images"]),
        format_cell(h["emulated_lossless_before"], ".4f"),
        format_cell(h["emulated_before"], ".4f"),
        f"**{format_cell(h['emulated_after'], '.4f')}**",
        format_cell(h["after_minus_lossless_pp"], "+.2f"),
        format_cell(h["float_after"], ".4f"),
        format_cell(h["emulated_lossless_after"], ".4f")]) + " |")
  return "\n".join(lines)
