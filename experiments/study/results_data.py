"""The rows of the results tables, read from the runs' ``results.json``.

Loading the workdirs (:func:`load_runs`), one row per run (:func:`row`:
variant, rules, method, accuracies, loss, ratios, the hardware cost of the
layout its model uses), one row per compression point with the seeds of a
point averaged (:func:`point_rows`, :func:`seed_groups`), the headline and
the Pareto front, the commits the runs come from (:func:`check_commits`),
and the rows of the hardware-aware fine-tune runs (:func:`hwaware_rows`).
:mod:`experiments.study.results` writes them out.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from experiments import recipe as recipe_lib
import rsjax

MAX_LOSS_PP = 0.5
VARIANTS = ("float baseline", "prune only", "share only",
            "prune + share paper", "prune + share ste")


# The study calls the distance loop (share.method='distance') after the
# paper that made it, the name its kept runs were written with.
_SHARING_LABELS = {"distance": "paper"}


def sharing_label(recipe: Mapping[str, Any]) -> str | None:
  """The study's name for a run's sharing method (``'ste'``, ``'paper'``)."""
  sharing = recipe["sharing"]
  return _SHARING_LABELS.get(sharing, sharing)


def load_runs(runs_dir: str) -> list[dict[str, Any]]:
  """Reads every ``results.json`` in the immediate subfolders of a folder.

  Args:
    runs_dir: a folder of workdirs.

  Returns:
    The results dicts, each with ``'name'`` (the workdir's name) added,
    sorted by name. Workdirs without ``results.json`` (unfinished) are
    skipped.
  """
  runs = []
  for name in sorted(os.listdir(runs_dir)):
    path = os.path.join(runs_dir, name, "results.json")
    if os.path.isfile(path):
      with open(path) as f:
        results = json.load(f)
      results["name"] = name
      runs.append(results)
  return runs


def _number(x) -> float | None:
  """A JSON value as a float (``'inf'`` strings included); None stays None."""
  if x is None:
    return None
  return float(x)


BN_KEPT = " (BN kept)"


def variant(results: Mapping[str, Any]) -> str:
  """The variant of a compression point, from its recipe (module doc).

  Runs with ``compress.fold_bn=False`` get the suffix :data:`BN_KEPT`.
  """
  recipe = results["recipe"]
  name = recipe["variant"]
  if name == "prune + share":
    name += f" {sharing_label(recipe)}"
  kept = BN_KEPT if results["config"]["compress"]["fold_bn"] is False else ""
  return name + kept


def base_variant(name: str) -> str:
  """A variant without the :data:`BN_KEPT` suffix."""
  return name[:-len(BN_KEPT)] if name.endswith(BN_KEPT) else name


def rules_label(recipe: Mapping[str, Any]) -> str:
  """The recipe's rules, ``'; '``-joined (a regex's ``|`` escaped: it would
  split the Markdown table's cell)."""
  if recipe.get("allocated_rules"):
    objective = recipe.get("allocate_objective", "ou_ratio")
    target = recipe.get("allocate_target", recipe.get("allocate_ou_ratio"))
    return (f"allocated for {target:g}x"
            + ("" if objective == "ou_ratio" else f" {objective}") + ": "
            + "; ".join(recipe["allocated_rules"]).replace("|", "\\|"))
  return "; ".join(recipe["rules"]).replace("|", "\\|") or "-"


def is_baseline(results: Mapping[str, Any]) -> bool:
  """Whether the run trained its own float baseline."""
  return not results["config"]["train"]["init_checkpoint"]


def _method_label(recipe: Mapping[str, Any]) -> str:
  """The sharing method, ``'+ KD 0.5 (T=4)'`` with distillation."""
  method = sharing_label(recipe) or "-"
  if not recipe["distill"]:
    return method
  weight, temperature = recipe["distill"]
  kd = f"KD {weight:g} (T={temperature:g})"
  return kd if method == "-" else f"{method} + {kd}"


COST_LAYOUTS = ("dense", "pruned", "shared")


def crossbar_ous(fig: Mapping[str, Any], hw: rsjax.HardwareSpec
                 ) -> dict[str, int | None]:
  """A stored layer report's busiest-crossbar OUs per layout
  (``crossbar_ous_<layout>``, :func:`rsjax.compression_report`).

  As stored where the report has them; otherwise derived where the stored
  counts determine them, else None. ``dense`` always: a row tile's first
  crossbar is the fullest. ``pruned`` and ``shared`` when every block is
  kept (stored), as ``dense``; or when the layer fits one crossbar (for
  ``shared``: one row tile packed into one crossbar), its kept (stored)
  blocks. Pruned or shared blocks spread over several crossbars leave the
  busiest one unknown without the index table, which a run does not keep.
  """
  stored = {layout: fig.get(f"crossbar_ous_{layout}")
            for layout in COST_LAYOUTS}
  if None not in stored.values():
    return stored
  rows_per_xbar, groups_per_xbar = hw.ous_per_xbar
  row_blocks, groups = fig["row_blocks"], fig["column_groups"]
  one_row_tile = row_blocks <= rows_per_xbar
  dense = min(row_blocks, rows_per_xbar) * min(groups, groups_per_xbar)
  pruned = shared = None
  if fig["kept_ous"] == fig["dense_ous"]:
    pruned = dense
  elif one_row_tile and groups <= groups_per_xbar:
    pruned = fig["kept_ous"]
  if fig["stored_ous"] == fig["dense_ous"]:
    shared = dense
  elif one_row_tile and fig["packed_crossbars"] == hw.arrays:
    shared = fig["stored_ous"]
  return {"dense": dense, "pruned": pruned, "shared": shared}


def reprice(layers: Mapping[str, Mapping[str, Any]],
            hardware: Mapping[str, Any]) -> dict[str, Any]:
  """``{layout: figures}`` of :func:`rsjax.hardware_cost` (today's
  :class:`rsjax.CostModel`) for a run's stored per-layer report at its
  hardware.

  Energy and area come from the stored counts alone. Latency needs every
  layer's busiest crossbar (:func:`crossbar_ous`): a layout with a layer
  where it is unknown gets ``latency_ns`` and ``interval_ns`` None and
  ``latency_unknown``, those layers' names.
  """
  hw = rsjax.HardwareSpec.from_dict(hardware)
  filled, unknown = {}, {layout: [] for layout in COST_LAYOUTS}
  for name, fig in layers.items():
    ous = crossbar_ous(fig, hw)
    filled[name] = dict(fig)
    for layout, count in ous.items():
      if count is None:
        unknown[layout].append(name)
        count = ous["dense"]  # a stand-in: this layout's latency is dropped
      filled[name][f"crossbar_ous_{layout}"] = count
  priced = rsjax.hardware_cost({"layers": filled}, hw)["layouts"]
  for layout, names in unknown.items():
    if names:
      priced[layout].update(latency_ns=None, interval_ns=None,
                            latency_unknown=names)
  return priced


def hardware_cost(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
  """A run's hardware cost, ``{layout: figures}``.

  Priced afresh (:func:`reprice`) from the run's per-layer report
  (``layers``) at its ``hardware``, so every run is priced by one cost
  model, today's. A run without a per-layer report keeps the figures it
  wrote (``hardware_cost``, or ``cost`` in runs written before the
  rename); None if it has neither.
  """
  if results.get("layers") and results.get("hardware"):
    return reprice(results["layers"], results["hardware"])
  return results.get("hardware_cost", results.get("cost"))


def layout_cost(results: Mapping[str, Any], layout: str | None = None
                ) -> dict[str, Any] | None:
  """Energy (pJ), latency (ns) and area (um^2) per inference of one layout
  of a run (default: the one its model uses); None without a hardware
  cost."""
  layout = layout or recipe_lib.cost_layout(results["recipe"]["stages"])
  cost = (hardware_cost(results) or {}).get(layout)
  if cost is None:
    return None
  energy, area = cost["energy_pj"], cost["area_um2"]
  return {"layout": layout, "energy_pj": energy["total"],
          "adc_pj": energy["adc"],
          "index_add_pj": energy["index_table"] + energy["adders"],
          "latency_ns": cost["latency_ns"], "interval_ns": cost["interval_ns"],
          "crossbars": cost["crossbars"], "core_area_um2": area["core"],
          "area_um2": area["total"]}


def row(results: Mapping[str, Any]) -> dict[str, Any]:
  """The table row of one run (numbers, None where absent)."""
  acc = results["accuracy"]
  comp = results["compression"]
  cost = layout_cost(results) or {}
  float_acc = _number(acc["float"])
  compressed = _number(acc["compressed"])
  loss = None
  if float_acc is not None and compressed is not None:
    loss = 100.0 * (float_acc - compressed)
  return {
      "name": results["name"],
      "model": results["model"],
      "dataset": results["dataset"],
      "variant": variant(results),
      "baseline": is_baseline(results),
      "rules": rules_label(results["recipe"]),
      "method": _method_label(results["recipe"]),
      "commit": (results.get("provenance") or {}).get("commit"),
      "float": float_acc,
      "compressed": compressed,
      "emulated": _number(acc.get("emulated")),
      "loss_pp": loss,
      "ou_ratio": _number(comp.get("ou_ratio")),
      "bit_ratio": _number(comp.get("bit_ratio")),
      "crossbar_ratio": _number(comp.get("crossbar_ratio")),
      "time_s": _number(results.get("timing_s", {}).get("total")),
      "train_s": _number(results.get("timing_s", {}).get("train")),
      "layout": cost.get("layout"),
      "energy_pj": cost.get("energy_pj"),
      "latency_ns": cost.get("latency_ns"),
      "area_um2": cost.get("area_um2"),
  }


def headline(rows: Iterable[Mapping[str, Any]],
             max_loss_pp: float = MAX_LOSS_PP) -> dict[str, Any] | None:
  """The row with the highest ``ou_ratio`` at ``loss_pp <= max_loss_pp``."""
  ok = [r for r in rows
        if r["loss_pp"] is not None and r["ou_ratio"] is not None
        and r["loss_pp"] <= max_loss_pp]
  return max(ok, key=lambda r: r["ou_ratio"]) if ok else None


def pareto_front(rows: Iterable[Mapping[str, Any]],
                 metric: str = "ou_ratio") -> list[Mapping[str, Any]]:
  """Rows not beaten in both ``metric`` and compressed accuracy."""
  pts = [r for r in rows
         if r[metric] is not None and r["compressed"] is not None]
  pts.sort(key=lambda r: (-r[metric], -r["compressed"]))
  front, best = [], -math.inf
  for r in pts:
    if r["compressed"] > best:
      front.append(r)
      best = r["compressed"]
  return front[::-1]


def seed_groups(runs: Sequence[Mapping[str, Any]]
                ) -> list[list[Mapping[str, Any]]]:
  """Runs that differ only in ``config.seed``, in groups of 2 or more.

  Runs group when their model, dataset, config without ``seed`` and float
  accuracy are equal; the last because a baseline trained again under the
  same checkpoint path is another starting point. One run per seed (the
  first by name): a rerun with the same seed is not another seed.
  """
  groups: dict[str, dict[Any, Mapping[str, Any]]] = {}
  for r in sorted(runs, key=lambda r: r["name"]):
    config = dict(r["config"])
    seed = config.pop("seed", 0)
    key = json.dumps([r["model"], r["dataset"], config,
                      r["accuracy"]["float"]], sort_keys=True)
    groups.setdefault(key, {}).setdefault(seed, r)
  return sorted((list(g.values()) for g in groups.values() if len(g) > 1),
                key=lambda g: (g[0]["model"], g[0]["name"]))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """The mean and the standard deviation (n - 1) of two or more values."""
  n = len(values)
  mean = sum(values) / n
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# What a seed group averages besides accuracy: equal over the seeds of a
# point unless each seed allocated its own per-layer k.
PER_PLAN = ("ou_ratio", "bit_ratio", "crossbar_ratio", "energy_pj",
            "latency_ns", "area_um2")


def group_mean(members: Sequence[Mapping[str, Any]], key: str
               ) -> float | None:
  """The mean of a seed group's ``key`` (None if a seed lacks it).

  The seeds of a point differ in their ratios and cost when each allocates
  its own per-layer ``k`` (``share.allocate_ou_ratio``); otherwise this is
  their common value, as it is.
  """
  values = [m[key] for m in members]
  if any(v is None for v in values):
    return None
  return values[0] if len(set(values)) == 1 else sum(values) / len(values)


def group_rules(members: Sequence[Mapping[str, Any]], seeds) -> str:
  """A seed group's rules: one label, or each seed's where they differ."""
  labels = [m["rules"] for m in members]
  if len(set(labels)) == 1:
    return labels[0]
  return " / ".join(f"seed {s}: {label}" for s, label in zip(seeds, labels))


def point_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per compression point, for the headline and cost tables.

  A point run with several seeds (:func:`seed_groups`) is one row with the
  mean compressed and emulated accuracy and loss over its seeds (named
  ``'RUN (mean of N seeds)'``), so the headline cannot pick a lucky seed,
  and the mean of their ratios and cost where those differ
  (:func:`group_mean`). Every row's ``'run'`` is the workdir whose files
  stand for it (the first seed's for a group: the per-layer hardware
  counts of the cost tables are that seed's).
  """
  rows = {r["name"]: row(r) for r in runs}
  out, grouped = [], set()
  for group in seed_groups(runs):
    members = [rows[r["name"]] for r in group]
    point = dict(members[0], run=members[0]["name"],
                 name=f"{members[0]['name']} (mean of {len(members)} seeds)")
    for key in ("compressed", "emulated", "loss_pp") + PER_PLAN:
      point[key] = group_mean(members, key)
    point["rules"] = group_rules(
        members, [r["config"].get("seed", 0) for r in group])
    out.append(point)
    grouped.update(m["name"] for m in members)
  out += [dict(r, run=name) for name, r in rows.items() if name not in grouped]
  return out


def commits(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
  """``{commit: [run names]}``; ``'unknown'`` for runs without provenance,
  ``COMMIT (dirty)`` for runs from a tree with uncommitted changes."""
  out: dict[str, list[str]] = {}
  for r in runs:
    prov = r.get("provenance") or {}
    commit = prov.get("commit") or "unknown"
    if prov.get("dirty"):
      commit += " (dirty)"
    out.setdefault(commit, []).append(r["name"])
  return out


def check_commits(runs: Sequence[Mapping[str, Any]],
                  allow_mixed: bool) -> dict[str, list[str]]:
  """:func:`commits`, refusing several unless ``allow_mixed``.

  Raises:
    ValueError: naming the commits and their runs.
  """
  found = commits(runs)
  if len(found) > 1 and not allow_mixed:
    listing = "; ".join(f"{c}: {', '.join(names)}"
                        for c, names in sorted(found.items()))
    raise ValueError(
        f"the runs come from {len(found)} commits ({listing}); re-run them "
        "at one commit, or pass --allow_mixed_commits to tabulate them "
        "together")
  return found


def is_hwaware(results: Mapping[str, Any]) -> bool:
  """Whether a run ends in the hardware-aware fine-tune (its own table)."""
  return "hwaware" in results["recipe"].get("stages", ())


def hwaware_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The figures of the hardware-aware fine-tune runs, by model and ADC."""
  out = []
  for r in runs:
    d = r["accuracy_detail"]
    before, after = d.get("hwaware_emulated_before"), d.get(
        "hwaware_emulated_after")
    lossless = d.get("hwaware_emulated_lossless_before")
    out.append({
        "run": r["name"], "model": r["model"],
        "adc_bits": d.get("hwaware_adc_bits"),
        "adc_mode": d.get("hwaware_adc_mode"),
        "steps": d.get("hwaware_steps", r["config"]["hwaware"]["steps"]),
        "images": r["config"]["eval"]["emulate_limit"],
        "emulated_lossless_before": lossless,
        "emulated_before": before, "emulated_after": after,
        "after_minus_lossless_pp": (
            None if lossless is None or after is None
            else round(100 * (after - lossless), 2)),
        "float_after": r["accuracy"]["compressed"],
        "emulated_lossless_after": r["accuracy"]["emulated"]})
  return sorted(out, key=lambda h: (h["model"], -(h["adc_bits"] or 0),
                                    h["adc_mode"] or ""))
