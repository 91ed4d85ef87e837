"""CUDA backend (CuPy RawModule kernels): not built yet."""
NAME = "cuda"


def __getattr__(name):
    raise NotImplementedError("the CUDA backend is not implemented yet")
