"""scikit-learn's MLPClassifier with logistic hidden units and plain SGD.

Each epoch is one ``partial_fit`` call: sklearn shuffles the row indices, gathers each
batch, and runs its own forward, log-loss, backprop and SGD update (momentum 0, alpha 0).
The call also checks X (finite, dtype), which gpubp does outside its timed epoch: about
10 ms on 16,384 × 784, under 1% of an epoch.
"""

from __future__ import annotations

import warnings

from bench.peers import time_epochs


def check() -> dict:
    import sklearn
    import sklearn.neural_network  # noqa: F401

    return {"scikit-learn": sklearn.__version__}


def run(X, y, point) -> dict:
    import numpy as np
    from sklearn.neural_network import MLPClassifier

    sizes = point["sizes"]
    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="logistic",
                        solver="sgd", batch_size=point["batch_size"],
                        learning_rate="constant", learning_rate_init=point["lr"],
                        momentum=0.0, nesterovs_momentum=False, alpha=0.0, max_iter=1,
                        shuffle=True, random_state=point["seed"], early_stopping=False)
    classes = np.arange(sizes[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The first call also initializes the weights; it is always a warm-up.
        clf.partial_fit(X, y, classes=classes)
        for _ in range(point["warmup"] - 1):
            clf.partial_fit(X, y)
        epoch_s, _ = time_epochs(lambda: clf.partial_fit(X, y), point["repeats"])
    assert clf.coefs_[0].dtype == np.float32, "sklearn should train in X's float32"
    return {"epoch_s": epoch_s, "final_loss": float(clf.loss_), "device_peak_bytes": None}
