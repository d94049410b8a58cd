"""gpubp's CUDA layer: what the CuPy backend calls below CuPy. :mod:`gpubp.cuda.compile`
turns ``kernels/*.cu`` into loaded modules (NVRTC, the disk cache, the architecture and
PTX version), :mod:`gpubp.cuda.kernels` launches them on CuPy arrays, and
:mod:`gpubp.cuda.cublas` calls cuBLAS through ctypes. Importing any of them needs no CuPy
until something runs on the device."""
