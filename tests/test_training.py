"""The trainer, the optimizer and the schedules."""

import math

import numpy as np
import pytest
from helpers import blobs

import gpubp
from gpubp.datasets import load_digits


def train(seed, epochs=3, **kwargs):
    X, y = blobs()
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=seed)
    trainer = gpubp.Trainer(net, gpubp.SGD(0.5, momentum=0.9), batch_size=8, epochs=epochs,
                            seed=seed, progress=False, **kwargs)
    return net, trainer.fit(X, y)


def test_same_seed_gives_bit_identical_weights():
    a, _ = train(seed=11)
    b, _ = train(seed=11)
    c, _ = train(seed=12)
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.tobytes() == q.tobytes()
    assert a.weights[0].tobytes() != c.weights[0].tobytes()


def test_fit_is_the_documented_minibatch_loop():
    """Replays fit by hand: per-epoch shuffles from the seed, a last batch of its own size
    (60 rows in batches of 25 → 25, 25, 10), one SGD step per batch; equal to float64 rounding."""
    X, y = blobs(n=60)
    net = gpubp.MLP((5, 7, 3), backend="numpy", dtype="float64", seed=0)
    reference = gpubp.MLP((5, 7, 3), backend="numpy", dtype="float64", seed=0)
    gpubp.Trainer(net, gpubp.SGD(0.2, momentum=0.5), batch_size=25, epochs=2, seed=4,
                  progress=False).fit(X, y)

    optimizer = gpubp.SGD(0.2, momentum=0.5)
    shuffle_seed, _ = np.random.SeedSequence(4).spawn(2)
    rng = np.random.default_rng(shuffle_seed)
    sizes = []
    for _ in range(2):
        order = rng.permutation(60)
        for start in range(0, 60, 25):
            rows = order[start:start + 25]
            sizes.append(len(rows))
            _, grads = reference.loss_and_grads(X[rows], y[rows])
            optimizer.step(reference.parameters(), [g for pair in grads for g in pair])
    assert sizes == [25, 25, 10] * 2
    for p, q in zip(net.parameters(), reference.parameters()):
        # the trainer's step uses its own buffers and BLAS calls: equal to rounding
            np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [
    (0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, True, 1e-2), (0.0, False, 1e-3),
])
def test_sgd_matches_torch_optim_sgd(momentum, nesterov, weight_decay):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(4, 3)), rng.normal(size=(4,))]
    grads_per_step = [[rng.normal(size=p.shape) for p in params] for _ in range(5)]
    torch_params = [torch.tensor(p, requires_grad=True) for p in params]
    torch_opt = torch.optim.SGD(torch_params, lr=0.1, momentum=momentum, nesterov=nesterov,
                                weight_decay=weight_decay)
    ours = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for grads in grads_per_step:
        ours.step(params, [g.copy() for g in grads])
        for tp, g in zip(torch_params, grads):
            tp.grad = torch.tensor(g)
        torch_opt.step()
    for p, tp in zip(params, torch_params):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_sgd_state_dict_round_trips_and_continues_like_torch():
    """state_dict after 3 steps, loaded into a fresh SGD: the next 2 steps equal an
    uninterrupted run's (torch.optim.SGD's state_dict works the same way)."""
    rng = np.random.default_rng(1)
    start = [rng.normal(size=(4, 3)), rng.normal(size=(4,))]
    grads = [[rng.normal(size=p.shape) for p in start] for _ in range(5)]
    whole, resumed = [p.copy() for p in start], [p.copy() for p in start]
    first, stopped = (gpubp.SGD(0.1, momentum=0.9, nesterov=True) for _ in range(2))
    assert first.state_dict() == {"velocity": None}  # before the first step
    for g in grads[:3]:
        first.step(whole, g)
        stopped.step(resumed, g)
    saved = {"velocity": [v.copy() for v in stopped.state_dict()["velocity"]]}
    second = gpubp.SGD(0.1, momentum=0.9, nesterov=True)
    second.load_state_dict(saved)
    for g in grads[3:]:
        first.step(whole, g)
        second.step(resumed, g)
    for p, q in zip(whole, resumed):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="momentum buffers given to an SGD without momentum"):
        gpubp.SGD(0.1).load_state_dict(saved)


def test_momentum_buffers_are_made_once_as_zeros_for_an_outside_update():
    params = [np.ones((2, 3)), np.ones(2)]
    assert gpubp.SGD(0.1).momentum_buffers(params, np.zeros_like) == (None, False)
    sgd = gpubp.SGD(0.1, momentum=0.9)
    buffers, made = sgd.momentum_buffers(params, np.zeros_like)
    assert made and [b.shape for b in buffers] == [(2, 3), (2,)] and not any(b.any() for b in buffers)
    again, made = sgd.momentum_buffers(params, np.zeros_like)
    assert not made and all(a is b for a, b in zip(again, buffers))
    assert sgd.state_dict()["velocity"] is buffers


def test_schedules():
    step = gpubp.StepLR(step_size=3, gamma=0.5)
    assert [step.factor(e, 10) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cosine = gpubp.CosineLR(min_factor=0.1)
    assert cosine.factor(0, 10) == 1.0
    assert cosine.factor(5, 10) == pytest.approx(0.55)
    assert cosine.factor(10, 10) == pytest.approx(0.1)
    assert gpubp.ConstantLR().factor(99, 100) == 1.0


def test_trainer_applies_the_schedule_and_restores_the_base_rate():
    optimizer = gpubp.SGD(0.4)
    X, y = blobs()
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=0)
    history = gpubp.Trainer(net, optimizer, batch_size=16, epochs=4, progress=False,
                            schedule=gpubp.StepLR(2, 0.5)).fit(X, y)
    assert history["lr"] == [0.4, 0.4, 0.2, 0.2]
    assert optimizer.lr == 0.4


def test_history_records_every_epoch():
    X, y = blobs()
    seen = []
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=0)
    history = gpubp.Trainer(net, gpubp.SGD(0.5, momentum=0.9), batch_size=8, epochs=4, seed=0,
                            progress=False, on_epoch=seen.append).fit(X, y, validation=0.25)
    assert len(history) == 4 and seen == list(history)
    assert history["epoch"] == [1, 2, 3, 4]
    for record in history:
        assert set(record) == set(gpubp.History.KEYS)
        assert record["train_loss"] > 0 and record["val_loss"] > 0
        assert 0 <= record["val_accuracy"] <= 1
        assert record["wall_time"] > 0
        assert record["samples_per_s"] == pytest.approx(45 / record["wall_time"])  # 60 − 15
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history[-1]["val_accuracy"] > 0.9


def test_validation_fraction_is_stratified_and_seeded():
    from gpubp.datasets.preprocessing import stratified_indices

    labels = np.repeat([0, 1, 2], [50, 30, 20])
    first, second = stratified_indices(labels, 0.2, np.random.default_rng(0))
    assert np.bincount(labels[second]).tolist() == [10, 6, 4]
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(100))
    again = stratified_indices(labels, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(second, again[1])


def test_early_stopping_restores_the_best_weights():
    X, y = blobs(n=80, seed=1)
    X_val, y_val = blobs(n=40, seed=2)
    y_val = (y_val + 1) % 3  # a validation set the training data contradicts: it gets worse
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=0)
    states = {}
    trainer = gpubp.Trainer(net, gpubp.SGD(0.5, momentum=0.9), batch_size=8, epochs=30,
                            seed=0, patience=3, progress=False,
                            on_epoch=lambda r: states.__setitem__(r["epoch"], net.state()))
    history = trainer.fit(X, y, validation=(X_val, y_val))
    assert history.stopped_early and len(history) < 30
    best = int(np.argmin(history["val_loss"])) + 1
    assert history.best_epoch == best and len(history) == best + 3
    for p, q in zip(net.parameters(), states[best]):
        np.testing.assert_array_equal(p, q)


def test_divergence_stops_with_an_error_and_keeps_the_last_good_weights():
    X, y = blobs()
    X *= 1e3
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=0)
    states = {}

    def remember(record):
        states[record["epoch"]] = net.state()

    states[0] = net.state()
    optimizer = gpubp.SGD(1e36, momentum=0.5)
    trainer = gpubp.Trainer(net, optimizer, batch_size=4, epochs=5, seed=0,
                            progress=False, on_epoch=remember)
    with np.errstate(all="ignore"), pytest.raises(gpubp.DivergenceError, match="diverged in epoch"):
        trainer.fit(X, y)
    assert any(all(np.array_equal(p, q) for p, q in zip(net.parameters(), s))
               for s in states.values())
    assert np.isfinite(net.loss_and_grads(X, y)[0])
    assert optimizer.velocity is None  # reset: the buffers held the non-finite steps


def test_divergence_on_the_last_step_of_an_epoch_goes_back_one_more_epoch():
    """With one batch per epoch, epoch 1's only step can ruin the weights that epoch 2
    starts from; the network must then keep epoch 1's start, whose loss was finite."""
    X, y = blobs()
    X *= 100
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=0)
    initial = net.state()
    trainer = gpubp.Trainer(net, gpubp.SGD(3e38), batch_size=len(X), epochs=3, seed=0,
                            progress=False)
    with np.errstate(all="ignore"), pytest.raises(gpubp.DivergenceError, match="start of epoch 1"):
        trainer.fit(X, y)
    for p, q in zip(net.parameters(), initial):
        np.testing.assert_array_equal(p, q)
    assert np.isfinite(net.loss_and_grads(X, y)[0])


def test_digits_default_reaches_97_percent():
    data = load_digits()
    net = gpubp.MLP((64, 128, 10), backend="numpy", seed=0)
    optimizer = gpubp.SGD(0.3, momentum=0.9, weight_decay=1e-4)
    gpubp.Trainer(net, optimizer, batch_size=16, epochs=100, seed=0, progress=False,
                  schedule=gpubp.CosineLR()).fit(data.X_train, data.y_train)
    assert net.evaluate(data.X_test, data.y_test)["accuracy"] >= 0.97


def test_training_on_soft_targets_learns(rng):
    X, y = blobs()
    soft = np.eye(3)[y] * 0.9 + 0.1 / 3
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=0)
    history = gpubp.Trainer(net, gpubp.SGD(0.5, momentum=0.9), batch_size=8, epochs=10,
                            progress=False).fit(X, soft)
    assert math.isfinite(history[-1]["train_loss"])
    assert np.mean(net.predict(X) == y) > 0.95


def test_quiet_training_prints_nothing(capsys):
    train(seed=0, epochs=2)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
