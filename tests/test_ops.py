"""The references in gpubp.ops: the math the CUDA kernels are held to, checked on CPU."""

import math

import numpy as np
import pytest

from gpubp import ops
from gpubp.errors import DataError


def direct_cross_entropy(logits, targets):
    """Loss per row and P·Σy − Y, from the definitions, in Python floats (no shifting)."""
    logits = np.asarray(logits, np.float64)
    losses, grads = [], []
    for z, t in zip(logits, targets):
        y = np.eye(len(z))[t] if np.ndim(t) == 0 else np.asarray(t, np.float64)
        m = max(z)
        s = math.fsum(math.exp(v - m) for v in z)
        p = np.array([math.exp(v - m) / s for v in z])
        losses.append(-math.fsum(yj * (v - m - math.log(s)) for yj, v in zip(y, z) if yj))
        grads.append(p * math.fsum(y) - y)
    return np.array(losses), np.array(grads)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("dense", [False, True])
def test_softmax_cross_entropy_matches_the_definition(rng, dtype, rtol, dense):
    logits = rng.normal(size=(9, 7)) * 3
    logits[:, 2] *= 20  # probabilities far from uniform
    targets = rng.dirichlet(np.ones(7), size=9) if dense else rng.integers(0, 7, 9)
    loss, grad = ops.softmax_cross_entropy(logits.astype(dtype), targets, scale=0.25)
    want_loss, want_grad = direct_cross_entropy(logits, targets)
    assert loss.dtype == grad.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad, 0.25 * want_grad, rtol=rtol, atol=rtol)


def test_mean_counts_only_rows_that_are_not_ignored(rng):
    logits = rng.normal(size=(6, 4))
    labels = np.array([0, -100, 3, 1, -100, 2])
    rows, grad = ops.softmax_cross_entropy(logits, labels, scale=1.0, ignore_index=-100)
    mean, grad_again = ops.softmax_cross_entropy(logits, labels, ignore_index=-100,
                                                 reduction="mean")
    kept = labels != -100
    want_loss, want_grad = direct_cross_entropy(logits[kept], labels[kept])
    np.testing.assert_allclose(rows[kept], want_loss, rtol=1e-12)
    assert np.all(rows[~kept] == 0) and np.all(grad[~kept] == 0)
    np.testing.assert_allclose(grad[kept], want_grad, rtol=1e-12, atol=1e-15)
    assert mean.shape == () and mean == pytest.approx(want_loss.mean(), rel=1e-12)
    np.testing.assert_array_equal(grad, grad_again)


def test_every_row_ignored_gives_a_zero_mean_not_nan(rng):
    mean, grad = ops.softmax_cross_entropy(rng.normal(size=(3, 5)), np.full(3, 7),
                                           ignore_index=7, reduction="mean")
    assert mean == 0 and not np.isnan(mean) and np.all(grad == 0)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_labels_of_either_width_and_in_place_gradient(rng, label_dtype):
    logits = rng.normal(size=(5, 10))
    labels = rng.integers(0, 10, 5).astype(label_dtype)
    want_loss, want_grad = ops.softmax_cross_entropy(logits, labels.astype(np.int64), 0.5)
    buffer = logits.copy()
    loss, grad = ops.softmax_cross_entropy(buffer, labels, 0.5, out=buffer)
    assert grad is buffer
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("shift", [1e4, -1e4, 123.25])
def test_shifting_a_row_changes_nothing(rng, shift):
    logits = rng.normal(size=(4, 6))
    labels = rng.integers(0, 6, 4)
    loss, grad = ops.softmax_cross_entropy(logits, labels)
    shifted_loss, shifted_grad = ops.softmax_cross_entropy(logits + shift, labels)
    np.testing.assert_allclose(shifted_loss, loss, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(shifted_grad, grad, rtol=1e-11, atol=1e-11)


def test_minus_infinity_logits_get_zero_probability():
    logits = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, 5.0]])
    with np.errstate(invalid="ignore"):
        loss, grad = ops.softmax_cross_entropy(logits, np.array([[0.5, 0.0, 0.5], [0, 0, 1.0]]))
        label_loss, _ = ops.softmax_cross_entropy(logits, np.array([1, 2]))
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, [0.5 * math.log1p(math.e) + 0.5 * math.log1p(1 / math.e), 0])
    assert grad[0, 1] == 0 and grad[1, 0] == 0 and grad[1, 2] == 0
    assert label_loss[0] == np.inf and label_loss[1] == 0  # the label's own p is 0, then 1


def torch_cross_entropy(logits, targets, reduction):
    """``F.cross_entropy`` with probability targets, in float64: the loss and its gradient
    with respect to the logits (of the sum of the per-row losses for "none")."""
    torch = pytest.importorskip("torch")
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(z, torch.tensor(targets, dtype=torch.float64),
                                             reduction=reduction)
    loss.sum().backward()
    return loss.detach().numpy(), z.grad.numpy()


def rows_summing_to(rng, total, rows=6, cols=7):
    """Random target rows that each sum to ``total``, with zeros inside, and one all-zero row."""
    targets = rng.uniform(size=(rows, cols))
    targets[:, 1::3] = 0
    targets *= total / targets.sum(axis=1, keepdims=True)
    targets[-1] = 0
    return targets


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("total", [1.0, 0.5, 2.7])
def test_target_rows_match_torch_loss_and_gradient_for_any_row_sum(rng, total, reduction):
    logits = rng.normal(size=(6, 7)) * 3
    targets = rows_summing_to(rng, total)
    # torch's mean divides by B, as gpubp's does; its gradient is then that of the mean.
    scale = 1.0 / len(logits) if reduction == "mean" else 1.0
    loss, grad = ops.softmax_cross_entropy(logits, targets, scale, reduction=reduction)
    want_loss, want_grad = torch_cross_entropy(logits, targets, reduction)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-14)
    # The loss ignores a common offset of a row, so each gradient row sums to 0 (P − Y's
    # would sum to 1 − Σy).
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-15)
    assert np.all(grad[-1] == 0) and (reduction == "mean" or loss[-1] == 0)


@pytest.mark.parametrize("total", [0.5, 2.7])
def test_gradient_of_rows_not_summing_to_one_matches_finite_differences(rng, total):
    logits = rng.normal(size=(3, 5)) * 2
    targets = rows_summing_to(rng, total, rows=3, cols=5)
    targets[-1] = rng.uniform(size=5)  # a row of any sum
    _, grad = ops.softmax_cross_entropy(logits, targets, 0.5)
    h = 1e-5
    numeric = np.empty_like(logits)
    for index in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[index] = h
        up = ops.softmax_cross_entropy(logits + step, targets, grad=False)[0].sum()
        down = ops.softmax_cross_entropy(logits - step, targets, grad=False)[0].sum()
        numeric[index] = 0.5 * (up - down) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_target_rows_that_are_not_floating_point_are_a_type_error(dtype):
    targets = np.eye(3, dtype=dtype)[[0, 2]]  # one-hot, as PyTorch also refuses them
    with pytest.raises(TypeError, match=rf"^targets: target rows \(B, C\) must be floating "
                                        rf"point, got {np.dtype(dtype)}"):
        ops.softmax_cross_entropy(np.zeros((2, 3)), targets)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_labels_of_any_integer_dtype_still_work(dtype):
    loss, grad = ops.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 2], dtype))
    np.testing.assert_allclose(loss, math.log(3))
    np.testing.assert_allclose(grad, [[-2 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, -2 / 3]])


@pytest.mark.parametrize("labels", [[0, 5], [-1, 0], [0, -100]])
def test_out_of_range_labels_raise_naming_targets(labels):
    with pytest.raises(DataError, match=r"^targets: labels must lie in \[0, 5\)"):
        ops.softmax_cross_entropy(np.zeros((2, 5)), np.array(labels))


@pytest.mark.parametrize("kwargs,match", [
    ({"reduction": "sum"}, "^reduction: expected one of"),
    ({"out": np.zeros((2, 4))}, "^out: expected shape"),
    ({"ignore_index": 0, "dense": True}, "^ignore_index: applies to integer labels"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    targets = np.full((2, 5), 0.2) if kwargs.pop("dense", False) else np.zeros(2, int)
    with pytest.raises(ValueError, match=match):
        ops.softmax_cross_entropy(np.zeros((2, 5)), targets, **kwargs)


def test_zero_classes_is_an_error_naming_logits():
    with pytest.raises(ValueError, match="^logits: need at least one class"):
        ops.softmax_cross_entropy(np.zeros((2, 0)), np.zeros(2, int))


def test_loss_alone_skips_the_gradient(rng):
    logits = rng.normal(size=(3, 4))
    loss, grad = ops.softmax_cross_entropy(logits, np.array([0, 1, 2]), grad=False)
    assert grad is None
    np.testing.assert_array_equal(loss, ops.softmax_cross_entropy(logits, np.array([0, 1, 2]))[0])


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-15), (np.float32, 1e-6)])
def test_bias_sigmoid_matches_the_stable_sigmoid(rng, dtype, rtol):
    z = (rng.normal(size=(6, 5)) * 30).astype(dtype)
    z[0] = [-1e4, -90, 0, 90, 1e4]
    bias = rng.normal(size=5).astype(dtype)
    want = ops.sigmoid(z + bias)
    out = z.copy()
    got = ops.bias_sigmoid(out, bias, out=out)
    assert got is out and got.dtype == dtype
    tiny = np.finfo(dtype).tiny  # below it a result may flush to 0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=tiny)
    assert np.all((got >= 0) & (got <= 1))


def test_sigmoid_backward_and_its_bias_gradient(rng):
    a = rng.uniform(size=(7, 4))
    g = rng.normal(size=(7, 4))
    want = g * a * (1 - a)
    db = np.empty(4)
    delta = ops.sigmoid_backward(g.copy(), a, bias_grad=db)
    np.testing.assert_allclose(delta, want, rtol=1e-15)
    np.testing.assert_allclose(db, want.sum(axis=0), rtol=1e-14)
    in_place = g.copy()
    assert ops.sigmoid_backward(in_place, a, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, delta)
