"""The Fashion-MNIST study of RESULTS.md as a grid of named points.

  python -m experiments.study [--parallel=2] [--group=cpu|gpu] \
      [--only=REGEX]

Groups: ``cpu`` (MLP and LeNet-5, minutes a point on a 2-core CPU), ``gpu``
(ResNet-20 and VGG-8, sized for an accelerator), ``seeds`` (repeats of
headline candidates), ``study`` (VGG-8 at 60-70x, seeds 0-2, uniform
``k`` against per-layer allocation) and ``hwaware`` (hardware-aware
fine-tune at 4- and 3-bit ADCs: ``MODEL_hwB_MODE``), ``hwaware_gpu`` (the same
for VGG-8's 69x point, sized for an accelerator), ``window`` (the study
sized for one GPU window: experiments/study/gpu_study.py) and ``alloc``
(LeNet-5 with per-layer ``k`` at the ratios of uniform ``k`` = 8 and 4).
Every point of a model starts from that model's baseline point (``MODEL_base``, which trains it and is itself a compression
point at its config's recipe).

Point names: ``MODEL[_TAG]_VARIANT``, the variant ``prune_pP`` (prune only),
``share_kK`` (share only), ``ste_pP_kK`` / ``paper_pP_kK`` (prune + share
with that method); tag ``bn``: BatchNorm kept; ``lk``: the first conv and
the head pruned but not shared; ``long``: 4000 sharing + 3000 fine-tune
steps; ``kdW``: distillation weight W; ``emu``: emulated on 2000 test images;
``aR``: per-layer ``k`` allocated for R x ``ou_ratio``; ``w``: the GPU
window's schedule (2000 sharing + 1500 fine-tune steps, from
``vgg8_float``); suffix ``_sS``: seed S.
"""

from __future__ import annotations

from experiments.study.grid import Grid, Point, Sweep

CONFIGS = {
    "mlp": "experiments/configs/fashion_mnist_mlp.py",
    "lenet5": "experiments/configs/default.py",
    "resnet20": "experiments/configs/fashion_mnist_resnet20.py",
    "vgg8": "experiments/configs/fashion_mnist_vgg8.py",
}
GROUPS = {"mlp": "cpu", "lenet5": "cpu", "resnet20": "gpu", "vgg8": "gpu"}
# The prune-only recipe's recovery training, as long as a fine-tune.
PRUNE_STEPS = 1000


def base(model: str) -> Point:
  # VGG-8's emulation and ADC sweep are its sweep's work (hours on a CPU).
  flags = {"eval.emulate": False} if model == "vgg8" else {}
  return Point(f"{model}_base", CONFIGS[model], flags, group=GROUPS[model])


def point(model: str, variant: str, p: float = 0.0, k: int | None = None,
          *, tag: str = "", seed: int | None = None, bn: bool = False,
          keep: tuple[str, ...] = (), group: str | None = None,
          base_point: str | None = None, **overrides) -> Point:
  """One compression point from ``MODEL_base``'s baseline.

  Args:
    model: a key of :data:`CONFIGS`.
    variant: ``'prune'``, ``'share'``, ``'ste'`` or ``'paper'``.
    p: the OU pruning sparsity.
    k: stored blocks per row-block.
    tag: inserted into the name after the model.
    seed: the run's seed (``_sS`` suffix).
    bn: keep BatchNorm (``compress.fold_bn=False``).
    keep: regexes of layers pruned at ``p`` but left unshared.
    group: the point's group (default: the model's).
    base_point: the point whose baseline it starts from (default
      ``MODEL_base``).
    **overrides: config overrides, ``share__steps=2000`` for
      ``share.steps``.
  """
  settings = {"prune": f"sparsity={p:g}", "share": f"k={k}"}.get(
      variant, f"k={k} sparsity={p:g}")
  rules = tuple(f"{r} sparsity={p:g}" if p else r for r in keep)
  rules += (f"kernel$ {settings}",)
  stages = {"prune": ("prune",), "share": ("share", "finetune")}.get(
      variant, ("prune", "share", "finetune"))
  name = {"prune": f"prune_p{p:g}", "share": f"share_k{k}"}.get(
      variant, f"{variant}_p{p:g}_k{k}")
  flags = {"recipe.stages": stages, "recipe.rules": rules}
  if variant == "prune":
    flags["prune.steps"] = PRUNE_STEPS
  if variant in ("ste", "paper"):
    # The study names the distance loop after the paper that made it.
    flags["share.method"] = "distance" if variant == "paper" else variant
  if bn:
    flags["compress.fold_bn"] = False
  if seed is not None:
    flags["seed"] = seed
  flags.update({k.replace("__", "."): v for k, v in overrides.items()})
  full = "_".join(x for x in (model, tag, name) if x)
  if seed is not None:
    full += f"_s{seed}"
  return Point(full, CONFIGS[model], flags,
               base=base_point or f"{model}_base",
               group=group or GROUPS[model])


def cpu_points() -> list[Point]:
  out = []
  for m in ("mlp", "lenet5"):
    out += [point(m, "prune", 0.5), point(m, "share", 0, 4),
            point(m, "paper", 0.3, 8), point(m, "ste", 0.3, 8),
            point(m, "prune", 0.7), point(m, "share", 0, 2),
            point(m, "paper", 0.6, 4), point(m, "ste", 0.6, 4),
            point(m, "ste", 0.8, 2), point(m, "paper", 0.8, 2),
            point(m, "prune", 0.85), point(m, "share", 0, 1)]
    out += [point(m, "share", 0, 4, tag="bn", bn=True),
            point(m, "paper", 0.6, 4, tag="bn", bn=True),
            point(m, "share", 0, 2, tag="bn", bn=True),
            point(m, "share", 0, 8, tag="bn", bn=True),
            point(m, "paper", 0.3, 8, tag="bn", bn=True)]
  out += [point("mlp", "share", 0, 16), point("mlp", "paper", 0.3, 16),
          point("mlp", "ste", 0.3, 16), point("mlp", "paper", 0.5, 16),
          point("lenet5", "paper", 0.5, 8), point("lenet5", "ste", 0.5, 8),
          point("lenet5", "share", 0, 8), point("lenet5", "prune", 0.3)]
  out += [point("mlp", "paper", 0.5, k, tag="bn", bn=True)
          for k in (16, 12, 10, 8)]
  out += [point("mlp", "share", 0, 16, tag="bn", bn=True),
          point("lenet5", "share", 0, 6, tag="bn", bn=True),
          point("mlp", "paper", 0.6, 6, tag="bn", bn=True),
          point("lenet5", "paper", 0.3, 6, tag="bn", bn=True)]
  return out


def seed_points() -> list[Point]:
  return [point(m, v, p, k, tag="bn", bn=True, seed=s, group="seeds")
          for s in (1, 2)
          for m, v, p, k in (("lenet5", "share", 0, 8),
                             ("mlp", "paper", 0.5, 10),
                             ("lenet5", "share", 0, 6),
                             ("mlp", "paper", 0.5, 12),
                             ("lenet5", "share", 0, 4),
                             ("mlp", "paper", 0.5, 16),
                             ("mlp", "share", 0, 8),
                             ("lenet5", "paper", 0.3, 8),
                             ("mlp", "paper", 0.5, 8))]


# VGG-8 (BatchNorm kept): 2000 + 2000 steps at 1e-3, no emulation in the
# training run (its sweeps emulate it); 'long': 4000 + 3000 steps.
_VGG = dict(bn=True, eval__emulate=False, share__steps=2000,
            finetune__steps=2000, share__learning_rate=1e-3,
            finetune__learning_rate=1e-3)
_LONG = dict(share__steps=4000, finetune__steps=3000)
_LK = ("^conv1/", "^head/")


def gpu_points() -> list[Point]:
  vgg = lambda *a, **kw: point("vgg8", *a, **{**_VGG, **kw})
  return [
      vgg("share", 0, 4, tag="bn_lk", keep=_LK),
      vgg("paper", 0.5, 4, tag="bn_lk", keep=_LK),
      vgg("ste", 0.5, 4, tag="bn_lk", keep=_LK),
      vgg("share", 0, 4, tag="bn"),
      vgg("share", 0, 2, tag="bn_lk", keep=_LK),
      vgg("share", 0, 8, tag="bn_lk", keep=_LK),
      vgg("prune", 0.5, tag="bn"), vgg("prune", 0.7, tag="bn"),
      vgg("share", 0, 4, tag="bn_lk_long", keep=_LK, **_LONG),
      vgg("ste", 0.5, 4, tag="bn_lk_long", keep=_LK, **_LONG),
      vgg("paper", 0.5, 4, tag="bn_lk_long", keep=_LK, **_LONG),
      vgg("ste", 0.5, 4, tag="bn_lk_kd0.5_long", keep=_LK,
          compress__distill_weight=0.5, **_LONG),
      vgg("ste", 0.5, 4, tag="bn_lk_kd0.9_long", keep=_LK,
          compress__distill_weight=0.9, **_LONG),
      point("resnet20", "paper", 0.5, 4, tag="bn", bn=True),
      point("resnet20", "ste", 0.5, 4, tag="bn", bn=True),
      point("resnet20", "prune", 0.5, tag="bn", bn=True),
      point("resnet20", "share", 0, 2, tag="bn", bn=True),
      point("resnet20", "share", 0, 8, tag="bn", bn=True),
  ]


# The 60-70x study: distillation 0.5, the long schedule, seeds 0-2 of the
# uniform k = 4 point and of the per-layer allocation at 64x
# (share.allocate_ou_ratio, the same kept-dense first conv and head), with
# the emulated accuracy (lossless ADC) on 2000 test images.
_STUDY = dict(keep=_LK, compress__distill_weight=0.5, eval__emulate=True,
              eval__emulate_limit=2000, eval__adc_bits=(), **_LONG)


def study_points() -> list[Point]:
  vgg = lambda *a, **kw: point("vgg8", *a, group="study",
                               **{**_VGG, **_STUDY, **kw})
  return [vgg(*args, seed=s, **kw) for s in (0, 1, 2) for args, kw in (
      (("ste", 0.5, 4), dict(tag="bn_lk_kd0.5_long_emu")),
      (("ste", 0.5, 4), dict(tag="bn_lk_kd0.5_long_a64",
                             share__allocate_ou_ratio=64.0)))]


# The study in one GPU window of at most 9 minutes (study/gpu_study.py,
# which sizes it): the recipe of `study` with 2000 sharing and 1500
# fine-tune steps, six runs side by side on one GPU. The baseline is trained
# alone (`vgg8_float`: the config's 3000 steps and no compression stage, so
# the six start as soon as it is trained); the runs do not emulate (their
# accuracy is written as soon as they finish), the `window` sweeps emulate
# them afterwards (lossless ADC, index-and-add, 2000 test images).
WINDOW = dict(share__steps=2000, finetune__steps=1500)
WINDOW_SEEDS = (0, 1, 2)


def window_base() -> Point:
  return Point("vgg8_float", CONFIGS["vgg8"],
               {"recipe.stages": (), "recipe.rules": (), "eval.emulate": False},
               group="window")


def window_points() -> list[Point]:
  vgg = lambda *a, **kw: point(
      "vgg8", *a, group="window", base_point="vgg8_float",
      **{**_VGG, **_STUDY, **WINDOW, "eval__emulate": False, **kw})
  return [window_base()] + [
      vgg(*args, seed=s, **kw) for s in WINDOW_SEEDS for args, kw in (
          (("ste", 0.5, 4), dict(tag="bn_lk_kd0.5_w")),
          (("ste", 0.5, 4), dict(tag="bn_lk_kd0.5_w_a64",
                                 share__allocate_ou_ratio=64.0)))]


def window_sweeps() -> list[Sweep]:
  """Each window point's emulated accuracy (lossless 5-bit ADC,
  index-and-add against the decompressed dense layout)."""
  return [Sweep(f"{p.name}_lossless", p.name,
                {"studies": "equality", "adc_bits": 5, "limit": 2000,
                 "calibration": 500, "batch_size": 100}, group="window")
          for p in window_points() if p.base is not None]


# Per-layer k (share.allocate_ou_ratio) against uniform k at the same ratio
# on LeNet-5 (BN kept, share only): at k = 8 (5.22x, the headline) and
# k = 4 (9.87x), side by side with lenet5_bn_share_k8 / _k4; at 9.87x, where
# the plans differ, seeds 1-2 as well (uniform k = 4's are seed points).
def alloc_points() -> list[Point]:
  out = [point("lenet5", "share", 0, k, tag=f"bn_a{ratio:g}", bn=True,
               group="alloc", share__allocate_ou_ratio=ratio)
         for k, ratio in ((8, 5.22), (4, 9.87))]
  for s in (1, 2):
    out += [point("lenet5", "share", 0, 4, tag="bn_a9.87", bn=True, seed=s,
                  group="alloc", share__allocate_ou_ratio=9.87)]
  return out


# Hardware-aware fine-tune of each CPU model's base compression (its config's
# recipe, deterministic on a CPU: the same model as MODEL_base) at 4- and
# 3-bit ADCs, clip and calibrated, emulated on 2000 test images.
HWAWARE_STEPS = {"mlp": 2000, "lenet5": 1000}


def _hwaware_flags(bits, mode, steps, learning_rate):
  """The recipe's stages with ``hwaware`` last, and its ADC and schedule."""
  flags = {
      "recipe.stages": ("prune", "share", "finetune", "hwaware"),
      "hwaware.steps": steps, "hwaware.learning_rate": learning_rate,
      "hwaware.adc_bits": bits, "hwaware.adc_mode": mode,
      "eval.emulate_limit": 2000, "eval.adc_bits": ()}
  if mode == "calibrated":
    # Input scales stay as first calibrated; only the ADC ranges follow
    # the weights (the table of docs/hwaware.md was made so).
    flags["hwaware.recalibrate_every"] = 250
    flags["hwaware.scales"] = "fixed"
  return flags


def _hwaware_point(m, bits, mode, steps, learning_rate, tag="", seed=None,
                   backward="ste"):
  flags = _hwaware_flags(bits, mode, steps, learning_rate)
  if backward != "ste":
    flags["hwaware.backward"] = backward
    tag += f"_{backward}"
  if seed is not None:  # another compression and fine-tune of the baseline
    flags["seed"] = seed
    tag += f"_s{seed}"
  return Point(f"{m}_hw{bits}_{mode}{tag}", CONFIGS[m], flags,
               base=f"{m}_base", group="hwaware")


def hwaware_points() -> list[Point]:
  out = [_hwaware_point(m, bits, mode, HWAWARE_STEPS[m], 2e-4)
         for m in ("mlp", "lenet5") for bits in (4, 3)
         for mode in ("clip", "calibrated")]
  # The MLP at 4 bits again with a longer fine-tune at a 5x larger learning
  # rate: the 2000-step points above end 1.1-1.75 pp below lossless.
  out += [_hwaware_point("mlp", 4, mode, 4000, 1e-3, tag="_lr1e-3_4k")
          for mode in ("clip", "calibrated")]
  out += [_hwaware_point("mlp", 4, "calibrated", 4000, 1e-3,
                         tag="_lr1e-3_4k", seed=1)]
  # The saturation-aware backward where the straight-through one drifts
  # (3 bits; its backward costs several straight-through steps: the speed
  # table of docs/hwaware.md).
  out += [_hwaware_point("mlp", 3, mode, 2000, 2e-4, backward="saturation")
          for mode in ("calibrated", "clip")]
  out += [_hwaware_point("lenet5", 3, "calibrated", HWAWARE_STEPS["lenet5"],
                         2e-4, backward="saturation")]
  # ... and with the longer schedule that met the 4-bit aim (the MLP's;
  # twice LeNet-5's steps at the same larger learning rate).
  out += [_hwaware_point("mlp", 3, "calibrated", 4000, 1e-3,
                         tag="_lr1e-3_4k", backward="saturation"),
          _hwaware_point("lenet5", 3, "calibrated", 2000, 1e-3,
                         tag="_lr1e-3_2k", backward="saturation")]
  return out + vgg8_hwaware_points()


def vgg8_hwaware_points() -> list[Point]:
  """VGG-8's 69x point (``vgg8_bn_lk_ste_p0.5_k4``) fine-tuned at 4- and
  3-bit ADCs: its recipe again from ``vgg8_base``, then ``hwaware`` with the
  schedule that met the 4-bit aim on the MLP (4000 steps at 1e-3). Sized
  for an accelerator: every step emulates the 128-512-channel convolutions.
  """
  out = []
  for bits in (4, 3):
    for mode in ("clip", "calibrated"):
      hwaware = {k.replace(".", "__"): v
                 for k, v in _hwaware_flags(bits, mode, 4000, 1e-3).items()}
      out.append(point("vgg8", "ste", 0.5, 4, tag=f"bn_lk_hw{bits}_{mode}",
                       keep=_LK, group="hwaware_gpu",
                       **{**_VGG, "eval__emulate": True, **hwaware}))
  return out


_GRID = {"ou_rows": ("8", "9", "16", "32"), "cell_bits": ("1", "2", "4")}


def sweeps() -> list[Sweep]:
  vgg8 = "vgg8_bn_lk_ste_p0.5_k4"
  return [
      Sweep("lenet5_base", "lenet5_base", group="cpu"),
      Sweep("mlp_paper_p0.5_k16", "mlp_paper_p0.5_k16", group="cpu"),
      # ResNet-20 and VGG-8: one part per OU height (grid) and per fault
      # kind, so the study runs side by side on a large host.
      Sweep("resnet20_base", "resnet20_base", {"limit": 500}, parts={
          **{f"o{o}": {"studies": "grid", "ou_rows": o} for o in
             _GRID["ou_rows"]},
          "equality": {"studies": "equality"},
          "faults": {"studies": "faults"}}, group="gpu"),
      Sweep(f"{vgg8}_study", vgg8, {"limit": 2000, "calibration": 500,
                                    "batch_size": 100}, parts={
          **{f"o{o}": {"studies": "grid", "ou_rows": o} for o in
             _GRID["ou_rows"]},
          "equality": {"studies": "equality"},
          "stuck": {"studies": "faults", "program_sigmas": ""},
          "sigma": {"studies": "faults", "stuck_rates": ""}}, group="gpu"),
  ]


def get_grid() -> Grid:
  models = ("mlp", "lenet5", "resnet20", "vgg8")
  return Grid(points=[base(m) for m in models] + cpu_points()
              + seed_points() + gpu_points() + study_points()
              + hwaware_points() + alloc_points() + window_points(),
              sweeps=sweeps() + window_sweeps())
