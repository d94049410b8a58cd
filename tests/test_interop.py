"""The ways in and out: DLPack inputs (no copy on the same device), PyTorch modules and
state dicts, and ONNX export checked by onnxruntime."""

import numpy as np
import pytest

import gpubp
from gpubp.cli import main
from gpubp.datasets import StandardScaler, load_digits
from gpubp.interop import dlpack, from_torch, from_torch_state_dict, to_onnx, to_torch

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    """A 64-32-16-10 float32 net, trained a little so that its outputs are not uniform."""
    net = gpubp.MLP([64, 32, 16, 10], backend="numpy", seed=0)
    gpubp.Trainer(net, gpubp.SGD(0.3, momentum=0.9), batch_size=32, epochs=3, seed=0,
                  progress=False).fit(digits.X_train, digits.y_train)
    return net


class ForeignTensor:
    """A DLPack producer on a device of our choosing, wrapping a NumPy or CuPy array."""

    def __init__(self, array, device=(1, 0)):
        self.array, self.device = array, device

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device


# ---- DLPack ------------------------------------------------------------------------------

def test_torch_tensors_are_read_without_a_copy(trained, digits):
    X = digits.X_test[:50]
    t = torch.from_numpy(X)
    prepared = trained.prepare_features(t)
    assert isinstance(prepared, np.ndarray) and np.shares_memory(prepared, X)
    assert trained.prepare_targets(torch.from_numpy(digits.y_test[:50]), 50).base is not None


def test_every_entry_point_takes_dlpack_tensors(trained, digits):
    X, y = digits.X_test[:64], digits.y_test[:64]
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)
    np.testing.assert_array_equal(trained.forward(tX), trained.forward(X))
    np.testing.assert_array_equal(trained.predict(tX), trained.predict(X))
    assert trained.evaluate(tX, ty) == trained.evaluate(X, y)
    loss, grads = trained.loss_and_grads(tX, ty)
    assert loss == trained.loss_and_grads(X, y)[0]
    # Trainer.fit, with validation tensors too: the same run as with NumPy arrays.
    runs = []
    for Xs, ys in ((X, y), (tX, ty)):
        net = gpubp.MLP([64, 8, 10], backend="numpy", seed=1)
        gpubp.Trainer(net, gpubp.SGD(0.1), batch_size=16, epochs=2, seed=0,
                      progress=False).fit(Xs, ys, validation=(Xs[:10], ys[:10]))
        runs.append(net.weights[0])
    np.testing.assert_array_equal(*runs)


def test_outputs_go_back_through_dlpack(trained, digits):
    P = trained.predict_proba(digits.X_test)
    back = torch.from_dlpack(P)
    assert back.data_ptr() == P.ctypes.data


def test_unreadable_tensors_are_type_errors_that_say_what_to_do(trained, digits):
    t = torch.from_numpy(digits.X_test[:4])
    with pytest.raises(TypeError, match=r"^X: cannot be read through DLPack.*\.float\(\)"):
        trained.forward(t.to(torch.bfloat16))
    with pytest.raises(TypeError, match=r"^X: cannot be read .*detach"):
        trained.forward(t.clone().requires_grad_())
    with pytest.raises(TypeError, match=r"^X: is on cuda:0 and the network on the NumPy "
                                        r"backend.*tensor\.cpu\(\).*backend='cupy'"):
        trained.forward(ForeignTensor(digits.X_test[:4], device=(2, 0)))
    with pytest.raises(TypeError, match=r"^y: is on cuda:0"):
        trained.evaluate(digits.X_test[:4], ForeignTensor(digits.y_test[:4], device=(2, 0)))
    with pytest.raises(TypeError, match="^X: is on metal:0, which gpubp cannot read"):
        trained.forward(ForeignTensor(digits.X_test[:4], device=(8, 0)))


def test_host_dlpack_producers_of_any_kind(trained, digits):
    X = digits.X_test[:8]
    foreign = ForeignTensor(X)
    assert dlpack.is_dlpack(foreign) and not dlpack.is_dlpack(X)
    assert dlpack.device_of(foreign) == ("cpu", 0)
    np.testing.assert_array_equal(trained.forward(foreign), trained.forward(X))


@pytest.mark.gpu
def test_a_cuda_tensor_passed_to_a_cupy_network_shares_its_pointer():
    import cupy

    net = gpubp.MLP([4, 3, 2], backend="cupy", seed=0)
    X = cupy.arange(12, dtype=cupy.float32).reshape(3, 4) / 12
    foreign = ForeignTensor(X, device=(2, X.device.id))
    assert net.prepare_features(foreign).data.ptr == X.data.ptr
    assert net.forward(foreign).shape == (3, 2)
    if torch.cuda.is_available():
        t = torch.rand(5, 4, device="cuda")
        assert net.prepare_features(t).data.ptr == t.data_ptr()
        back = torch.from_dlpack(net.predict_proba(t))
        assert back.is_cuda and back.shape == (5, 2)


# ---- PyTorch -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float64", 1e-12)])
def test_to_torch_gives_the_same_softmax(digits, dtype, tolerance):
    net = gpubp.MLP([64, 20, 12, 10], backend="numpy", dtype=dtype, seed=3)
    module = to_torch(net)
    assert [type(m).__name__ for m in module] == ["Linear", "Sigmoid", "Linear", "Sigmoid",
                                                  "Linear"]
    X = digits.X_test.astype(dtype)
    with torch.no_grad():
        P = torch.softmax(module(torch.from_numpy(X)), dim=1).numpy()
    np.testing.assert_allclose(P, net.predict_proba(X), rtol=0, atol=tolerance)
    assert module[0].weight.dtype == getattr(torch, dtype)
    module[0].weight.data.zero_()  # a copy: the network keeps its weights
    assert np.abs(net.weights[0]).sum() > 0


def test_from_torch_reads_a_stack_back(trained, digits):
    module = torch.nn.Sequential(to_torch(trained), torch.nn.Softmax(dim=1))  # nested
    net = from_torch(module, backend="numpy")
    assert net.layer_sizes == trained.layer_sizes and net.dtype == np.float32
    np.testing.assert_array_equal(net.predict_proba(digits.X_test),
                                  trained.predict_proba(digits.X_test))
    no_bias = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.Sigmoid(),
                                  torch.nn.Linear(3, 2, dtype=torch.float64))
    read = from_torch(no_bias)
    assert read.layer_sizes == (4, 3, 2) and not np.any(read.biases[0])


@pytest.mark.parametrize("layers, message", [
    ([torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)],
     r"^module: layer '1' \(ReLU\) is not supported"),
    ([torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Dropout(), torch.nn.Linear(3, 2)],
     r"^module: layer '2' \(Dropout\) is not supported"),
    ([torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)],
     r"^module: layer '1' \(Linear\) is not supported where a Sigmoid should be"),
    ([torch.nn.Linear(4, 3), torch.nn.Sigmoid()], r"^module: ends with layer '1' \(Sigmoid\)"),
    ([torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(5, 2)],
     r"^layer '2': takes 5 inputs, the layer before gives 3"),
    ([torch.nn.Linear(4, 3), torch.nn.Softmax(dim=0)], r"^module: layer '1' is Softmax\(dim=0\)"),
])
def test_from_torch_names_the_first_unsupported_layer(layers, message):
    with pytest.raises(ValueError, match=message):
        from_torch(torch.nn.Sequential(*layers))


def test_from_torch_state_dict_file_and_dict(trained, digits, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    module = to_torch(trained)
    path = tmp_path / "stack.safetensors"
    safetensors_torch.save_file(module.state_dict(), path)
    for source in (path, str(path), module.state_dict()):
        net = from_torch_state_dict(source, backend="numpy")
        np.testing.assert_array_equal(net.predict_proba(digits.X_test),
                                      trained.predict_proba(digits.X_test))
    prefixed = {f"model.{k}": v for k, v in module.state_dict().items()}
    assert from_torch_state_dict(prefixed).layer_sizes == trained.layer_sizes
    with pytest.raises(ValueError, match=r"^state_dict: key 'running_mean' is not"):
        from_torch_state_dict({**module.state_dict(), "running_mean": torch.zeros(3)})
    with pytest.raises(gpubp.ModelFileError):
        (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
        from_torch_state_dict(tmp_path / "junk.safetensors")


# ---- ONNX --------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def run_onnx(model_or_path, X):
    source = model_or_path if isinstance(model_or_path, str) else \
        model_or_path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    return session.run(None, {"X": X})


def test_onnx_on_mnist_matches_gpubp_within_1e5(mnist_dir, tmp_path):
    """onnxruntime's probabilities on 1,000 MNIST test rows, with the scaler in front."""
    data = gpubp.datasets.load_mnist(mnist_dir, download=False)
    scaler = StandardScaler().fit(data.X_train[:10000])
    net = gpubp.MLP([784, 64, 10], backend="numpy", seed=0)
    gpubp.Trainer(net, gpubp.SGD(0.05, momentum=0.9), batch_size=100, epochs=1, seed=0,
                  progress=False).fit(scaler.transform(data.X_train[:10000]),
                                      data.y_train[:10000])
    net.info.scaler, net.info.classes = scaler, np.arange(10) + 100  # labels 100..109
    net.save(tmp_path / "mnist.safetensors")
    assert main(["export", str(tmp_path / "mnist.safetensors"), "--format", "onnx",
                 "--out", str(tmp_path / "mnist.onnx")]) == 0
    model = onnx.load(tmp_path / "mnist.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert [n.op_type for n in model.graph.node][:4] == ["Cast", "Sub", "Div", "Cast"]
    X = data.X_test[:1000]
    labels, P = run_onnx(str(tmp_path / "mnist.onnx"), X)
    expected = net.predict_proba(scaler.transform(X))
    np.testing.assert_allclose(P, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels, 100 + expected.argmax(axis=1))
    assert (labels == 100 + data.y_test[:1000]).mean() > 0.85


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_onnx_method_with_string_labels(digits, dtype, tmp_path):
    net = gpubp.MLP([64, 16, 10], backend="numpy", dtype=dtype, seed=0)
    net.info.classes = np.array([f"digit {i}" for i in range(10)], dtype=object)
    model = net.to_onnx(tmp_path / "digits.onnx")
    assert (tmp_path / "digits.onnx").read_bytes() == model.SerializeToString()
    X = digits.X_test.astype(dtype)
    labels, P = run_onnx(model, X)
    np.testing.assert_allclose(P, net.predict_proba(X), rtol=0, atol=1e-5 if dtype ==
                               "float32" else 1e-12)
    np.testing.assert_array_equal(labels, net.info.classes[P.argmax(axis=1)])
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Sigmoid", "Gemm", "Softmax",
                                                     "ArgMax", "Gather"]


def test_estimator_to_onnx_uses_its_classes(digits):
    exceptions = pytest.importorskip("sklearn.exceptions")
    clf = gpubp.MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, learning_rate_init=0.3,
                              random_state=0, dtype="float32")
    y = np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])[digits.y_train]
    with pytest.warns(exceptions.ConvergenceWarning):
        clf.fit(digits.X_train, y)
    labels, P = run_onnx(clf.to_onnx(), digits.X_test)
    np.testing.assert_allclose(P, clf.predict_proba(digits.X_test), atol=1e-5)
    np.testing.assert_array_equal(labels, clf.predict(digits.X_test))


def test_export_errors(trained, tmp_path, capsys):
    trained.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="^opset: must be >= 17"):
        to_onnx(trained, opset=16)
    code = main(["export", str(tmp_path / "m.safetensors"), "--out",
                 str(tmp_path / "m.safetensors")])
    assert code == 1 and "--out: " in capsys.readouterr().err
    code = main(["export", str(tmp_path / "missing.safetensors"), "--out",
                 str(tmp_path / "x.onnx")])
    assert code == 1 and not (tmp_path / "x.onnx").exists()
