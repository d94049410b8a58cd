"""The peers that bench.compare trains side by side, by name.

Every peer module has two functions:

- ``check(**options) -> dict``: imports what the peer needs and returns its versions;
  raises ImportError or :class:`PeerUnavailable` (with the reason) where it cannot run.
- ``run(X, y, point, **options) -> dict``: trains ``point["warmup"]`` untimed epochs, then
  ``point["repeats"]`` timed ones, and returns ``{"epoch_s": [seconds per timed epoch],
  "device_peak_bytes": int or None, ...}``.

An epoch is the same work for every peer: a fresh permutation of the N rows, then for
each batch of B rows: gather, forward, softmax cross-entropy loss, backward, and a plain
SGD update (no momentum, no weight decay). ``point`` is a dict with ``sizes`` (layer
sizes, n_in first), ``batch_size``, ``lr``, ``seed``, ``warmup``, ``repeats``, ``threads``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (no device, a compiler that fails, ...); the message says why."""


@dataclass(frozen=True)
class Peer:
    """One contestant: where its code lives, the device it runs on, and its options.

    ``reference`` names the gpubp peer its ratio is taken against; ``env`` is set in the
    worker's environment before anything is imported (e.g. CUPY_TF32).
    """

    name: str
    module: str
    device: str  # "cpu" or "cuda"
    reference: str
    options: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    default: bool = True  # run when no --peers are named


PEERS = {p.name: p for p in (
    # gpubp as installed: the GEMM library chosen by measurement (gpubp.blas_choice).
    Peer("gpubp-numpy", "bench.peers.gpubp_peer", "cpu", "gpubp-numpy", {"backend": "numpy"}),
    # gpubp held to one library each ($GPUBP_BLAS): NumPy's own OpenBLAS, what a plain
    # `pip install gpubp` gets, and MKL; rows of their own, ratios against gpubp-numpy.
    Peer("gpubp-numpy-openblas", "bench.peers.gpubp_peer", "cpu", "gpubp-numpy",
         {"backend": "numpy"}, {"GPUBP_BLAS": "numpy"}),
    Peer("gpubp-numpy-mkl", "bench.peers.gpubp_peer", "cpu", "gpubp-numpy",
         {"backend": "numpy", "library": "mkl"}, {"GPUBP_BLAS": "mkl"}),
    Peer("gpubp-numpy-onednn", "bench.peers.gpubp_peer", "cpu", "gpubp-numpy",
         {"backend": "numpy", "library": "onednn"}, {"GPUBP_BLAS": "onednn"}, default=False),
    Peer("torch-eager-cpu", "bench.peers.torch_peer", "cpu", "gpubp-numpy", {"device": "cpu"}),
    Peer("torch-compile-cpu", "bench.peers.torch_peer", "cpu", "gpubp-numpy",
         {"device": "cpu", "compile": True}),
    Peer("sklearn", "bench.peers.sklearn_peer", "cpu", "gpubp-numpy"),
    Peer("naive-numpy", "bench.peers.naive_peer", "cpu", "gpubp-numpy"),
    # Only the step's GEMMs, on the library fastest for each point: the ceiling.
    Peer("gemm-only", "bench.peers.gemm_only_peer", "cpu", "gpubp-numpy", default=False),
    Peer("gemm-only-bf16", "bench.peers.gemm_only_peer", "cpu", "gpubp-numpy-bf16",
         {"precision": "bf16"}, default=False),
    # bf16 GEMMs (fp32 accumulation), only when asked for: gpubp's opt-in mode, and
    # PyTorch's bf16 autocast, its ratio against gpubp's bf16 row.
    Peer("gpubp-numpy-bf16", "bench.peers.gpubp_peer", "cpu", "gpubp-numpy-bf16",
         {"backend": "numpy", "precision": "bf16"}, default=False),
    Peer("torch-eager-cpu-bf16", "bench.peers.torch_peer", "cpu", "gpubp-numpy-bf16",
         {"device": "cpu", "autocast": "bf16"}, default=False),
    Peer("gpubp-cupy", "bench.peers.gpubp_peer", "cuda", "gpubp-cupy", {"backend": "cupy"}),
    Peer("torch-eager-cuda", "bench.peers.torch_peer", "cuda", "gpubp-cupy", {"device": "cuda"}),
    Peer("torch-compile-cuda", "bench.peers.torch_peer", "cuda", "gpubp-cupy",
         {"device": "cuda", "compile": True}),
    # TF32 matmuls (10-bit mantissa inputs): a separately labelled row, only when asked for.
    Peer("gpubp-cupy-tf32", "bench.peers.gpubp_peer", "cuda", "gpubp-cupy-tf32",
         {"backend": "cupy"}, {"CUPY_TF32": "1"}, default=False),
    Peer("torch-eager-cuda-tf32", "bench.peers.torch_peer", "cuda", "gpubp-cupy-tf32",
         {"device": "cuda", "tf32": True}, default=False),
)}


def time_epochs(epoch, repeats: int, sync=lambda: None) -> tuple[list, object]:
    """Runs ``epoch()`` ``repeats`` times, each timed after ``sync()`` (a device's queue
    drained); returns (seconds per epoch, what the last epoch returned)."""
    epoch_s, last = [], None
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        last = epoch()
        epoch_s.append(time.perf_counter() - started)
    return epoch_s, last


def select(names=None, device: str = "all") -> list[Peer]:
    """The peers named (all defaults when None), keeping those on ``device`` (cpu|cuda|all)."""
    if names is None:
        chosen = [p for p in PEERS.values() if p.default]
    else:
        unknown = [n for n in names if n not in PEERS]
        if unknown:
            raise ValueError(f"peers: unknown {unknown}; known: {list(PEERS)}")
        chosen = [PEERS[n] for n in names]
    if device not in ("cpu", "cuda", "all"):
        raise ValueError(f"device: expected cpu, cuda or all, got {device!r}")
    return [p for p in chosen if device == "all" or p.device == device]
