"""IR drop: wire resistance in the crossbar, solved per OU activation.

Only an OU's rows are driven (its other rows float) and only its columns are
sensed, so the network that carries current is the OU's ``ou_rows x
ou_cols`` cells and their wires. Its topology is CrossSim's
non-interleaved, input-source array:

* row ``i`` is driven at its left end; the wire reaches cell ``(i, 0)``
  through one segment (``r_row`` plus the terminal resistance
  ``r_row_terminal``) and each next cell through one more ``r_row``;
* column ``j`` is held at virtual ground at its bottom terminal; cell
  ``(i, j)`` reaches it through one ``r_col`` per row below it, the last
  one plus ``r_col_terminal``.

Where the OU sits in its crossbar matters (``placement=True``): the row
wire crosses the columns of the OUs to its left, and the column wire the
rows below it, carrying the same current as the OU's first row segment and
last column segment: they add ``r_row`` per cell column to the left and
``r_col`` per row below to the terminal resistances. Row-block ``r`` sits at
slot ``r mod (xbar_rows // ou_rows)`` of its crossbar's rows, column group
``c`` (a stored group, for a shared layer) at slot ``c mod (xbar_cols //
ou_cols)`` of its columns.

The network is linear in the inputs (every row is driven, a 0 digit at
0 V), so each OU's column currents are ``v @ T`` for a *transfer matrix*
``T [ou_rows, ou_cols]``, found once at programming: the same shape as the
conductances, and used by every dataflow in their place (the ``table``
dataflow tabulates ``patterns @ T``, at no cost per input). ``T`` solves
``(1 + diag(G) R) I = diag(G) v`` for the cell currents ``I`` of one unit
input per row (``R``, the wires' resistance operator, maps cell currents to
the wire voltage drops at every cell), in float32 by conjugate gradients on
its symmetric form to a relative residual of ``1e-7``.

Resistances are in units of ``Rmin = 1 / Gmax`` (CrossSim's ``Rp / Rmin``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware
from rsjax.kernels import checks


@dataclasses.dataclass(frozen=True)
class Wires:
  """Wire resistance of the crossbar (units of ``Rmin = 1 / Gmax``).

  Attributes:
    r_row: resistance of one row-wire segment (between adjacent cells).
    r_col: resistance of one column-wire segment.
    r_row_terminal: extra resistance between the row driver and the array.
    r_col_terminal: extra resistance between the array and the column's
      virtual ground.
    placement: add the wire crossed to reach the OU from its crossbar's
      driver and terminal (see the module); False models the OU alone.
  """

  r_row: float = 0.0
  r_col: float = 0.0
  r_row_terminal: float = 0.0
  r_col_terminal: float = 0.0
  placement: bool = True

  def __post_init__(self):
    for name in ("r_row", "r_col", "r_row_terminal", "r_col_terminal"):
      object.__setattr__(self, name, checks.number(
          "Wires", name, getattr(self, name), low=0))
    if not isinstance(self.placement, (bool, np.bool_)):
      raise ValueError(f"Wires.placement must be a bool, got "
                       f"{self.placement!r}")
    object.__setattr__(self, "placement", bool(self.placement))

  @property
  def active(self) -> bool:
    """Whether any wire has resistance (else the crossbar is ideal)."""
    return bool(self.r_row or self.r_col or self.r_row_terminal
                or self.r_col_terminal)


def _drops(x, rho, sigma):
  """The wires' voltage drops at every cell, ``R x``, for cell currents
  ``x [..., rows, cols]``.

  ``rho [..., 1, cols]``: row segment resistances (segment ``k`` feeds cells
  ``k..``); ``sigma [..., rows, 1]``: column segments (segment ``k`` drains cells
  ``..k``). Cell ``(i, j)``'s row node sits ``sum_{k<=j} rho_k S_k`` below
  the driver, ``S_k`` the current of cells ``k..`` of row ``i``; its column
  node ``sum_{k>=i} sigma_k C_k`` above ground, ``C_k`` the current of cells
  ``..k`` of column ``j``. Cumulative sums: ``O(rows cols)``.
  """
  tail = jnp.flip(jnp.cumsum(jnp.flip(x, -1), axis=-1), -1)
  row = jnp.cumsum(tail * rho, axis=-1)
  head = jnp.cumsum(x, axis=-2)
  col = jnp.flip(jnp.cumsum(jnp.flip(head * sigma, -2), axis=-2), -2)
  return row + col


# Conjugate-gradient stopping rule: relative residual, and an iteration
# cap far above what the well-conditioned systems here need (tens).
_TOL = 1e-7
_MAX_ITERS = 2000


def _solve(g, rho, sigma):
  """The transfer matrix of one OU: ``g [rows, cols]`` (units of Gmax).

  The cell currents ``I`` of a unit input on row ``k`` solve
  ``(1 + diag(G) R) I = diag(G) e_k``; with ``I = D y``, ``D = sqrt(G)``,
  that is the symmetric positive definite ``(1 + D R D) y = D e_k`` (``R``
  is a resistance operator), solved for every ``k`` at once by conjugate
  gradients with the matrix-free ``R`` of :func:`_drops`. Plain XLA
  operations: no LAPACK call (inside a jitted training step on the CPU,
  LAPACK calls in the thread pool could wait on each other for ever).
  """
  rows, cols = g.shape
  d = jnp.sqrt(jnp.maximum(g, 0.0))[None]  # [1, rows, cols]
  b = d * jnp.eye(rows, dtype=jnp.float32)[:, :, None]  # [k, rows, cols]
  rho, sigma = rho[None, None], sigma[None, :, None]
  apply = lambda y: y + d * _drops(d * y, rho, sigma)
  dot = lambda a, c: jnp.sum(a * c, axis=(1, 2))
  bb = dot(b, b)
  tol2 = jnp.float32(_TOL**2) * bb

  def cond(state):
    _, _, _, rr, i = state
    return (i < _MAX_ITERS) & jnp.any(rr > tol2)

  def body(state):
    y, r, p, rr, i = state
    q = apply(p)
    pq = dot(p, q)
    alpha = jnp.where(rr > tol2, rr / jnp.where(pq > 0, pq, 1.0), 0.0)
    y = y + alpha[:, None, None] * p
    r = r - alpha[:, None, None] * q
    rr_new = dot(r, r)
    beta = jnp.where(rr > 0, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
    p = r + beta[:, None, None] * p
    return y, r, p, rr_new, i + 1

  y0 = jnp.zeros_like(b)
  y, *_ = jax.lax.while_loop(cond, body, (y0, b, b, bb, jnp.int32(0)))
  # The column's terminal current is the sum of its cells' currents.
  return jnp.sum(d * y, axis=1)  # [k, cols]


# OUs solved together: each holds a few [rows, rows, cols] arrays.
_SOLVE_BYTES = 64 << 20


def transfer(g_abs, wires: Wires, hw: hardware.HardwareSpec, *,
             row_slots=None, col_slots=None):
  """The transfer matrices of OUs with wire resistance.

  Args:
    g_abs: ``[..., ou_rows, ou_cols]`` absolute cell conductances in units
      of ``Gmax``.
    wires: the wire resistances.
    hw: the hardware (crossbar and OU sizes, for ``placement``).
    row_slots: ``[...]`` int slot of each OU's row-block in its crossbar
      (``placement`` only; None: slot 0 everywhere).
    col_slots: ``[...]`` int slot of each OU's column group.

  Returns:
    ``[..., ou_rows, ou_cols]`` float32: entry ``[k, j]`` is column ``j``'s
    terminal current (units of ``Gmax`` times the read voltage) with row
    ``k`` at the read voltage and the others at 0 V.
  """
  lead = g_abs.shape[:-2]
  rows, cols = g_abs.shape[-2:]
  g = jnp.asarray(g_abs, jnp.float32).reshape((-1, rows, cols))
  num = g.shape[0]
  rho = jnp.full((num, cols), wires.r_row, jnp.float32)
  sigma = jnp.full((num, rows), wires.r_col, jnp.float32)
  first, last = wires.r_row_terminal, wires.r_col_terminal
  extra_row = jnp.zeros((num,), jnp.float32) + jnp.float32(first)
  extra_col = jnp.zeros((num,), jnp.float32) + jnp.float32(last)
  if wires.placement:
    rb_per_xbar = max(hw.xbar_rows // hw.ou_rows, 1)
    cg_per_xbar = max(hw.xbar_cols // hw.ou_cols, 1)
    rs = (jnp.zeros(lead, jnp.int32) if row_slots is None
          else jnp.broadcast_to(jnp.asarray(row_slots, jnp.int32), lead))
    cs = (jnp.zeros(lead, jnp.int32) if col_slots is None
          else jnp.broadcast_to(jnp.asarray(col_slots, jnp.int32), lead))
    below = hw.xbar_rows - (rs.reshape(-1) % rb_per_xbar + 1) * hw.ou_rows
    left = (cs.reshape(-1) % cg_per_xbar) * hw.ou_cols
    extra_row = extra_row + jnp.float32(wires.r_row) * left.astype(
        jnp.float32)
    extra_col = extra_col + jnp.float32(wires.r_col) * below.astype(
        jnp.float32)
  rho = rho.at[:, 0].add(extra_row)
  sigma = sigma.at[:, -1].add(extra_col)
  per_ou = 4 * rows * rows * cols * 6
  batch = int(max(1, min(num, _SOLVE_BYTES // per_ou)))
  out = jax.lax.map(lambda a: _solve(*a), (g, rho, sigma), batch_size=batch)
  return out.reshape(lead + (rows, cols))
