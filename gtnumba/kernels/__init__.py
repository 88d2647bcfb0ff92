"""Kernels: the code that touches array memory, one module per backend (never imports dask)."""
