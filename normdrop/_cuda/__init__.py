"""CUDA backend: CuPy arrays on the kernels of ``normdrop/_cuda/*.cu``.

The backend itself (the contract of :mod:`normdrop._contract`) is
:mod:`normdrop._cuda._backend`; :mod:`normdrop._cuda._loader` assembles the
kernel sources and compiles them lazily, once per device.  CuPy is imported
only when an op runs, so these modules can be imported (and the sources
compiled by the NVRTC check in CI) where CuPy is not installed.
"""
