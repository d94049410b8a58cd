"""ONNX export of a gpubp network: the graph is described in :mod:`gpubp.onnx_graph`."""

from __future__ import annotations

from gpubp.network import MLP
from gpubp.onnx_graph import INPUT_NAME, MIN_OPSET, network_to_onnx

__all__ = ["to_onnx", "INPUT_NAME", "MIN_OPSET"]


def to_onnx(net: MLP, path=None, *, classes=None, scaler=None, opset: int = MIN_OPSET):
    """The network as an ``onnx.ModelProto``, checked with ``onnx.checker`` (full check);
    written to ``path`` too (atomically) when given.

    classes: the label of each output class, (C,); by default ``net.info``'s (0..C−1 when
        it has none). scaler: a fitted gpubp scaler put in front of the network; by
        default ``net.info.scaler``.
    opset: the ai.onnx opset, 17 or newer.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a gpubp.MLP, got {type(net).__name__}")
    return network_to_onnx(net, path, classes=classes, scaler=scaler, opset=opset)
