"""Gradient descent: W ← W − α · dL/dW, with optional momentum and weight decay."""

from __future__ import annotations

import numpy as np

from gpubp import blas
from gpubp.backend import array_module, is_device_array
from gpubp.cuda import kernels as cuda  # imports cupy only when a kernel runs
from gpubp.validation import check_float


class SGD:
    """Stochastic gradient descent with the update rule of ``torch.optim.SGD``.

    For each parameter p with gradient g, at learning rate α:
        g ← g + weight_decay · p
        v ← momentum · v + g            (v = g on the first step)
        g ← g + momentum · v  if nesterov, else  g ← v
        p ← p − α · g
    With momentum 0 this is the seed's plain gradient descent.
    """

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr = check_float(lr, "lr", 0.0, strict=True)
        self.momentum = check_float(momentum, "momentum", 0.0, below=1.0)
        self.weight_decay = check_float(weight_decay, "weight_decay", 0.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov: expected a bool, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        self.nesterov = nesterov
        self.velocity = None  # one buffer per parameter, made on the first step
        self._scratch = None

    def step(self, params, grads) -> None:
        """Update ``params`` (and the momentum buffers) in place. grads: same shapes; unchanged.

        On NumPy the updates are in place (one pass each with MKL, see gpubp.blas), with a
        scratch buffer per parameter for weight decay and Nesterov; on CuPy each parameter
        takes one fused kernel.
        """
        if self.momentum and self.velocity is None:
            self.velocity = [None] * len(params)
        if self._scratch is None or len(self._scratch) != len(params):
            self._scratch = [None] * len(params)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if is_device_array(p):
                self._step_on_device(i, p, g)
                continue
            scratch = self._scratch[i]
            if (self.weight_decay or self.nesterov) and (
                    scratch is None or scratch.shape != p.shape or scratch.dtype != p.dtype):
                scratch = self._scratch[i] = np.empty_like(p)
            if self.weight_decay:
                np.multiply(p, self.weight_decay, out=scratch)
                g = np.add(scratch, g, out=scratch)
            if self.momentum:
                v = self.velocity[i]
                if v is None:
                    v = self.velocity[i] = g.copy()
                else:
                    blas.axpby(1.0, g, self.momentum, v)  # v ← g + momentum·v
                if self.nesterov:
                    if g is not scratch:
                        np.copyto(scratch, g)
                    blas.axpby(self.momentum, v, 1.0, scratch)  # g + momentum·v
                    g = scratch
                else:
                    g = v
            blas.axpby(-self.lr, g, 1.0, p)  # p ← p − lr·g

    def _step_on_device(self, i, p, g) -> None:
        """The same rule for one CuPy parameter, in one launch of kernels/sgd.cu."""
        first = bool(self.momentum) and self.velocity[i] is None
        if first:
            self.velocity[i] = array_module(p).empty_like(p)
        device_update(p, g, self.velocity[i] if self.momentum else None, self.lr,
                      self.momentum, self.weight_decay, self.nesterov, first)

    def momentum_buffers(self, params, zeros_like) -> tuple[list | None, bool]:
        """The momentum buffers v, one per parameter, for an update that steps them in
        place itself (the CUDA step's multi-tensor kernel): ``(buffers, made)``. Where any
        is missing all are made with ``zeros_like`` and ``made`` is True (the next step is
        then the first: v ← g). (None, False) without momentum."""
        if not self.momentum:
            return None, False
        if self.velocity is None or any(v is None for v in self.velocity):
            self.velocity = [zeros_like(p) for p in params]
            return self.velocity, True
        return self.velocity, False

    def reset(self) -> None:
        """Forget the momentum buffers."""
        self.velocity = None

    def state_dict(self) -> dict:
        """The optimizer's state between steps: ``{"velocity": [v per parameter] or None}``
        (None before the first step or without momentum). The arrays are the live buffers."""
        velocity = self.velocity
        if velocity is None or any(v is None for v in velocity):
            velocity = None
        return {"velocity": velocity}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (arrays are taken, not copied)."""
        velocity = state.get("velocity")
        if velocity is not None and not self.momentum:
            raise ValueError("state: momentum buffers given to an SGD without momentum")
        self.velocity = None if velocity is None else list(velocity)

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")


def device_update(p, g, velocity, lr, momentum, weight_decay, nesterov, first) -> None:
    """:class:`SGD`'s rule for one CuPy parameter: ``sgd_update`` of kernels/sgd.cu, one
    launch. p and velocity (None without momentum; not read when ``first``) are updated
    in place; all contiguous, of one shape and float dtype. (A whole network's parameters
    in one launch: gpubp.cuda.kernels.multi_sgd.)"""
    for name, a in (("g", g), ("velocity", velocity)):
        if a is not None and (a.shape != p.shape or a.dtype != p.dtype):
            raise ValueError(f"{name}: expected shape {p.shape} and dtype {p.dtype}, got "
                             f"{a.shape} and {a.dtype}")
    if not all(a is None or a.flags.c_contiguous for a in (p, g, velocity)):
        raise ValueError("p, g, velocity: the device update needs contiguous arrays")
    if p.size == 0:
        return
    dtype = p.dtype.type
    vec = cuda.vector_width(dtype, 0, p, g, velocity)  # any size: the kernel has a tail loop
    cuda.launch("sgd.cu", f"sgd_update_{cuda.SUFFIX[dtype]}_v{vec}",
                (cuda.grid_stride_blocks(p.size // vec),), (cuda.BLOCK,),
                (p, g, cuda.pointer(velocity), np.int64(p.size), dtype(lr), dtype(momentum),
                 dtype(weight_decay), np.int32(bool(nesterov)), np.int32(bool(first))))
