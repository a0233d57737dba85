r"""Bag of tricks on the digits: `python examples/tricks_mlp.py [--quick] [--seeds N]`.

A small NumPy MLP, ``x -> W1 -> BatchNorm -> ReLU -> W2 + b2 -> softmax``, is trained on the
8x8 digits shipped with fastopt (75 % training, 25 % held out, stratified; features
standardized with the training statistics) by fastopt's SGD with momentum 0.9, batch 64, and
weight decay 5e-4 on the two weight matrices only (not on the batch-norm scale and shift or the
bias). Each row of the ablation adds one trick to the row above it:

1. baseline: step decay, lr 0.1 divided by 10 after 50 % and 75 % of the steps
   (``fastopt.schedules.multistep``);
2. + cosine decay with a linear warmup over the first epoch (at most a fifth of the steps)
   (``fastopt.schedules.warmup_cosine``);
3. + label smoothing, epsilon = 0.1 (``fastopt.tricks.smooth_labels`` targets,
   ``fastopt.tricks.softmax_cross_entropy``);
4. + mixup, alpha = 0.2 (``fastopt.tricks.mixup`` on the smoothed targets).

Next to the ablation, other optimizers on row 2's setting (warmup + cosine decay, no label
smoothing or mixup), with their own learning rate and weight decay on the weight matrices
(``OPTIMIZERS``, chosen on 2 seeds from a 3 x 3 grid): Lion with lr 1e-3, betas (0.9, 0.99) and
decoupled weight decay 0.5 (each step shrinks the weights by lr * 0.5); and Schedule-Free AdamW
with lr 1e-2, weight decay 0.01, its own linear warmup over the first epoch and no schedule
(evaluated at its averaged point, ``opt.eval()``).

Every configuration is trained from the same initializations and batch orders (one per seed);
the table reports the test accuracy and the test cross-entropy (against the true labels) as
mean +- standard deviation (ddof=1) over the seeds. ``--quick`` is the reduced setting that CI
runs (2 seeds, 4 epochs, 32 hidden units).
"""
import argparse
import sys
import time

import numpy as np

import fastopt as fo
from fastopt.datasets import load_digits
from fastopt.demo import stratified_split

FULL = dict(seeds=10, epochs=40, hidden=128)
QUICK = dict(seeds=2, epochs=4, hidden=32)
BATCH, LR, MOMENTUM, WEIGHT_DECAY = 64, 0.1, 0.9, 5e-4
SMOOTHING, MIXUP_ALPHA = 0.1, 0.2
N_CLASSES = 10

#: optimizer -> (class, keywords, weight decay of the weight matrices)
OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=LR, momentum=MOMENTUM), WEIGHT_DECAY),
    "lion": ("Lion", dict(lr=1e-3, betas=(0.9, 0.99)), 0.5),
    "schedule_free_adamw": ("ScheduleFreeAdamW", dict(lr=1e-2), 0.01),
}

#: (row label, tricks switched on); each ablation row adds one trick to the previous one; the
#: rows after them change the optimizer (``optimizer``; default SGD with momentum).
CONFIGS = [
    ("SGD-momentum, step decay (baseline)", dict()),
    ("+ warmup + cosine decay", dict(cosine=True)),
    ("+ label smoothing (0.1)", dict(cosine=True, smoothing=True)),
    ("+ mixup (alpha 0.2)", dict(cosine=True, smoothing=True, mixup=True)),
    ("Lion, warmup + cosine decay", dict(cosine=True, optimizer="lion")),
    ("Schedule-Free AdamW, warmup, no schedule",
     dict(constant=True, warmup=True, optimizer="schedule_free_adamw")),
]


class MLP:
    r"""``logits = relu(BN(x W1)) W2 + b2``, float32, He-initialized from `rng`.

    Backward, for ``h = x W1``, ``a = relu(BN(h))`` and the gradient ``G`` of the loss w.r.t.
    the logits: ``dW2 = a^T G``, ``db2 = sum G``, ``da = G W2^T``, ``dBN_out = da * [BN(h) >
    0]``, ``dh = BN.backward(dBN_out)``, ``dW1 = x^T dh``. No bias before the batch norm
    (its shift makes one redundant).
    """

    def __init__(self, n_in, hidden, n_out, rng, dtype=np.float32):
        self.W1 = (rng.standard_normal((n_in, hidden)) * np.sqrt(2.0 / n_in)).astype(dtype)
        self.bn = fo.BatchNorm(hidden, dtype=dtype)
        self.W2 = (rng.standard_normal((hidden, n_out)) * np.sqrt(2.0 / hidden)).astype(dtype)
        self.b2 = np.zeros(n_out, dtype)
        self.dW1, self.dW2, self.db2 = (np.zeros_like(p) for p in (self.W1, self.W2, self.b2))
        self._cache = None

    def decayed(self):
        """The parameters with weight decay (the weight matrices)."""
        return [self.W1, self.W2]

    def not_decayed(self):
        """The parameters without weight decay (batch-norm scale and shift, output bias)."""
        return [self.bn.weight, self.bn.bias, self.b2]

    def grads(self):
        """Gradients in the order of ``decayed() + not_decayed()``."""
        return [self.dW1, self.dW2, self.bn.grad_weight, self.bn.grad_bias, self.db2]

    def forward(self, x, training=True):
        self.bn.train(training)
        z = self.bn.forward(x @ self.W1)
        a = np.maximum(z, 0)
        self._cache = (x, z, a)
        return a @ self.W2 + self.b2

    def backward(self, dlogits):
        x, z, a = self._cache
        self.dW2[...] = a.T @ dlogits
        self.db2[...] = dlogits.sum(axis=0)
        dz = (dlogits @ self.W2.T) * (z > 0)
        self.dW1[...] = x.T @ self.bn.backward(dz.astype(z.dtype, copy=False))


def load_split(seed=0):
    """Digits split 75/25 (stratified, fixed `seed`), standardized with the training stats."""
    X, y = load_digits(standardize=False)
    train, test = stratified_split(y, 0.25, np.random.default_rng(seed))
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    std[std == 0] = 1.0
    Z = ((X - mean) / std).astype(np.float32)
    return Z[train], y[train], Z[test], y[test]


def train_one(data, config, seed, epochs, hidden):
    """Train one MLP with `config`'s tricks; returns (test accuracy, test cross-entropy)."""
    X_train, y_train, X_test, y_test = data
    rng = np.random.default_rng(seed)                 # same init and batches for every config
    model = MLP(X_train.shape[1], hidden, N_CLASSES, rng)
    steps_per_epoch = -(-len(y_train) // BATCH)
    total = epochs * steps_per_epoch
    class_name, hyper, weight_decay = OPTIMIZERS[config.get("optimizer", "sgd")]
    hyper = dict(hyper)
    base_lr = hyper.pop("lr")
    if config.get("cosine"):
        warmup = max(1, min(steps_per_epoch, total // 5))
        lr = fo.schedules.warmup_cosine(base_lr, warmup_steps=warmup, total_steps=total)
    elif config.get("constant"):
        lr = base_lr
        if config.get("warmup"):                     # the optimizer's own warmup
            hyper["warmup_steps"] = max(1, min(steps_per_epoch, total // 5))
    else:
        lr = fo.schedules.multistep(base_lr, milestones=[total // 2, (3 * total) // 4],
                                    gamma=0.1)
    opt = getattr(fo, class_name)([{"params": model.decayed(), "weight_decay": weight_decay},
                                   {"params": model.not_decayed(), "weight_decay": 0.0}],
                                  lr=lr, **hyper)
    mix_rng = np.random.default_rng(seed + 10_000)
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            if len(idx) < 2:                         # batch norm needs two examples
                continue
            x, y = X_train[idx], y_train[idx]
            if config.get("smoothing"):
                targets = fo.smooth_labels(y, N_CLASSES, SMOOTHING, dtype=np.float32)
            else:
                targets = y
            if config.get("mixup"):
                x, targets, _, _ = fo.mixup(x, targets, MIXUP_ALPHA, mix_rng,
                                            n_classes=N_CLASSES)
            _, dlogits = fo.softmax_cross_entropy(model.forward(x), targets)
            model.backward(dlogits)
            opt.step(model.grads())
    if hasattr(opt, "eval"):           # Schedule-Free: evaluate at the averaged point x
        opt.eval()
    logits = model.forward(X_test, training=False).astype(np.float64)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test))
    cross_entropy, _ = fo.softmax_cross_entropy(logits, y_test)
    return accuracy, cross_entropy


def ablation(seeds, epochs, hidden, split_seed=0, progress=None):
    """{row label: (accuracies, cross-entropies)} (arrays over seeds), for every config."""
    data = load_split(split_seed)
    results = {}
    bar = None
    if progress or (progress is None and sys.stderr.isatty()):
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(CONFIGS) * seeds, unit="run", leave=False)
        except ImportError:
            bar = None
    for label, config in CONFIGS:
        runs = []
        for seed in range(seeds):
            runs.append(train_one(data, config, seed, epochs, hidden))
            if bar is not None:
                bar.update(1)
        acc, ce = np.array(runs).T
        results[label] = (acc, ce)
    if bar is not None:
        bar.close()
    return results


def _spread(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def format_table(results):
    """The ablation table (Markdown): test accuracy [%] and test cross-entropy, mean +- std."""
    width = max(len(label) for label in results)
    lines = [f"| {'configuration'.ljust(width)} | test accuracy [%] | test cross-entropy |",
             f"|{'-' * (width + 2)}|------------------:|-------------------:|"]
    for label, (acc, ce) in results.items():
        lines.append(f"| {label.ljust(width)} | {100 * acc.mean():6.2f} +- "
                     f"{100 * _spread(acc):4.2f}    |  {ce.mean():7.4f} +- {_spread(ce):6.4f} |")
    return "\n".join(lines)


_LEAST = {"seeds": 2, "epochs": 1, "hidden": 1}


def parse_setting(description, argv, full, quick, quick_help, helps):
    """The run's setting: `full`, or `quick` with --quick, each key of `helps` (an option
    ``--<key>``, its help text) overridden from the command line; argparse's error unless
    seeds >= 2, epochs >= 1 and hidden >= 1."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    for key, text in helps.items():
        parser.add_argument(f"--{key}", type=int, help=text)
    args = parser.parse_args(argv)
    setting = dict(quick if args.quick else full)
    for key in helps:
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    if any(setting[key] < least for key, least in _LEAST.items() if key in helps):
        parser.error("need " + ", ".join(f"--{key} >= {least}" for key, least in _LEAST.items()
                                         if key in helps))
    return setting


def main(argv=None):
    setting = parse_setting(
        __doc__.splitlines()[0], argv, FULL, QUICK,
        "the reduced setting CI runs (2 seeds, 4 epochs, 32 hidden units)",
        {"seeds": "number of seeds (default 10, quick 2)",
         "epochs": "epochs (default 40, quick 4)",
         "hidden": "hidden units (default 128, quick 32)"})
    t0 = time.perf_counter()
    results = ablation(**setting)
    print(f"digits MLP (64 -> {setting['hidden']} -> BatchNorm -> ReLU -> 10), SGD momentum "
          f"{MOMENTUM}, batch {BATCH}, {setting['epochs']} epochs, {setting['seeds']} seeds "
          f"(mean +- std)")
    print(format_table(results))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":
    main()
