"""ReRAM device models: what a programmed cell conducts, and how it reads.

A device is a frozen dataclass (hashable: a static argument of the jitted
kernels) composed of small models, each one class with one job, as
CrossSim's and aihwkit's devices are:

* ``on_off_ratio``: ``Gmin = Gmax / ratio``. A cell at level ``l`` of
  ``L = 2^cell_bits - 1`` targets ``G = Gmin + (Gmax - Gmin) l / L``.
* ``programming``: the error of the programmed conductance, drawn once per
  programming (:class:`Programming`: independent, proportional or inverse
  in the conductance, normal or uniform; :class:`WanRRAM2022`: the measured
  fit of Wan et al., Nature 2022).
* ``faults``: stuck-at cells (:class:`StuckAt`).
* ``drift``: ``G(t) = G(t0) (t / t0)^-nu`` with a state-dependent ``nu``
  and a spread (:class:`Drift`), optionally with global drift compensation.
* ``read``: read noise, fresh on every read (:class:`ReadNoise`).
* ``iv``: I-V nonlinearity (:class:`SinhIV`).

Units. The kernels count conductance in *levels*: one level is
``(Gmax - Gmin) / L``, and the value a kernel holds is the conductance above
``Gmin`` (``g = (G - Gmin) / level``: an ideal cell at level ``l`` holds
exactly ``l``). ``Gmin`` itself is ``g0 = L / (ratio - 1)`` levels. An OU's
``Gmin`` current (``g0`` per driven DAC unit) is subtracted in the analog
domain before the ADC by a reference current (as NeuroSim's dummy column
does), so a finite on/off ratio changes nothing on its own; it acts through
the models that see absolute conductance: state-dependent errors, drift,
I-V nonlinearity and IR drop (:mod:`rsjax.kernels.wires`), where every
cell's ``Gmin`` current loads the wires.

Adding a model: one class in this file with what its slot calls
(``std`` and ``draw`` for programming error, ``apply`` for drift, ``std``
for read noise, ``gain`` for I-V), listed in ``_MODEL_SLOTS``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware
from rsjax.kernels import checks

FORMS = ("independent", "proportional", "inverse")
DISTRIBUTIONS = ("normal", "uniform")


def _choice(owner: str, name: str, value, choices) -> str:
  if value not in choices:
    raise ValueError(f"{owner}.{name} must be one of {choices}, got "
                     f"{value!r}")
  return value


def _check_sigma_form(model) -> None:
  """Checks (and makes a float of) a noise model's ``sigma`` and ``form``."""
  owner = type(model).__name__
  object.__setattr__(model, "sigma",
                     checks.number(owner, "sigma", model.sigma, low=0))
  _choice(owner, "form", model.form, FORMS)


def _std_of_form(form: str, sigma: float, g_abs, g_top):
  """The std (levels) of an error of ``form`` at absolute ``g_abs``.

  ``independent``: ``sigma`` levels everywhere. ``proportional``:
  ``sigma * G`` (``sigma`` relative). ``inverse``: ``sigma * Gmax / G``
  levels (``sigma`` at ``Gmax``, larger at low conductance; none at
  ``G = 0``, as CrossSim does).
  """
  s = jnp.float32(sigma)
  if form == "independent":
    return jnp.broadcast_to(s, g_abs.shape)
  if form == "proportional":
    return s * jnp.maximum(g_abs, 0.0)
  safe = jnp.where(g_abs > 0, g_abs, jnp.float32(1.0))
  return jnp.where(g_abs > 0, s * jnp.float32(g_top) / safe, 0.0)


def _draw(distribution: str, key, shape):
  """Unit-variance zero-mean noise of ``distribution``."""
  if distribution == "normal":
    return jax.random.normal(key, shape, jnp.float32)
  # Uniform on [-sqrt(3), sqrt(3)]: unit variance, so ``sigma`` is a std
  # whatever the distribution.
  u = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  return u * jnp.float32(math.sqrt(3.0))


@dataclasses.dataclass(frozen=True)
class Programming:
  """Generic programming error, drawn once per programming.

  A cell at level ``v`` conducts ``max(v + std e, -g0)`` levels above
  ``Gmin`` (``e`` of unit variance): the conductance cannot go below zero.

  Attributes:
    sigma: the error's std: in levels (``independent``), relative to the
      conductance (``proportional``), or in levels at ``Gmax``
      (``inverse``: ``sigma Gmax / G``).
    form: ``'independent'``, ``'proportional'`` or ``'inverse'``.
    distribution: ``'normal'`` or ``'uniform'`` (same std).
  """

  sigma: float = 0.0
  form: str = "independent"
  distribution: str = "normal"

  def __post_init__(self):
    _check_sigma_form(self)
    _choice("Programming", "distribution", self.distribution, DISTRIBUTIONS)

  @property
  def active(self) -> bool:
    return bool(self.sigma)

  def std(self, g_abs, g0: float, hw: hardware.HardwareSpec):
    """The std (levels) at absolute conductance ``g_abs`` (levels)."""
    return _std_of_form(self.form, self.sigma, g_abs, _top(hw) + g0)

  def draw(self, key, shape):
    return _draw(self.distribution, key, shape)


@dataclasses.dataclass(frozen=True)
class WanRRAM2022:
  """Measured ReRAM programming error (Wan et al., Nature 608, 2022).

  ``sigma(G) = max(A G^3 + B G^2 + C G + D, 0)`` uS with G in uS: the cubic
  fit of CrossSim's ``RRAMWan`` model to the paper's Extended Data Fig. 3
  (t = 1 s), ``A, B, C, D = 1.536e-4, -1.167e-2, 2.374e-1, 1.053``. The fit
  holds for ``Gmax <= 39.26`` uS.

  Attributes:
    g_max_us: the conductance of the top level, in uS.
  """

  g_max_us: float = 39.26
  COEFFS = (1.536e-4, -1.167e-2, 2.374e-1, 1.053)

  def __post_init__(self):
    value = checks.number("WanRRAM2022", "g_max_us", self.g_max_us, low=0,
                    low_open=True)
    if value > 39.26:
      raise ValueError("WanRRAM2022.g_max_us must be <= 39.26 uS, the "
                       f"range of the measured fit, got {value}")
    object.__setattr__(self, "g_max_us", value)

  @property
  def active(self) -> bool:
    return True

  def sigma_us(self, g_us):
    """The fit: std in uS of a cell programmed to ``g_us`` uS."""
    a, b, c, d = (jnp.float32(v) for v in self.COEFFS)
    return jnp.maximum(((a * g_us + b) * g_us + c) * g_us + d, 0.0)

  def std(self, g_abs, g0: float, hw: hardware.HardwareSpec):
    """The std (levels) at absolute conductance ``g_abs`` (levels)."""
    us_per_level = self.g_max_us / (_top(hw) + g0)
    return self.sigma_us(g_abs * jnp.float32(us_per_level)) / jnp.float32(
        us_per_level)

  def draw(self, key, shape):
    return _draw("normal", key, shape)


@dataclasses.dataclass(frozen=True)
class StuckAt:
  """Stuck-at faults: a cell stuck at level 0 (``Gmin``) or at the top level.

  A stuck cell has no programming error and does not drift.

  Attributes:
    p0: probability of a cell stuck at level 0 (high resistance).
    p1: probability of a cell stuck at the top level (low resistance).
  """

  p0: float = 0.0
  p1: float = 0.0

  def __post_init__(self):
    for name in ("p0", "p1"):
      object.__setattr__(self, name, checks.number("StuckAt", name,
                                             getattr(self, name), low=0))
    if self.p0 + self.p1 > 1:
      raise ValueError("StuckAt.p0 + p1 must be <= 1")

  @property
  def active(self) -> bool:
    return bool(self.p0 or self.p1)


@dataclasses.dataclass(frozen=True)
class Drift:
  """Conductance drift ``G(t) = G(t0) (t / t0)^-nu`` (aihwkit's form).

  ``nu`` is state-dependent, linear in ``G / Gmax`` from ``nu_min`` (at
  ``G = 0``) to ``nu_max`` (at ``Gmax``), plus a per-cell spread drawn at
  programming, ``nu = max(nu(G) + nu_std e, 0)``.

  Attributes:
    t: seconds since programming, ``> 0`` (``t = t0``: no drift).
    t0: the reference time, ``> 0``, at which the programmed state is read.
    nu_min: drift exponent at ``G = 0``.
    nu_max: drift exponent at ``Gmax``.
    nu_std: std of the per-cell spread of ``nu``.
    compensate: global drift compensation: the array's summed conductance
      is read at ``t0`` and at ``t``, and the ADC's gain is trimmed by their
      ratio (aihwkit's ``GlobalDriftCompensation`` reads the outputs for a
      constant input and scales them the same way).
  """

  t: float = 1.0
  t0: float = 1.0
  nu_min: float = 0.0
  nu_max: float = 0.0
  nu_std: float = 0.0
  compensate: bool = False

  def __post_init__(self):
    object.__setattr__(self, "t", checks.number("Drift", "t", self.t, low=0,
                                          low_open=True))
    object.__setattr__(self, "t0", checks.number("Drift", "t0", self.t0, low=0,
                                           low_open=True))
    for name in ("nu_min", "nu_max", "nu_std"):
      object.__setattr__(self, name, checks.number("Drift", name,
                                             getattr(self, name), low=0))
    if not isinstance(self.compensate, (bool, np.bool_)):
      raise ValueError(f"Drift.compensate must be a bool, got "
                       f"{self.compensate!r}")
    object.__setattr__(self, "compensate", bool(self.compensate))

  @property
  def active(self) -> bool:
    return self.t != self.t0 and bool(self.nu_min or self.nu_max
                                      or self.nu_std)

  def apply(self, g_abs, g_top: float, key):
    """Drifted absolute conductances (levels) at ``t``."""
    nu = (jnp.float32(self.nu_min) + jnp.float32(self.nu_max - self.nu_min)
          * g_abs / jnp.float32(g_top))
    if self.nu_std:
      nu = nu + jnp.float32(self.nu_std) * jax.random.normal(
          key, g_abs.shape, jnp.float32)
    nu = jnp.maximum(nu, 0.0)
    return g_abs * jnp.exp(-nu * jnp.float32(math.log(self.t / self.t0)))


@dataclasses.dataclass(frozen=True)
class ReadNoise:
  """Read noise, fresh on every read (forces the ``direct`` dataflow).

  Attributes:
    sigma: std of each cell's conductance on one read, in the units of
      :class:`Programming`'s ``form``; with ``per='sum'``, the std of every
      OU partial sum (levels times DAC levels), state-independent.
    form: ``'independent'``, ``'proportional'`` or ``'inverse'`` (per
      cell).
    per: ``'cell'`` (each cell's conductance, the partial sum's std then is
      ``sqrt(sum_i d_i^2 sigma_i^2)`` for DAC levels ``d_i``: the same
      distribution as fresh normal noise on every cell) or ``'sum'``.
  """

  sigma: float = 0.0
  form: str = "independent"
  per: str = "cell"

  def __post_init__(self):
    _check_sigma_form(self)
    _choice("ReadNoise", "per", self.per, ("cell", "sum"))

  @property
  def active(self) -> bool:
    return bool(self.sigma)

  def std(self, g_abs, g0: float, hw: hardware.HardwareSpec):
    """Per-cell std (levels) at absolute conductance ``g_abs``."""
    return _std_of_form(self.form, self.sigma, g_abs, _top(hw) + g0)


@dataclasses.dataclass(frozen=True)
class SinhIV:
  """I-V nonlinearity ``I = G V0 sinh(V / V0)``, normalised to ``G V`` at
  small ``V``.

  The sinh conduction of filamentary metal-oxide ReRAM (Jiang et al.,
  "A compact model for metal-oxide resistive random access memory with
  experiment verification", IEEE Trans. Electron Devices 63(5), 2016:
  ``I = I0 exp(-gap/g0) sinh(V/V0)``). ``k = V_read / V0``: a cell read at
  the full DAC voltage conducts ``sinh(k) / k`` times its nominal
  conductance. Needs a 1-bit DAC (one read voltage) and no wire resistance:
  every driven cell then sees ``V_read``, and the effect is that gain on
  every cell's absolute conductance (its ``Gmin`` current included, which
  the linear reference current does not remove).

  Attributes:
    k: ``V_read / V0``, ``> 0``.
  """

  k: float = 0.5

  def __post_init__(self):
    object.__setattr__(self, "k", checks.number("SinhIV", "k", self.k, low=0,
                                          low_open=True))

  @property
  def gain(self) -> float:
    return math.sinh(self.k) / self.k


_MODEL_SLOTS = {
    "programming": (Programming, WanRRAM2022),
    "faults": (StuckAt,),
    "drift": (Drift,),
    "read": (ReadNoise,),
    "iv": (SinhIV,),
}


def _top(hw: hardware.HardwareSpec) -> float:
  return float(2**hw.cell_bits - 1)


@dataclasses.dataclass(frozen=True)
class Device:
  """A ReRAM device: the on/off ratio and the models of its imperfections.

  ``Device()`` is the ideal cell. See the module for the units and for how
  a finite on/off ratio acts.

  Attributes:
    on_off_ratio: ``Gmax / Gmin``, ``> 1``; ``inf`` (the default) for
      ``Gmin = 0``.
    programming: :class:`Programming` or :class:`WanRRAM2022`, or None.
    faults: :class:`StuckAt`, or None.
    drift: :class:`Drift`, or None.
    read: :class:`ReadNoise`, or None.
    iv: :class:`SinhIV`, or None.
  """

  on_off_ratio: float = math.inf
  programming: Programming | WanRRAM2022 | None = None
  faults: StuckAt | None = None
  drift: Drift | None = None
  read: ReadNoise | None = None
  iv: SinhIV | None = None

  def __post_init__(self):
    ratio = checks.number("Device", "on_off_ratio", self.on_off_ratio,
                    allow_inf=True)
    if not ratio > 1:
      raise ValueError(f"Device.on_off_ratio must be > 1 (Gmax / Gmin), got "
                       f"{ratio}")
    object.__setattr__(self, "on_off_ratio", ratio)
    for slot, kinds in _MODEL_SLOTS.items():
      value = getattr(self, slot)
      if value is not None and not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"Device.{slot} must be a rsjax.kernels {names} "
                         f"(or None), got {type(value).__name__}: an unknown "
                         "model")

  def g0(self, hw: hardware.HardwareSpec) -> float:
    """``Gmin`` in levels: ``L / (ratio - 1)``, 0 for an infinite ratio."""
    if math.isinf(self.on_off_ratio):
      return 0.0
    return _top(hw) / (self.on_off_ratio - 1.0)

  @property
  def programs(self) -> bool:
    """Whether programmed conductances differ from the ideal levels, at
    random (a key is needed)."""
    return any(m is not None and m.active
               for m in (self.programming, self.faults, self.drift))

  @property
  def reads(self) -> bool:
    """Whether reads are noisy (rules out tabulated ADC outputs)."""
    return self.read is not None and self.read.active

  @property
  def deterministic_effects(self) -> bool:
    """Whether a deterministic effect (I-V) changes the conductances."""
    return self.iv is not None

  @property
  def ideal(self) -> bool:
    return not (self.programs or self.reads or self.deterministic_effects)

  def program(self, levels, hw: hardware.HardwareSpec, key):
    """Programmed conductances (levels above ``Gmin``, float32).

    Args:
      levels: integer cell levels (any shape).
      hw: the hardware.
      key: a ``jax.random`` key, required when :attr:`programs`.

    Returns:
      ``(g, comp)``: float32 conductances like ``levels`` (at the drift's
      time, if any) and the global drift compensation factor (a float32
      scalar, 1 without compensation).
    """
    g = jnp.asarray(levels, jnp.float32)
    comp = jnp.float32(1.0)
    if not self.programs:
      return g, comp
    if key is None:
      raise ValueError("programming non-idealities need an explicit key")
    g0 = self.g0(hw)
    k_var, k_fault = jax.random.split(key)
    prog = self.programming
    if prog is not None and prog.active:
      std = prog.std(g + jnp.float32(g0), g0, hw)
      # A conductance cannot go below zero (it may go below Gmin: the
      # measured spreads are of the conductance, not clipped to the range).
      floor = jnp.float32(-g0) if g0 else jnp.float32(0.0)
      g = jnp.maximum(g + std * prog.draw(k_var, g.shape), floor)
    stuck = None
    faults = self.faults
    if faults is not None and faults.active:
      u = jax.random.uniform(k_fault, g.shape, jnp.float32)
      top = jnp.float32(_top(hw))
      stuck0 = u < faults.p0
      stuck1 = (u >= faults.p0) & (u < faults.p0 + faults.p1)
      g = jnp.where(stuck0, jnp.float32(0.0), g)
      g = jnp.where(stuck1, top, g)
      stuck = stuck0 | stuck1
    drift = self.drift
    if drift is not None and drift.active:
      t0_sum = jnp.sum(g)
      g_abs = drift.apply(g + jnp.float32(g0), _top(hw) + g0,
                          jax.random.fold_in(key, 2))
      drifted = g_abs - jnp.float32(g0)
      g = drifted if stuck is None else jnp.where(stuck, g, drifted)
      if drift.compensate:
        total = jnp.sum(g)
        comp = jnp.where(total > 0, t0_sum / jnp.where(total > 0, total, 1.0),
                         jnp.float32(1.0))
    return g, comp

  def read_std(self, g, hw: hardware.HardwareSpec):
    """Per-cell read-noise std (levels) of conductances ``g``, or None
    (no per-cell read noise)."""
    if not self.reads or self.read.per != "cell":
      return None
    g0 = self.g0(hw)
    return self.read.std(g + jnp.float32(g0), g0, hw)

  @property
  def sum_read_sigma(self) -> float:
    """The state-independent std of every partial sum (``per='sum'``)."""
    if not self.reads or self.read.per != "sum":
      return 0.0
    return float(self.read.sigma)


def checked(device) -> Device | None:
  """``device`` itself (a :class:`Device` or None), or a ValueError."""
  if device is not None and not isinstance(device, Device):
    raise ValueError(f"device must be a rsjax.kernels.Device, got "
                     f"{type(device).__name__}")
  return device
