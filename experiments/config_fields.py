"""Config fields added after runs were stored (no heavy imports: the
results tables use it too).

A workdir written before a field existed resumes under a config that keeps
the field's old behaviour (the value here), and its results group with
newer runs of the same settings.
"""

from __future__ import annotations

from typing import Any, Mapping

# (section, key) -> the value that keeps the behaviour from before the field.
ADDED_FIELDS = {("compress", "fold_bn"): True, ("share", "layer_k"): "",
                ("compress", "distill_weight"): 0.0,
                ("compress", "distill_temperature"): 4.0}


def with_added_fields(stored: Mapping[str, Any]) -> dict[str, Any]:
  """A stored config (JSON dict) with every missing added field filled in."""
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
  for (section, key), value in ADDED_FIELDS.items():
    if isinstance(out.get(section), dict):
      out[section].setdefault(key, value)
  return out
