"""Jitted ReRAM crossbar kernels (installed as ``rsjax.kernels``)."""
