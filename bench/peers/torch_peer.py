"""PyTorch: Linear, Sigmoid, ..., Linear with F.cross_entropy and torch.optim.SGD, eager or
under torch.compile, on the CPU or a CUDA device; a manual loop over shuffled batches."""

from __future__ import annotations

import time

from bench.peers import PeerUnavailable, time_epochs


def check(device: str, compile: bool = False, tf32: bool = False,
          autocast: str | None = None) -> dict:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise PeerUnavailable(f"torch {torch.__version__} sees no CUDA device "
                              f"(built for CUDA {torch.version.cuda})")
    if autocast == "bf16" and device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise PeerUnavailable(f"torch {torch.__version__} has no fast bf16 on this CPU")
    versions = {"torch": torch.__version__}
    if device == "cuda":
        versions["device"] = torch.cuda.get_device_name(0)
    return versions


def torch_mlp(sizes):
    """The network in torch: Linear, Sigmoid, ..., Linear (no sigmoid on the logits)."""
    import torch

    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers[:-1])


def run(X, y, point, device: str, compile: bool = False, tf32: bool = False,
        autocast: str | None = None) -> dict:
    """``autocast="bf16"``: the forward pass (and so its GEMMs, forward and backward)
    under ``torch.autocast`` with bfloat16; parameters, optimizer and loss stay fp32."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(point["threads"])
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(point["seed"])
    dev = torch.device(device)
    model = torch_mlp(point["sizes"]).to(dev)
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=point["lr"])
    X_all, y_all = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    n, batch = X_all.shape[0], point["batch_size"]
    generator = torch.Generator().manual_seed(point["seed"])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def epoch() -> float:
        order = torch.randperm(n, generator=generator).to(dev)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        for i in range(0, n, batch):
            rows = order[i:i + batch]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast == "bf16"):
                loss = F.cross_entropy(forward(X_all[rows]), y_all[rows])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * rows.shape[0]
        return float(loss_sum) / n  # reading the loss synchronizes, as in gpubp

    started = time.perf_counter()
    try:
        for _ in range(point["warmup"]):
            epoch()
    except Exception as e:  # a compiler missing or failing here is "not working", not a result
        if not compile:
            raise
        raise PeerUnavailable(f"torch.compile failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    warmup_s = time.perf_counter() - started
    epoch_s, loss = time_epochs(epoch, point["repeats"], sync)
    result = {"epoch_s": epoch_s, "final_loss": loss, "warmup_s": warmup_s,
              "device_peak_bytes": None}
    if dev.type == "cuda":
        result["device_peak_bytes"] = torch.cuda.max_memory_allocated()
        result["device_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return result
