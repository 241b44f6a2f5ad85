"""Synthetic results.json files for the tests of experiments/results*.py."""

import json
import os

COMMIT = "a" * 40


def _recipe(prune, k, method):
  """The recipe section of a results.json for the old-style point labels:
  k None is prune only, prune 0 share only."""
  if k is None:
    return {"variant": "prune only", "stages": ["prune"],
            "rules": [f"kernel$ sparsity={prune:g}"], "sharing": None,
            "distill": None}
  if not prune:
    return {"variant": "share only", "stages": ["share", "finetune"],
            "rules": [f"kernel$ k={k}"], "sharing": method, "distill": None}
  return {"variant": "prune + share",
          "stages": ["prune", "share", "finetune"],
          "rules": [f"kernel$ k={k} sparsity={prune:g}"], "sharing": method,
          "distill": None}


def run_results(name, *, model="lenet5", prune=0.3, k=8, method="ste",
                init="ckpt", float_acc=0.90, compressed=0.898, emulated=0.897,
                ou_ratio=5.0, total=90.0, commit=COMMIT):
  recipe = _recipe(prune, k, method)
  return {
      "name": name, "model": model, "dataset": "fashion_mnist",
      "config": {"recipe": {"stages": recipe["stages"],
                            "rules": recipe["rules"]},
                 "share": {"method": method},
                 "compress": {"fold_bn": True, "distill_weight": 0.0},
                 "train": {"init_checkpoint": init}},
      "recipe": recipe,
      "provenance": {"commit": commit, "dirty": False,
                     "versions": {"jax": "0.x"},
                     "devices": {"kind": "cpu", "count": 1}},
      "accuracy": {"float": float_acc, "quantized": float_acc,
                   "compressed": compressed, "emulated": emulated},
      "compression": {"ou_ratio": ou_ratio, "bit_ratio": 4.0,
                      "fp32_ratio": ou_ratio, "crossbar_ratio": 2.0},
      "timing_s": {"train": total - 80.0, "total": total},
  }


def write_run(runs_dir, name, **kwargs):
  path = os.path.join(runs_dir, name)
  os.makedirs(path)
  payload = run_results(name, **kwargs)
  del payload["name"]
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(payload, f)


def update_run(runs_dir, name, fn):
  path = os.path.join(runs_dir, name, "results.json")
  with open(path) as f:
    payload = json.load(f)
  fn(payload)
  with open(path, "w") as f:
    json.dump(payload, f)


def update_config(runs_dir, name, section, **values):
  """Sets ``config[section][key] = value`` in run NAME's results.json."""
  update_run(runs_dir, name,
             lambda p: p["config"].setdefault(section, {}).update(values))


def fixture_runs(tmp_path):
  runs = str(tmp_path / "runs")
  os.makedirs(runs)
  write_run(runs, "lenet5_base", init="", ou_ratio=5.0, total=170.0)
  write_run(runs, "lenet5_prune_p0.5", prune=0.5, k=None, compressed=0.899,
            ou_ratio=2.0)
  write_run(runs, "lenet5_share_k2", prune=0.0, k=2, compressed=0.893,
            ou_ratio=6.0)
  write_run(runs, "lenet5_paper_p0.6_k4", method="paper", prune=0.6, k=4,
            compressed=0.896, ou_ratio=12.0)
  write_run(runs, "lenet5_ste_p0.8_k2", prune=0.8, k=2, compressed=0.80,
            ou_ratio="inf")
  write_run(runs, "mlp_share_k4", model="mlp", prune=0.0, k=4,
            float_acc=0.88, compressed=0.86, emulated=None, ou_ratio=3.0)
  os.makedirs(os.path.join(runs, "unfinished"))  # no results.json: skipped
  return runs


def costed_run(name, *, prune, k, compressed, base=False, kept=80, stored=40):
  """A results dict with the hardware figures of a 100-OU model."""
  out = run_results(name, model="vgg8", prune=prune, k=k, method="paper",
                    init="" if base else "ckpt", compressed=compressed)
  out["accuracy"]["float"] = 0.9
  out["compression"] = {
      "ou_ratio": 100 / stored, "dense_crossbars": 10,
      "packed_crossbars": 5, "ou_activations_dense": 1000,
      "ou_activations_pruned": kept * 10,
      "ou_activations_shared": stored * 10,
      "adc_conversions_dense": 8000,
      "adc_conversions_pruned": kept * 80,
      "adc_conversions_shared": stored * 80, "index_bits": 300,
      "dense_bits": 6400, "compressed_bits": 3200}
  return out


def _layout_cost(energy_nj, latency_us, crossbars, index_add_pj=0.0):
  """One layout of a hardware_cost: total energy, half of it in the ADC."""
  energy = {"total": energy_nj * 1e3, "adc": energy_nj * 500.0,
            "index_table": index_add_pj / 2, "adders": index_add_pj / 2}
  return {"energy_pj": energy, "latency_ns": latency_us * 1e3,
          "interval_ns": latency_us * 500.0, "crossbars": crossbars,
          "area_um2": {"core": crossbars * 1e4, "total": 2e5 + crossbars * 1e4}}


def priced(results_dict, key="hardware_cost", **energies_nj):
  """Gives a results dict a hardware cost (``cost``: the old key) with
  ``energies_nj`` per layout; latency in us is a tenth of the energy."""
  results_dict[key] = {
      layout: _layout_cost(nj, nj / 10, 10 if layout != "shared" else 5,
                           index_add_pj=7.0 if layout == "shared" else 0.0)
      for layout, nj in energies_nj.items()}
  return results_dict


def priced_runs():
  # Each run prices every layout; the table takes its own model's layout.
  dense = {"dense": 1000.0, "pruned": 600.0}
  return [
      priced(costed_run("b", prune=0.2, k=8, compressed=0.89, base=True),
             shared=300.0, **dense),
      priced(costed_run("p", prune=0.5, k=None, compressed=0.898, kept=50,
                        stored=50), key="cost", shared=500.0, **dense),
      priced(costed_run("s", prune=0.0, k=4, compressed=0.80, kept=100,
                        stored=25), shared=400.0, **dense),
      priced(costed_run("s2", prune=0.0, k=8, compressed=0.85, kept=100,
                        stored=40), key="cost", shared=800.0, **dense),
  ]


def make_hwaware(payload, bits, mode, before, after, lossless):
  payload["recipe"]["stages"] = ["prune", "share", "finetune", "hwaware"]
  payload["config"]["hwaware"] = {"steps": 500}
  payload["config"]["eval"] = {"emulate_limit": 2000}
  payload["accuracy_detail"] = {
      "hwaware_steps": 500, "hwaware_adc_bits": bits,
      "hwaware_adc_mode": mode, "hwaware_emulated_before": before,
      "hwaware_emulated_after": after,
      "hwaware_emulated_lossless_before": lossless}
