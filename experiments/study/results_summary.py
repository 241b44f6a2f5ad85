"""Per-model summaries of the runs: the point that stands for each layout.

:func:`layout_points` picks, per model, the run that stands for each
hardware layout (the baseline for ``dense``, the headline point, or else
the one with the smallest loss, of the variants of each layout in
:data:`COST_LAYOUTS`): the rows of the hardware cost and energy tables
(:mod:`experiments.study.results_tables`). :func:`summary` gathers the
machine-readable results of ``RESULTS.json``: per model the headline, the
Pareto points and the hardware cost of each layout, and the hardware-aware
fine-tune runs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from experiments.study import results_data

# The layouts of the hardware cost table and the variants they are taken from.
COST_LAYOUTS = (("pruned", ("prune only",)), ("shared", ("share only",)),
                ("pruned + shared", ("prune + share paper",
                                     "prune + share ste")))


def representative(rows: Sequence[Mapping[str, Any]],
                   max_loss_pp: float = results_data.MAX_LOSS_PP
                   ) -> tuple[Mapping[str, Any] | None, bool]:
  """The headline row of ``rows``, else the one with the smallest loss.

  Returns:
    ``(row, within)``: ``within`` tells whether it meets ``max_loss_pp``.
  """
  h = results_data.headline(rows, max_loss_pp)
  if h is not None:
    return h, True
  ok = [r for r in rows if r["loss_pp"] is not None]
  return (min(ok, key=lambda r: r["loss_pp"]), False) if ok else (None, False)


def layout_points(runs: Sequence[Mapping[str, Any]]
                  ) -> list[tuple[str, Mapping[str, Any] | None, bool,
                                  Mapping[str, Any] | None]]:
  """The rows of one model's hardware tables: ``(layout, point row,
  within, results)``.

  ``dense`` is the baseline run (its dense mapping); every other layout of
  :data:`COST_LAYOUTS` is its variants' :func:`representative` point (a
  point with several seeds: its mean loss, the first seed's results), or
  ``(layout, None, False, None)`` without one. No rows without a baseline.
  """
  by_name = {r["name"]: r for r in runs}
  rows = results_data.point_rows(runs)
  base = next((r for r in rows if r["baseline"]), None)
  if base is None:
    return []
  out = [("dense", base, True, by_name[base["run"]])]
  for layout, variants in COST_LAYOUTS:
    rep, within = representative(
        [r for r in rows
         if results_data.base_variant(r["variant"]) in variants])
    out.append((layout, rep, within,
                None if rep is None else by_name[rep["run"]]))
  return out


def _cost_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The energy table's rows as JSON values (the dense row has no loss:
  it is the baseline run's dense mapping, not its compressed model)."""
  out = []
  for label, rep, _, res in layout_points(runs):
    cost = None if res is None else results_data.layout_cost(
        res, "dense" if label == "dense" else None)
    if cost is not None:
      out.append({"row": label, "run": rep["run"],
                  "loss_pp": None if label == "dense" else rep["loss_pp"],
                  **cost})
  return out


def summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The machine-readable results (``RESULTS.json``)."""
  hwaware = [r for r in runs if results_data.is_hwaware(r)]
  runs = [r for r in runs if not results_data.is_hwaware(r)]
  points = results_data.point_rows(runs)
  by_group = {g[0]["name"]: g for g in results_data.seed_groups(runs)}
  models = {}
  for m in sorted({r["model"] for r in runs}):
    mpoints = [p for p in points if p["model"] == m]
    h = results_data.headline(mpoints)
    head = None
    if h is not None:
      group = by_group.get(h["run"])
      losses = ([results_data.row(r)["loss_pp"] for r in group] if group
                else [h["loss_pp"]])
      mean, std = (results_data.mean_std(losses) if len(losses) > 1
                   else (losses[0], None))
      head = {"run": h["run"], "variant": h["variant"],
              "rules": h["rules"], "ou_ratio": h["ou_ratio"],
              "bit_ratio": h["bit_ratio"], "float": h["float"],
              "compressed": h["compressed"], "emulated": h["emulated"],
              "loss_pp_mean": mean, "loss_pp_std": std,
              "seeds": ([r["config"].get("seed", 0) for r in group]
                        if group else [None]),
              "runs": ([r["name"] for r in group] if group
                       else [h["run"]]),
              "layout": h["layout"], "energy_pj": h["energy_pj"],
              "latency_ns": h["latency_ns"], "area_um2": h["area_um2"]}
    mruns = [r for r in runs if r["model"] == m]
    models[m] = {
        "dataset": mpoints[0]["dataset"], "headline": head,
        "max_loss_pp": results_data.MAX_LOSS_PP,
        "pareto": [{k: p[k] for k in ("run", "variant", "rules", "ou_ratio",
                                      "bit_ratio", "crossbar_ratio",
                                      "compressed", "emulated", "loss_pp",
                                      "layout", "energy_pj")}
                   for p in results_data.pareto_front(mpoints)],
        "hardware_cost": _cost_rows(mruns)}
  out = {"commits": results_data.commits(runs + hwaware), "models": models}
  if hwaware:
    out["hwaware"] = results_data.hwaware_rows(hwaware)
  return out
