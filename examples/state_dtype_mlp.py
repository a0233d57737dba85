r"""Low-bit Adam state on the digits: `python examples/state_dtype_mlp.py [--quick] [--seeds N]`.

The MLP and data of examples/tricks_mlp.py (``x -> W1 -> BatchNorm -> ReLU -> W2 + b2``,
8x8 digits split 75/25, standardized) trained by ``fastopt.Adam`` (lr 3e-3 with a linear warmup
over the first epoch and cosine decay, batch 64) with its state held as float32, bfloat16
(nearest even) and int8 (bitsandbytes' blockwise format; by default only tensors of at least
``min_8bit_size`` = 4096 elements, here W1 with 64 x 128, and with ``min_8bit_size=0`` every
tensor). Every row uses the same initializations and batch orders (one per seed); the table
gives the test accuracy and cross-entropy as mean +- std (ddof=1) over the seeds.
"""
import os
import sys
import time

import numpy as np

import fastopt as fo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tricks_mlp import (BATCH, MLP, N_CLASSES, format_table, load_split,  # noqa: E402
                        parse_setting)

FULL = dict(seeds=10, epochs=40, hidden=128)
QUICK = dict(seeds=2, epochs=4, hidden=128)
LR = 3e-3
#: row label -> state keywords of fastopt.Adam
ROWS = {
    "Adam, float32 state": dict(state_dtype="float32"),
    "Adam, bfloat16 state": dict(state_dtype="bfloat16"),
    "Adam, int8 state (tensors >= 4096)": dict(state_dtype="int8"),
    "Adam, int8 state (every tensor)": dict(state_dtype="int8", min_8bit_size=0),
}


def train_one(data, state, seed, epochs, hidden):
    """(test accuracy, test cross-entropy) of one run with Adam's `state` keywords."""
    X_train, y_train, X_test, y_test = data
    rng = np.random.default_rng(seed)
    model = MLP(X_train.shape[1], hidden, N_CLASSES, rng)
    steps_per_epoch = -(-len(y_train) // BATCH)
    total = epochs * steps_per_epoch
    lr = fo.schedules.warmup_cosine(LR, warmup_steps=max(1, min(steps_per_epoch, total // 5)),
                                    total_steps=total)
    opt = fo.Adam(model.decayed() + model.not_decayed(), lr=lr, **state)
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            if len(idx) < 2:
                continue
            _, dlogits = fo.softmax_cross_entropy(model.forward(X_train[idx]), y_train[idx])
            model.backward(dlogits)
            opt.step(model.grads())
    logits = model.forward(X_test, training=False).astype(np.float64)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test))
    cross_entropy, _ = fo.softmax_cross_entropy(logits, y_test)
    return accuracy, cross_entropy


def compare(seeds, epochs, hidden, split_seed=0):
    """{row label: (accuracies, cross-entropies)} over the seeds."""
    data = load_split(split_seed)
    out = {}
    for label, state in ROWS.items():
        acc, ce = np.array([train_one(data, state, s, epochs, hidden)
                            for s in range(seeds)]).T
        out[label] = (acc, ce)
    return out


def main(argv=None):
    setting = parse_setting(__doc__.splitlines()[0], argv, FULL, QUICK, "2 seeds, 4 epochs",
                            {"seeds": "number of seeds (default 10)",
                             "epochs": "epochs (default 40)"})
    t0 = time.perf_counter()
    results = compare(**setting)
    print(f"digits MLP (64 -> {setting['hidden']} -> BatchNorm -> ReLU -> 10), Adam lr {LR} "
          f"warmup + cosine, batch {BATCH}, {setting['epochs']} epochs, {setting['seeds']} "
          f"seeds (mean +- std)")
    print(format_table(results))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":
    main()
