"""A network as an ONNX graph, the standard that onnxruntime and other runtimes run.

This module works on the network's arrays and knows no network class, so that
:meth:`gpubp.MLP.to_onnx` can use it; :func:`gpubp.interop.to_onnx` is the public entry.

The graph, for input X (N, n_in) in the network's dtype:

    [Cast to double → Sub offset → Div scale → Cast back]   the stored scaler, if any
    Gemm(a, W^l, b^l, transB=1) → Sigmoid                     each hidden layer
    Gemm(a, W^L, b^L, transB=1) → Softmax(axis=1)            → output "probabilities" (N, C)
    ArgMax(axis=1) → Gather(classes)                          → output "label" (N,)

The outputs are named as skl2onnx names a classifier's (with ``zipmap=False``), so its
users find them where they expect: ``label`` holds the original class values (int64,
double, bool or string) and ``probabilities`` one column per class, in class order. The
scaler runs in double precision, as :meth:`gpubp.model_info.ModelInfo.transform` does.
"""

from __future__ import annotations

import numpy as np

import gpubp
from gpubp.backend import to_numpy
from gpubp.fileio import atomic_writer
from gpubp.validation import check_int

MIN_OPSET = 17
INPUT_NAME = "X"


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs onnx: pip install 'gpubp[onnx]'") from e
    return onnx


def network_to_onnx(net, path=None, *, classes=None, scaler=None, opset: int = MIN_OPSET):
    """The network ``net`` (its ``layer_sizes``, ``dtype``, ``weights``, ``biases`` and
    ``info``) as an ``onnx.ModelProto``, checked with ``onnx.checker`` (full check);
    written to ``path`` too (atomically) when given.

    classes: the label of each output class, (C,); by default ``net.info``'s (0..C−1 when
        it has none). scaler: a fitted gpubp scaler put in front of the network; by
        default ``net.info.scaler``.
    opset: the ai.onnx opset, 17 or newer.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    opset = check_int(opset, "opset", minimum=MIN_OPSET)
    n_in, n_classes = net.layer_sizes[0], net.layer_sizes[-1]
    classes = np.asarray(net.info.class_labels(n_classes) if classes is None else classes)
    if classes.shape != (n_classes,):
        raise ValueError(f"classes: expected {n_classes} labels, got shape {classes.shape}")
    scaler = net.info.scaler if scaler is None else scaler
    float_type = TensorProto.DOUBLE if net.dtype == np.float64 else TensorProto.FLOAT

    nodes, initializers = [], []

    def constant(name, array):
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    a = INPUT_NAME
    if scaler is not None:
        offset, scale = np.asarray(scaler.offset_, np.float64), np.asarray(scaler.scale_,
                                                                            np.float64)
        if offset.shape != (n_in,) or scale.shape != (n_in,):
            raise ValueError(f"scaler: fitted on {offset.shape[0]} features, the network "
                             f"takes {n_in}")
        nodes += [
            helper.make_node("Cast", [a], ["x_double"], to=TensorProto.DOUBLE),
            helper.make_node("Sub", ["x_double", constant("scaler_offset", offset)],
                             ["x_centred"]),
            helper.make_node("Div", ["x_centred", constant("scaler_scale", scale)],
                             ["x_scaled"]),
            helper.make_node("Cast", ["x_scaled"], ["a0"], to=float_type),
        ]
        a = "a0"
    last = len(net.weights)
    for l, (W, b) in enumerate(zip(net.weights, net.biases), start=1):
        z = "logits" if l == last else f"z{l}"
        nodes.append(helper.make_node(
            "Gemm", [a, constant(f"W{l}", to_numpy(W)), constant(f"b{l}", to_numpy(b))], [z],
            transB=1))  # z^l = a^{l−1} (W^l)^T + b^l, with W^l stored (out, in)
        if l < last:
            a = f"a{l}"
            nodes.append(helper.make_node("Sigmoid", [z], [a]))
    label_type, label_values = _labels(classes, TensorProto)
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["class_index"], axis=1, keepdims=0),
        helper.make_node("Gather", [constant("classes", label_values), "class_index"],
                         ["label"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "gpubp_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, float_type, ["N", n_in])],
        [helper.make_tensor_value_info("label", label_type, ["N"]),
         helper.make_tensor_value_info("probabilities", float_type, ["N", n_classes])],
        initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="gpubp",
                              producer_version=gpubp.__version__,
                              doc_string=f"gpubp MLP {list(net.layer_sizes)}, {net.dtype.name}")
    # The oldest IR version that carries this opset, so that older runtimes load it too.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        with atomic_writer(path) as f:
            f.write(model.SerializeToString())
    return model


def _labels(classes: np.ndarray, TensorProto):
    """(ONNX element type, array) of the class labels: int64, double, bool or string."""
    kind = classes.dtype.kind
    if kind in "iu":
        return TensorProto.INT64, classes.astype(np.int64)
    if kind == "f":
        return TensorProto.DOUBLE, classes.astype(np.float64)
    if kind == "b":
        return TensorProto.BOOL, classes.astype(bool)
    return TensorProto.STRING, np.array([str(c).encode() for c in classes.tolist()],
                                        dtype=object)

