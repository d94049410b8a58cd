"""Learning-rate schedules: the factor that multiplies the base learning rate each epoch."""

from __future__ import annotations

import math

from gpubp.validation import check_float, check_int


class ConstantLR:
    """The base learning rate throughout."""

    def factor(self, epoch: int, total_epochs: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "ConstantLR()"


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        self.step_size = check_int(step_size, "step_size")
        self.gamma = check_float(gamma, "gamma", 0.0, strict=True)

    def factor(self, epoch: int, total_epochs: int) -> float:
        return self.gamma ** (epoch // self.step_size)

    def __repr__(self) -> str:
        return f"StepLR(step_size={self.step_size}, gamma={self.gamma})"


class CosineLR:
    """Cosine annealing from the base rate (epoch 0) towards ``min_factor`` × base.

    factor(e) = min_factor + (1 − min_factor) · (1 + cos(π e / E)) / 2, E = total epochs.
    """

    def __init__(self, min_factor: float = 0.0):
        self.min_factor = check_float(min_factor, "min_factor", 0.0, below=1.0)

    def factor(self, epoch: int, total_epochs: int) -> float:
        progress = epoch / max(total_epochs, 1)
        return self.min_factor + (1 - self.min_factor) * (1 + math.cos(math.pi * progress)) / 2

    def __repr__(self) -> str:
        return f"CosineLR(min_factor={self.min_factor})"


def make_schedule(name: str | None, *, step_size: int = 10, gamma: float = 0.1):
    """A schedule by name: None or "constant", "step", "cosine"."""
    if name in (None, "constant", "none"):
        return ConstantLR()
    if name == "step":
        return StepLR(step_size, gamma)
    if name == "cosine":
        return CosineLR()
    raise ValueError(f"schedule: expected 'constant', 'step' or 'cosine', got {name!r}")
