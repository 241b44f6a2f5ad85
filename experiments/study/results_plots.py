"""The plots of the results (matplotlib, imported only when drawing).

:func:`pareto_plot`: compressed accuracy against each compression ratio of
:data:`PARETO_METRICS`, one column per model, with the Pareto front, the
float accuracy and the loss limit. :func:`energy_plot`: compressed accuracy
against energy per inference, one panel per model, the float baseline at
its dense energy and the headline ringed. Both mark each variant alike and
write the PNG atomically.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from experiments.study import results_data

PARETO_METRICS = (("ou_ratio", "dense OUs / stored OUs"),
                  ("bit_ratio", "dense bits / stored bits + index"),
                  ("crossbar_ratio", "dense / packed crossbars"))


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


# One marker and colour per compressed variant, in both plots.
_MARKERS = dict(zip(results_data.VARIANTS[1:], "o^sD"))
_COLORS = dict(zip(results_data.VARIANTS[1:], ("C0", "C1", "C2", "C3")))


def _finish_panel(ax, xlabel: str, title: str) -> None:
  """A log x axis labelled at 1, 2 and 5 times powers of ten, plainly; the
  accuracy axis, title, grid and legend."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test accuracy (compressed, float eval)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)


def _save_plot(fig, path: str) -> None:
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  _pyplot().close(fig)
  os.replace(tmp, path)


def pareto_plot(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  """Compressed accuracy vs each of :data:`PARETO_METRICS` (one row of
  panels per metric, one column per model), one series per variant, the
  float baseline and the 0.5 pp line dashed."""
  plt = _pyplot()
  models = sorted({r["model"] for r in rows})
  cols = max(len(models), 1)
  fig, axes = plt.subplots(len(PARETO_METRICS), cols,
                           figsize=(5.5 * cols, 4.2 * len(PARETO_METRICS)),
                           squeeze=False)
  for (metric, meaning), ax_row in zip(PARETO_METRICS, axes):
    for ax, model in zip(ax_row, models):
      mrows = [r for r in rows if r["model"] == model]
      for v in sorted({r["variant"] for r in mrows}):
        pts = sorted((r for r in mrows if r["variant"] == v
                      and r[metric] is not None
                      and r["compressed"] is not None),
                     key=lambda r: r[metric])
        b = results_data.base_variant(v)
        if pts and b in _MARKERS:
          ax.plot([r[metric] for r in pts], [r["compressed"] for r in pts],
                  marker=_MARKERS[b], color=_COLORS[b], label=v,
                  linestyle="--" if v != b else "-",
                  fillstyle="none" if v != b else "full")
      front = results_data.pareto_front(mrows, metric)
      if front:
        ax.plot([r[metric] for r in front], [r["compressed"] for r in front],
                color="k", alpha=0.3, linewidth=4, label="Pareto front")
      floats = [r["float"] for r in mrows if r["float"] is not None]
      if floats:
        f = floats[0]
        ax.axhline(f, color="k", linestyle="--", linewidth=1, label="float")
        max_loss = results_data.MAX_LOSS_PP
        ax.axhline(f - max_loss / 100, color="r", linestyle=":",
                   linewidth=1, label=f"float - {max_loss} pp")
      _finish_panel(ax, f"{metric} ({meaning})",
                    f"{model} / {mrows[0]['dataset']}")
  _save_plot(fig, path)


def energy_plot(runs: Sequence[Mapping[str, Any]], path: str) -> None:
  """Compressed accuracy vs energy per inference, one panel per model:
  every run a point (in the layout its model uses, one marker per variant),
  the float baseline at its dense energy, the headline ringed."""
  plt = _pyplot()

  rows = [results_data.row(r) for r in runs]
  points = results_data.point_rows(runs)
  models = sorted({r["model"] for r in rows})
  fig, axes = plt.subplots(1, max(len(models), 1),
                           figsize=(5.5 * max(len(models), 1), 4.2),
                           squeeze=False)
  for ax, model in zip(axes[0], models):
    mrows = [r for r in rows if r["model"] == model]
    for v in sorted({r["variant"] for r in mrows}):
      pts = [r for r in mrows if r["variant"] == v
             and r["energy_pj"] is not None and r["compressed"] is not None]
      b = results_data.base_variant(v)
      if pts:
        ax.plot([r["energy_pj"] * 1e-3 for r in pts],
                [r["compressed"] for r in pts], linestyle="none",
                marker=_MARKERS.get(b, "x"), color=_COLORS.get(b, "k"),
                fillstyle="none" if v != b else "full",
                label=f"{v} ({pts[0]['layout']})")
    base = next((r for r in runs
                 if r["model"] == model and results_data.is_baseline(r)),
                None)
    dense = None if base is None else results_data.layout_cost(base, "dense")
    if dense is not None and results_data.row(base)["float"] is not None:
      ax.plot([dense["energy_pj"] * 1e-3], [results_data.row(base)["float"]],
              "k*", markersize=11, label="float baseline (dense)")
    h = results_data.headline(p for p in points if p["model"] == model)
    if h is not None and h["energy_pj"] is not None:
      ax.plot([h["energy_pj"] * 1e-3], [h["compressed"]], "o", markersize=16,
              markerfacecolor="none", markeredgecolor="r",
              label=f"headline {h['name']}")
    _finish_panel(ax, "energy per inference (nJ, log scale)",
                  f"{model} / {mrows[0]['dataset']}")
  _save_plot(fig, path)
