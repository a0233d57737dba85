"""The problems on which fastopt's int8 Adam is compared with bitsandbytes' blockwise CPU
Adam8bit (tests/test_state_dtype_bnb.py), and bitsandbytes' side of the comparison (needs
torch and bitsandbytes; the recorder tests/golden/make_bnb_golden.py stores its results).

- one step: parameters, a first gradient (bitsandbytes' state after it is the start) and a
  second gradient; the result is the state's codes and absmax and the parameters after it;
- a trajectory: 200 steps of a least-squares problem whose gradient depends on the
  parameters, g = A^T (A p - b) / m + noise, with the same noise for both.
"""
import numpy as np

N_ONE = 256 * 40 + 77          # 40 full blocks and a short one
HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
ROWS, COLS, STEPS = 64, 8192, 200


def one_step_problem(seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(N_ONE).astype(np.float32)
    g1 = (rng.standard_normal(N_ONE) * 10.0 ** rng.uniform(-4, 0, N_ONE)).astype(np.float32)
    g2 = (rng.standard_normal(N_ONE) * 10.0 ** rng.uniform(-4, 0, N_ONE)).astype(np.float32)
    return p, g1, g2


def least_squares(seed=1):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((ROWS, COLS)) / np.sqrt(COLS)).astype(np.float32)
    b = rng.standard_normal(ROWS).astype(np.float32)
    p0 = (rng.standard_normal(COLS) * 0.1).astype(np.float32)
    noise = rng.standard_normal((STEPS, COLS)).astype(np.float32) * np.float32(1e-3)
    return a, b, p0, noise


def ls_grad(a, b, p, noise_t):
    return (a.T @ (a @ p - b) / np.float32(ROWS) + np.float32(1e-2) * p + noise_t).astype(np.float32)


def ls_loss(a, b, p):
    r = a.astype(np.float64) @ p - b
    return float(r @ r / (2 * ROWS) + 5e-3 * (p.astype(np.float64) @ p))


def _nearest_blockwise(a, code):
    """bitsandbytes' default-backend quantize_blockwise (blocks of 256, nearest code)."""
    import torch
    n = a.numel()
    blocks = -(-n // 256)
    pad = torch.zeros(blocks * 256)
    pad[:n] = a
    absmax = pad.reshape(blocks, 256).abs().max(dim=1)[0]
    scaled = torch.clamp(pad.reshape(blocks, 256) * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)),
                         -1, 1).reshape(-1)[:n]
    bounds = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, bounds, out_int32=True).to(torch.uint8)
    return q.numpy().copy(), absmax.numpy().copy()


def run_bnb():
    """bitsandbytes' results: {name: array}."""
    import torch
    import bitsandbytes as bnb
    out = {}
    p, g1, g2 = one_step_problem()
    t = torch.tensor(p)
    opt = bnb.optim.Adam8bit([t], **HYPER)
    for g in (g1, g2):
        if g is g2:
            st = opt.state[t]
            out["start_p"] = t.numpy().copy()
            for k in ("state1", "state2", "absmax1", "absmax2"):
                out[f"start_{k}"] = st[k].numpy().copy()
        t.grad = torch.tensor(g)
        opt.step()
    st = opt.state[t]
    out["end_p"] = t.numpy().copy()
    # bitsandbytes' nearest-code quantizer (its "default" backend, the rounding of its CUDA
    # kernel: torch.bucketize over the map's midpoints) applied to the float32 state of the
    # same update; its native CPU quantizer (the "cpu" backend) is not nearest
    for k, key, g_pow in (("1", "state1", 1), ("2", "state2", 2)):
        qmap = st[f"qmap{k}"]
        start = torch.ops.bitsandbytes.dequantize_blockwise(
            torch.tensor(out[f"start_{key}"]), torch.tensor(out[f"start_absmax{k}"]), qmap, 256,
            torch.float32)
        beta = HYPER["betas"][int(k) - 1]
        new = start * beta + (1.0 - beta) * torch.tensor(g2) ** g_pow
        out[f"ref_{key}"], out[f"ref_absmax{k}"] = _nearest_blockwise(new, qmap)
    for k in ("state1", "state2", "absmax1", "absmax2"):
        out[f"end_{k}"] = st[k].numpy().copy()
    out["qmap1"] = st["qmap1"].numpy().copy()
    out["qmap2"] = st["qmap2"].numpy().copy()
    a, b, p0, noise = least_squares()
    t = torch.tensor(p0)
    opt = bnb.optim.Adam8bit([t], **HYPER)
    losses = []
    for k in range(STEPS):
        t.grad = torch.tensor(ls_grad(a, b, t.numpy(), noise[k]))
        opt.step()
        losses.append(ls_loss(a, b, t.numpy()))
    out["traj_p"] = t.numpy().copy()
    out["traj_loss"] = np.array(losses)
    out["bnb_version"] = np.array(bnb.__version__)
    return out
