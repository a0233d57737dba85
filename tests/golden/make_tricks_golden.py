"""Record torch reference values for fastopt.tricks and fastopt.nn into tests/golden/.

Run with torch installed (``pip install torch==2.13.0``):

    python tests/golden/make_tricks_golden.py

Writes
* ``cross_entropy.npz``: torch.nn.functional.cross_entropy loss and logits gradient for hard and
  soft targets with and without label_smoothing;
* ``resize.npz``: torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
  antialias=False) outputs, computed in float64 (and in float32 and uint8 for comparison);
* ``batchnorm.npz``: torch BatchNorm1d/BatchNorm2d outputs, input/parameter gradients and running
  statistics after several training batches, and eval-mode outputs.

Inputs are drawn from a fixed NumPy seed and stored next to the outputs, so the tests need
neither torch nor the seed. The ``*_cases()`` functions are also used by the tests for the live
comparison when torch is importable.
"""
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


# ---------------------------------------------------------------------------- cross-entropy

def cross_entropy_cases():
    rng = np.random.default_rng(20240501)
    cases = {}
    for name, n, c, scale in [("small", 7, 3, 1.0), ("wide", 16, 10, 5.0), ("large_logits", 12, 6, 40.0)]:
        logits = rng.standard_normal((n, c)) * scale
        labels = rng.integers(0, c, n)
        soft = rng.random((n, c))
        soft /= soft.sum(axis=1, keepdims=True)
        for eps in (0.0, 0.1, 0.3):
            cases[f"{name}_hard_eps{eps}"] = (logits, labels, eps)
            cases[f"{name}_soft_eps{eps}"] = (logits, soft, eps)
    return cases


def torch_cross_entropy(logits, targets, eps):
    import torch

    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(targets) if targets.dtype.kind != "f" else torch.tensor(targets, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(z, t, label_smoothing=eps)
    loss.backward()
    return loss.item(), z.grad.numpy().copy()


# ----------------------------------------------------------------------------------- resize

def resize_cases():
    """name -> (NCHW input k/255 for k in 0..255, float64, output (h, w)); stored as k (uint8)."""
    rng = np.random.default_rng(20240502)
    shapes = [((2, 3, 7, 5), (11, 3)), ((1, 1, 1, 1), (4, 3)), ((1, 2, 4, 4), (4, 4)),
              ((2, 3, 32, 32), (48, 40)), ((1, 2, 64, 48), (17, 96)), ((1, 1, 112, 112), (150, 150)),
              ((1, 1, 128, 128), (80, 96)), ((3, 1, 5, 9), (1, 1)), ((1, 4, 13, 1), (26, 2))]
    return {f"{s[0]}x{s[1]}x{s[2]}x{s[3]}_to_{o[0]}x{o[1]}": (rng.integers(0, 256, s) / 255.0, o)
            for s, o in shapes}


def torch_resize(x, size, dtype):
    import torch

    if dtype == np.uint8:
        t = torch.from_numpy(np.round(x * 255).astype(np.uint8))  # the stored k
    else:
        t = torch.from_numpy(x.astype(dtype))
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False,
                                          antialias=False)
    return out.numpy().copy()


# -------------------------------------------------------------------------------- batchnorm

def batchnorm_cases():
    """name -> (input shape, momentum, number of training batches)."""
    return {"bn1d": ((16, 5), 0.1, 3), "bn1d_cumulative": ((8, 4), None, 3),
            "bn2d": ((4, 3, 6, 5), 0.1, 3), "bn2d_offset": ((6, 2, 4, 4), 0.3, 4)}


def batchnorm_inputs(name):
    shape, momentum, n_batches = batchnorm_cases()[name]
    rng = np.random.default_rng([20240503, *map(ord, name)])
    c = shape[1]
    offset = 50.0 if name.endswith("offset") else 0.0
    xs = [rng.standard_normal(shape) * rng.uniform(0.5, 3.0, c).reshape((1, c) + (1,) * (len(shape) - 2))
          + offset for _ in range(n_batches)]
    return {"xs": np.stack(xs), "dy": rng.standard_normal(shape), "x_eval": rng.standard_normal(shape) + offset,
            "weight": rng.uniform(0.5, 1.5, c), "bias": rng.standard_normal(c)}


def torch_batchnorm(name):
    import torch

    shape, momentum, n_batches = batchnorm_cases()[name]
    data = batchnorm_inputs(name)
    cls = torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d
    bn = cls(shape[1], eps=1e-5, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(data["weight"]))
        bn.bias.copy_(torch.from_numpy(data["bias"]))
    bn.train()
    means, variances = [], []
    for x in data["xs"]:
        xt = torch.tensor(x, requires_grad=True)
        bn.zero_grad()
        y = bn(xt)
        means.append(bn.running_mean.numpy().copy())
        variances.append(bn.running_var.numpy().copy())
    y.backward(torch.from_numpy(data["dy"]))
    out = {"y": y.detach().numpy().copy(), "dx": xt.grad.numpy().copy(),
           "grad_weight": bn.weight.grad.numpy().copy(), "grad_bias": bn.bias.grad.numpy().copy(),
           "running_means": np.stack(means), "running_vars": np.stack(variances)}
    bn.eval()
    xe = torch.tensor(data["x_eval"], requires_grad=True)
    ye = bn(xe)
    ye.backward(torch.from_numpy(data["dy"]))
    out["y_eval"] = ye.detach().numpy().copy()
    out["dx_eval"] = xe.grad.numpy().copy()
    return out


def main():
    import torch

    ce = {}
    for name, (logits, targets, eps) in cross_entropy_cases().items():
        loss, grad = torch_cross_entropy(logits, targets, eps)
        ce[f"{name}/logits"], ce[f"{name}/targets"] = logits, targets
        ce[f"{name}/eps"], ce[f"{name}/loss"], ce[f"{name}/grad"] = np.array(eps), np.array(loss), grad
    np.savez_compressed(HERE / "cross_entropy.npz", torch_version=np.array(torch.__version__), **ce)

    rs = {}
    for name, (x, size) in resize_cases().items():
        rs[f"{name}/x_255"], rs[f"{name}/size"] = np.round(x * 255).astype(np.uint8), np.array(size)
        for dtype in (np.float64, np.float32, np.uint8):
            rs[f"{name}/{np.dtype(dtype).name}"] = torch_resize(x, size, dtype)
    np.savez_compressed(HERE / "resize.npz", torch_version=np.array(torch.__version__), **rs)

    bn = {}
    for name in batchnorm_cases():
        for key, value in batchnorm_inputs(name).items():
            bn[f"{name}/in/{key}"] = value
        for key, value in torch_batchnorm(name).items():
            bn[f"{name}/out/{key}"] = value
    np.savez_compressed(HERE / "batchnorm.npz", torch_version=np.array(torch.__version__), **bn)
    print(f"wrote cross_entropy.npz ({len(cross_entropy_cases())} cases), resize.npz "
          f"({len(resize_cases())}), batchnorm.npz ({len(batchnorm_cases())}) with torch {torch.__version__}")


if __name__ == "__main__":
    main()
