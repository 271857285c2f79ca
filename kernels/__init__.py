"""Kernels: one package per operation, a torch reference beside each fast path.

``kernels`` never imports ``engine``. Each package exposes launcher functions that pick the fast
path on CUDA (where it exists) and the reference everywhere else.
"""
