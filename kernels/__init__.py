"""Kernels: one package per operation, a torch reference beside each fast path.

``kernels`` never imports ``engine``. Each package exposes launcher functions that pick the fast
path on CUDA (where it exists) and the reference everywhere else.
"""

import functools
import importlib.util


@functools.cache
def has_triton() -> bool:
    """True when Triton can be imported (looked up once: every decode step dispatches on it)."""
    return importlib.util.find_spec("triton") is not None
