"""Gradient descent: W ← W − α · dL/dW, with optional momentum and weight decay."""

from __future__ import annotations

import numpy as np

from gpubp import blas
from gpubp.backend import array_module, is_device_array
from gpubp.cuda_kernels import sgd_update  # imports cupy only when it runs
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
        """The same rule for one CuPy parameter, in one fused elementwise kernel."""
        first = self.momentum and self.velocity[i] is None
        if first:
            self.velocity[i] = array_module(p).empty_like(p)
        sgd_update(p, g, self.velocity[i] if self.momentum else None, self.lr, self.momentum,
                   self.weight_decay, self.nesterov, first)

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
