"""The Fashion-MNIST study behind RESULTS.md, apart from the product.

The product (:mod:`experiments.main` and the pipeline) runs one experiment;
this package is the study made with it: the grid of named runs
(:mod:`.fashion_mnist_grid`, driven by :mod:`.grid`), the emulation sweeps
(:mod:`.sweeps`), the tables and plots of RESULTS.md (:mod:`.results`,
:mod:`.sweep_report`), the GPU window (:mod:`.gpu_study`) and the kept
runs (``runs/``: each run's ``results.json``). One command runs what is
missing and rewrites RESULTS.md::

  python -m experiments.study [--group=cpu] [--parallel=2] [--list]

It only imports the product; nothing in the product imports it.
"""
