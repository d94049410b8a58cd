"""One training step over persistent buffers, per backend.

A stepper runs the steps of an epoch: ``begin_epoch(order, lr)``, then ``step(b)`` for
each batch b (rows ``order[b·B:(b+1)·B]``), then ``finish_epoch()`` for the epoch's
Σ_rows loss. Each backend's step reads top to bottom in one file:
:mod:`gpubp.step.numpy_step` and :mod:`gpubp.step.cuda_step`. The readable reference
of the same math is :meth:`gpubp.MLP.loss_and_grads` with :meth:`gpubp.SGD.step`.
"""

from gpubp.step.numpy_step import NumpyStepper
from gpubp.step.workspace import Workspace


def make_stepper(net, optimizer, X, targets, batch_size: int, comm=None, **options):
    """The stepper for ``net``'s backend. X: (N, n_in), targets: (N,) or (N, C),
    prepared arrays on that backend; ``comm`` a :mod:`gpubp.distributed` communicator
    for data-parallel training. ``options`` go to the backend's stepper: ``precision``
    ("fp32"; "bf16" on NumPy, "tf32" on CuPy) and, on CuPy, ``cuda_graphs``."""
    if net.backend.is_gpu:
        from gpubp.step.cuda_step import CudaStepper  # imports CuPy

        return CudaStepper(net, optimizer, X, targets, batch_size, comm=comm, **options)
    return NumpyStepper(net, optimizer, X, targets, batch_size, comm=comm, **options)


__all__ = ["make_stepper", "NumpyStepper", "Workspace"]
