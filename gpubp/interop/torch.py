"""PyTorch interop: a gpubp network as ``nn.Sequential(Linear, Sigmoid, ..., Linear)`` and
back, and such a stack's state dict (a safetensors file) as a gpubp network.

The Sequential ends with the output Linear, as PyTorch classifiers trained with
``nn.CrossEntropyLoss`` do: its outputs are the logits z^L, and
``torch.softmax(module(x), dim=1)`` is gpubp's P. ``nn.Linear`` keeps its weight as
(out, in), the layout of gpubp's W^l, so the arrays copy across as they are.
"""

from __future__ import annotations

import re

import numpy as np

from gpubp.backend import to_numpy
from gpubp.errors import ModelFileError
from gpubp.fileio import read_regular, read_safetensors
from gpubp.network import MLP
from gpubp.validation import check_dtype

MAX_BYTES = 1 << 40  # as for gpubp's own model files
SUPPORTED = ("gpubp reads Linear, Sigmoid, Linear, ..., Sigmoid, Linear, optionally "
             "followed by Softmax(dim=1)")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("PyTorch interop needs torch: pip install torch") from e
    return torch


def to_torch(net: MLP, device=None):
    """``net`` as a new ``torch.nn.Sequential`` of Linear and Sigmoid layers, in the net's
    dtype, holding copies of its weights.

    device: where the module's parameters go; by default the network's own device (the
    CPU for NumPy, the current CUDA device for CuPy). The outputs are logits:
    ``torch.softmax(module(x), dim=1)`` equals ``net.predict_proba(x)``.
    """
    torch = _torch()
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a gpubp.MLP, got {type(net).__name__}")
    if device is None:
        device = f"cuda:{net.weights[0].device.id}" if net.backend.is_gpu else "cpu"
    dtype = getattr(torch, net.dtype.name)
    through_host = net.backend.is_gpu and torch.device(device).type != "cuda"

    def tensor(a):  # a view through DLPack (NumPy or CuPy), or a host copy for the CPU
        return torch.from_numpy(to_numpy(a)) if through_host else torch.from_dlpack(a)

    layers = []
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        linear = torch.nn.Linear(W.shape[1], W.shape[0], device=device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(tensor(W))
            linear.bias.copy_(tensor(b))
        layers.append(linear)
        if l < len(net.weights) - 1:
            layers.append(torch.nn.Sigmoid())
    return torch.nn.Sequential(*layers)


def from_torch(module, *, backend="auto", dtype=None) -> MLP:
    """A gpubp network with the weights of a PyTorch stack of Linear and Sigmoid layers.

    module: an ``nn.Sequential`` (nested ones are read in order) or a single ``nn.Linear``:
        Linear, Sigmoid, Linear, ..., Linear, with an optional final ``Softmax(dim=1)``
        (or ``dim=-1``). Linear layers without a bias read as a zero bias.
    dtype: the network's dtype; by default float64 when the first Linear's weight is
        float64, else float32.

    Raises TypeError/ValueError naming the first layer gpubp cannot read.
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    layers = list(_leaves(module, ""))
    if layers and isinstance(layers[-1][1], nn.Softmax):
        name, softmax = layers.pop()
        if softmax.dim not in (1, -1, None):  # None: PyTorch's implicit dim, 1 on 2-D input
            raise ValueError(f"module: layer {name!r} is Softmax(dim={softmax.dim}); gpubp's "
                             "softmax runs over the classes, dim=1")
    linears = []
    for i, (name, layer) in enumerate(layers):
        expected = nn.Linear if i % 2 == 0 else nn.Sigmoid
        if not isinstance(layer, expected):
            raise ValueError(f"module: layer {name!r} ({type(layer).__name__}) is not supported "
                             f"where a {expected.__name__} should be: {SUPPORTED}")
        if expected is nn.Linear:
            linears.append((name, layer))
    if not linears or len(layers) % 2 == 0:
        last = f"ends with layer {layers[-1][0]!r} (Sigmoid)" if layers else "has no layers"
        raise ValueError(f"module: {last}; {SUPPORTED}")
    parameters = []
    for name, linear in linears:
        weight = linear.weight.detach()
        bias = linear.bias.detach() if linear.bias is not None else \
            torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        parameters.append((f"layer {name!r}", weight, bias))
    if dtype is None:
        dtype = "float64" if linears[0][1].weight.dtype == torch.float64 else "float32"
    return _build(parameters, backend, dtype, _tensor_to_array)


def from_torch_state_dict(source, *, backend="auto", dtype=None) -> MLP:
    """A gpubp network from the state dict of an ``nn.Sequential(Linear, Sigmoid, ...,
    Linear)``: a safetensors file of it (``safetensors.torch.save_file(module.state_dict(),
    path)``), or the dict itself (tensors or arrays).

    Keys are ``{prefix}{index}.weight`` and ``{prefix}{index}.bias`` with one common prefix
    (e.g. ``0.weight``, ``2.weight``...); the layers are taken in index order, a Sigmoid
    between each two. PyTorch does not store the activations in a state dict, so they are
    assumed; the shapes must chain. dtype: by default the first weight's (float64 stays
    float64, anything else becomes float32).

    Raises ModelFileError for an unreadable file; ValueError naming the key that does not fit.
    """
    if isinstance(source, dict):
        tensors, what = source, "state_dict"
    else:
        try:
            _, tensors = read_safetensors(read_regular(source, limit=MAX_BYTES,
                                                       error=ModelFileError))
        except ModelFileError:
            raise
        except ValueError as e:
            raise ModelFileError(f"{source}: not a readable safetensors file ({e})") from e
        what = str(source)
    layers, prefixes = {}, set()
    for key in tensors:
        match = re.fullmatch(r"(.*?)(\d+)\.(weight|bias)", key)
        if match is None:
            raise ValueError(f"{what}: key {key!r} is not a Linear layer's weight or bias "
                             "(expected keys like '0.weight', '0.bias', '2.weight')")
        prefix, index, kind = match.groups()
        prefixes.add(prefix)
        layers.setdefault(int(index), {})[kind] = key
    if not layers:
        raise ValueError(f"{what}: holds no tensors")
    if len(prefixes) > 1:
        raise ValueError(f"{what}: keys of more than one module: prefixes {sorted(prefixes)}")
    parameters = []
    for index in sorted(layers):
        keys = layers[index]
        if "weight" not in keys:
            raise ValueError(f"{what}: {keys['bias']!r} has no weight beside it")
        weight = _host_array(tensors[keys["weight"]], keys["weight"])
        bias = (_host_array(tensors[keys["bias"]], keys["bias"]) if "bias" in keys
                else np.zeros(weight.shape[:1], dtype=weight.dtype))
        parameters.append((repr(keys["weight"]), weight, bias))
    if dtype is None:
        dtype = "float64" if parameters[0][1].dtype == np.float64 else "float32"
    return _build(parameters, backend, dtype, lambda a, net: net.backend.asarray(a))


def _leaves(module, prefix: str):
    """(name, module) of each leaf of nested Sequentials, in order."""
    torch = _torch()
    if not isinstance(module, torch.nn.Sequential):
        yield prefix or type(module).__name__, module
        return
    for name, child in module.named_children():
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name)


def _build(parameters, backend, dtype, convert) -> MLP:
    """An MLP from [(name, W (out, in), b (out,))], checking that the shapes chain."""
    check_dtype(dtype)
    sizes = []
    for name, W, b in parameters:
        if len(W.shape) != 2 or tuple(b.shape) != (W.shape[0],):
            raise ValueError(f"{name}: weight {tuple(W.shape)} and bias {tuple(b.shape)} are "
                             "not a Linear layer's (out, in) and (out,)")
        if sizes and W.shape[1] != sizes[-1]:
            raise ValueError(f"{name}: takes {W.shape[1]} inputs, the layer before gives "
                             f"{sizes[-1]}")
        sizes = sizes or [int(W.shape[1])]
        sizes.append(int(W.shape[0]))
    net = MLP(sizes, backend=backend, dtype=dtype, seed=0)
    arrays = [convert(a, net) for _, W, b in parameters for a in (W, b)]
    for (name, _, _), pair in zip(parameters, zip(arrays[::2], arrays[1::2])):
        if not all(bool(net.backend.xp.isfinite(a).all()) for a in pair):
            raise ValueError(f"{name}: holds NaN or Inf")
    net.load_state(arrays)
    return net


def _tensor_to_array(tensor, net: MLP):
    """A PyTorch tensor as an array of ``net``'s backend and dtype: through DLPack on the
    same device, else through the host."""
    torch = _torch()
    tensor = tensor.to(getattr(torch, net.dtype.name))
    if net.backend.is_gpu and tensor.is_cuda:
        return net.backend.xp.from_dlpack(tensor)
    return net.backend.asarray(tensor.cpu().numpy())


def _host_array(value, key: str) -> np.ndarray:
    """A state-dict entry (a tensor or an array) as a float NumPy array."""
    if hasattr(value, "detach"):  # a torch.Tensor; bfloat16 and half read as float32
        value = value.detach().cpu()
        if not value.is_floating_point():
            raise ValueError(f"{key!r}: dtype {value.dtype} is not floating point")
        if value.dtype not in (_torch().float32, _torch().float64):
            value = value.float()
        value = value.numpy()
    array = np.asarray(to_numpy(value))
    if array.dtype.kind != "f":
        raise ValueError(f"{key!r}: dtype {array.dtype} is not floating point")
    return array
