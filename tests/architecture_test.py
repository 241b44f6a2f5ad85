"""The import rules of docs/architecture.md hold."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


@pytest.mark.parametrize("folder, forbidden", [
    ("rsjax", ("rsjax.kernels", "experiments")),
    ("kernels", ("experiments",)),
    ("experiments", ("experiments.study",)),
])
def test_layers_import_only_downwards(folder, forbidden):
  study = ROOT / "experiments" / "study"
  offending = {
      str(path.relative_to(ROOT)): sorted(
          name for name in _imports(path)
          if any(name == f or name.startswith(f + ".") for f in forbidden))
      for path in (ROOT / folder).rglob("*.py")
      if study not in path.parents}
  assert not {k: v for k, v in offending.items() if v}, offending


def test_the_doc_names_one_place_for_each_addition():
  text = (ROOT / "docs" / "architecture.md").read_text()
  for what, where in [("an ADC model", "kernels/adc.py"),
                      ("a device model", "kernels/devices.py"),
                      ("a pruning score", "rsjax/_src/scores.py"),
                      ("a dataset", "experiments/data.py"),
                      ("a model", "experiments/models.py")]:
    row = next(line for line in text.splitlines()
               if line.startswith(f"| {what} |"))
    assert f"`{where}`" in row
    assert (ROOT / where).exists()
