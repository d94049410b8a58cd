"""Gradient descent: W ← W − α · dL/dW, with optional momentum and weight decay."""

from __future__ import annotations

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

    def step(self, params, grads) -> None:
        """Update ``params`` (and the momentum buffers) in place. grads: same shapes; unchanged."""
        if self.momentum and self.velocity is None:
            self.velocity = [None] * len(params)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self.velocity[i]
                if v is None:
                    v = self.velocity[i] = g.copy()
                else:
                    v *= self.momentum
                    v += g
                g = g + self.momentum * v if self.nesterov else v
            p -= self.lr * g

    def reset(self) -> None:
        """Forget the momentum buffers."""
        self.velocity = None

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")
