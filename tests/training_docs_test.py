"""The NNX example of docs/training.md runs (sharing, centroid fine-tune and
hardware-aware fine-tune in an nnx.Optimizer loop)."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "training.md"


def test_nnx_example_runs(tmp_path, monkeypatch):
  text = DOC.read_text()
  section = text[text.index("## NNX"):]
  section = section[:section.index("\n## ", 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(compile(blocks[0], "docs/training.md NNX", "exec"), scope)  # pylint: disable=exec-used
  # It ends still shared: its own assert ran; the model trained.
  assert scope["layers"]["fc1/kernel"].stored_per_row_block().max() <= 2
