"""gpubp's CUDA layer: what the CuPy backend calls below CuPy (cuBLAS through ctypes)."""
