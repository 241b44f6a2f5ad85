"""experiments/results.py's summary of a finished run."""

from experiments import results as results_lib


def _cost(energy_nj):
  return {"energy_pj": {"total": energy_nj * 1e3}}


def _results(sweep):
  return {
      "model": "lenet5", "dataset": "fashion_mnist",
      "recipe": {"variant": "prune + share", "rules": ["kernel$ k=8"]},
      "accuracy": {"float": 0.9, "quantized": 0.89, "compressed": 0.88,
                   "emulated": None},
      "compression": {"ou_ratio": 5.0, "stored_ous": 1234},
      "hardware_cost": {"dense": _cost(1000.0), "pruned": _cost(600.0)},
      "adc_sweep": sweep,
      "provenance": {"commit": "ab" * 20, "dirty": True},
      "timing_s": {"total": 12.5},
  }


def test_summary_names_accuracy_cost_sweep_and_provenance():
  text = results_lib.summary_table(_results([
      {"adc_bits": 3, "accuracy": 0.5, "energy_pj": None,
       "layout": "shared"},
      {"adc_bits": 4, "accuracy": 0.8, "energy_pj": 123456.0,
       "layout": "shared"}]))
  assert "accuracy emulated" in text and "n/a" in text
  assert "ou_ratio" in text and "5.00" in text and "1,234" in text
  assert "dense 1.000 uJ, pruned 0.600 uJ" in text
  assert "3b: 0.5000, 4b: 0.8000 (123.5 nJ shared)" in text
  assert "abababababab (dirty tree)" in text
  assert "time total (s)" in text and "12.5" in text


def test_summary_says_when_the_sweep_was_skipped():
  assert "skipped (no emulation)" in results_lib.summary_table(_results([]))
