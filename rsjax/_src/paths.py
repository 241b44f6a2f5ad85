"""Parameter paths as strings, for the regex rules that select layers.

A path is the keys from the pytree root joined by ``/``: Linen params give
``'params/Conv_0/kernel'`` (or ``'Conv_0/kernel'`` for the inner dict), NNX
state gives ``'conv1/kernel'`` (the ``.value`` of a ``Param`` is not a key).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import jax


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(keypath: Iterable[Any]) -> str:
  """``'a/b/c'`` for a ``jax.tree_util`` key path."""
  names = [_key_name(k) for k in keypath]
  # NNX Variable leaves add a trailing 'value' attribute key: not a name.
  if names and names[-1] == "value":
    names = names[:-1]
  return "/".join(names)


def named_leaves(tree, is_leaf: Callable[[Any], bool] | None = None):
  """``[(path_str, leaf)]`` in tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [(path_str(kp), leaf) for kp, leaf in flat]


def match_paths(tree, pattern: str) -> list[str]:
  """Paths of ``tree`` that ``pattern`` matches (``re.search``)."""
  regex = re.compile(pattern)
  return [p for p, _ in named_leaves(tree) if regex.search(p)]


def kernel_paths(tree) -> list[str]:
  """Paths of the leaves that map to crossbars: Dense ``[in, out]`` and Conv
  ``[kh, kw, cin, cout]`` kernels, i.e. the 2-D and 4-D leaves."""
  return [p for p, leaf in named_leaves(tree)
          if getattr(leaf, "ndim", None) in (2, 4)]
