"""The backward pass is the exact gradient: against finite differences and torch autograd."""

import numpy as np
import pytest

import gpubp
from gpubp import ops

# (layer sizes, batch): 1 to 4 hidden layers, odd widths, B = 1 and B > 1.
NETS = [
    ((5, 3), 4),
    ((7, 5, 3), 1),
    ((7, 5, 3), 6),
    ((4, 9, 5, 3), 3),
    ((3, 4, 5, 6, 2), 5),
    ((6, 3, 7, 1, 5, 4), 2),
]


def random_problem(sizes, batch, soft, seed):
    rng = np.random.default_rng(seed)
    net = gpubp.MLP(sizes, backend="numpy", dtype="float64", seed=seed)
    for b in net.biases:
        b[...] = rng.normal(size=b.shape)
    X = rng.normal(size=(batch, sizes[0]))
    if soft:
        y = rng.dirichlet(np.ones(sizes[-1]), size=batch)
    else:
        y = rng.integers(0, sizes[-1], size=batch)
    return net, X, y


def finite_difference_grads(net, X, y, h=1e-3):
    """Central differences with one Richardson step: error O(h^4) plus rounding ~1e-13."""
    def loss():
        return net.loss_and_grads(X, y)[0]

    grads = []
    for p in net.parameters():
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            d = {}
            for step in (h, h / 2):
                p[i] = saved + step
                up = loss()
                p[i] = saved - step
                down = loss()
                d[step] = (up - down) / (2 * step)
            p[i] = saved
            g[i] = (4 * d[h / 2] - d[h]) / 3
        grads.append(g)
    return grads


def max_relative_error(a, b):
    """max over elements of |a − b| / max(|a|, |b|)."""
    scale = np.maximum(np.abs(a), np.abs(b))
    return float((np.abs(a - b) / np.where(scale > 0, scale, 1.0)).max())


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft-targets"])
@pytest.mark.parametrize("sizes,batch", NETS)
def test_gradients_match_finite_differences(sizes, batch, soft):
    net, X, y = random_problem(sizes, batch, soft, seed=len(sizes) * 10 + batch)
    _, grads = net.loss_and_grads(X, y)
    analytic = [g for pair in grads for g in pair]
    numeric = finite_difference_grads(net, X, y)
    for a, n, p in zip(analytic, numeric, net.parameters()):
        assert a.shape == p.shape
        assert max_relative_error(a, n) < 1e-6


def test_finite_difference_check_can_fail():
    """The check catches a gradient that is wrong by a little (here by 1e-4 in one entry)."""
    net, X, y = random_problem((4, 5, 3), 3, False, seed=1)
    _, grads = net.loss_and_grads(X, y)
    wrong = grads[0][0].copy()
    wrong[0, 0] *= 1 + 1e-4
    assert max_relative_error(wrong, finite_difference_grads(net, X, y)[0]) > 1e-6


def test_single_class_network_has_zero_loss_and_gradient():
    net, X, y = random_problem((11, 13, 1), 4, False, seed=3)
    loss, grads = net.loss_and_grads(X, y)
    assert loss == 0.0
    assert all((g == 0).all() for pair in grads for g in pair)


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft-targets"])
@pytest.mark.parametrize("sizes,batch", NETS)
def test_gradients_match_torch_autograd(sizes, batch, soft):
    torch = pytest.importorskip("torch")
    net, X, y = random_problem(sizes, batch, soft, seed=7 + batch)
    loss, grads = net.loss_and_grads(X, y)

    params = [torch.tensor(p, requires_grad=True) for p in net.parameters()]
    a = torch.tensor(X)
    for i in range(0, len(params) - 2, 2):
        a = torch.sigmoid(a @ params[i].T + params[i + 1])
    logits = a @ params[-2].T + params[-1]
    target = torch.tensor(y) if soft else torch.tensor(y, dtype=torch.long)
    torch_loss = torch.nn.functional.cross_entropy(logits, target)
    torch_loss.backward()

    assert loss == pytest.approx(torch_loss.item(), rel=1e-12, abs=1e-14)
    for ours, p in zip([g for pair in grads for g in pair], params):
        np.testing.assert_allclose(ours, p.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_logits_give_finite_loss_and_gradients(dtype):
    net = gpubp.MLP((3, 4, 5), backend="numpy", dtype=dtype, seed=0)
    net.biases[-1][...] = np.array([1e4, -1e4, 0.0, 1e4, -1e4])
    X = np.ones((2, 3))
    for y in (np.array([1, 2]), np.full((2, 5), 0.2)):
        loss, grads = net.loss_and_grads(X, y)
        assert np.isfinite(loss) and loss > 1e3  # the true classes sit ~1e4 below the max
        assert all(np.isfinite(g).all() for pair in grads for g in pair)


def test_softmax_cross_entropy_is_shift_invariant_and_exact(rng):
    logits = rng.normal(size=(6, 10)) * 20
    labels = rng.integers(0, 10, size=6)
    loss, grad = ops.softmax_cross_entropy(logits, labels, scale=0.5)
    shifted_loss, shifted_grad = ops.softmax_cross_entropy(logits + 1e4, labels, scale=0.5)
    np.testing.assert_allclose(shifted_loss, loss, rtol=1e-9)
    np.testing.assert_allclose(shifted_grad, grad, rtol=1e-9, atol=1e-15)

    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(10)[labels]
    np.testing.assert_allclose(loss, -np.log(p[np.arange(6), labels]), rtol=1e-12)
    np.testing.assert_allclose(grad, 0.5 * (p - onehot), rtol=1e-12, atol=1e-15)  # EqA1.1


def test_sigmoid_is_stable_and_accurate_in_both_tails():
    z = np.array([-1000.0, -745.0, -40.0, -1.0, 0.0, 1.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = ops.sigmoid(z)
        s32 = ops.sigmoid(z.astype(np.float32))
    assert s32.dtype == np.float32
    np.testing.assert_allclose(s[2:-2], 1 / (1 + np.exp(-z[2:-2])), rtol=1e-15)
    assert s[0] == 0.0 and s[-1] == 1.0 and 0 < s[1] < 1e-300
    np.testing.assert_allclose(s32, s, rtol=1e-6, atol=1e-45)
