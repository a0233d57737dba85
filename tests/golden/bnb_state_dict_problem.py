"""The bitsandbytes state_dict interchange of fastopt.torch (tests/test_bnb_state_dict.py)
and bitsandbytes' side of it (needs torch and bitsandbytes; the recorder
tests/golden/make_bnb_state_dict_golden.py stores its results in bnb_adamw8bit_state_dict.npz).

bitsandbytes' AdamW8bit runs STEPS steps on two tensors (one of 40 full blocks and a short one,
8-bit state; one below min_8bit_size, float32 state); its state_dict then is the start. One more
step with gradient ``g_next`` gives the end: bitsandbytes' native CPU codes, absmax and
parameters, and the codes of bitsandbytes' nearest-code quantizer (its default backend, the
rounding of its CUDA kernel) for the same update (``ref_*``).
"""
import numpy as np

SHAPES = ((256 * 40 + 77,), (20, 15))      # 8-bit state; float32 state (300 < 4096)
HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
STEPS = 3


def problem(seed=3):
    """Start parameters and STEPS + 1 gradients per tensor."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[(rng.standard_normal(s) * 10.0 ** rng.uniform(-4, 0, s)).astype(np.float32)
              for s in SHAPES] for _ in range(STEPS + 1)]
    return params, grads


def nearest_blockwise(values, qmap):
    """bitsandbytes' default-backend quantize_blockwise: blocks of 256, nearest code."""
    import torch
    n = values.numel()
    blocks = -(-n // 256)
    pad = torch.zeros(blocks * 256)
    pad[:n] = values.reshape(-1)
    absmax = pad.reshape(blocks, 256).abs().max(dim=1)[0]
    scaled = torch.clamp(pad.reshape(blocks, 256) * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)),
                         -1, 1).reshape(-1)[:n]
    q = torch.bucketize(scaled, (qmap[:-1] + qmap[1:]) / 2, out_int32=True).to(torch.uint8)
    return q.numpy().copy(), absmax.numpy().copy()


def nearest_next(codes, absmax, qmap, grad, beta, power):
    """The nearest codes of beta * state + (1 - beta) * grad**power, the state decoded by
    bitsandbytes' dequantize_blockwise."""
    import torch
    import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)
    start = torch.ops.bitsandbytes.dequantize_blockwise(
        torch.as_tensor(codes).reshape(-1), torch.as_tensor(absmax), torch.as_tensor(qmap), 256,
        torch.float32)
    new = start * beta + (1.0 - beta) * torch.as_tensor(grad).reshape(-1) ** power
    return nearest_blockwise(new, torch.as_tensor(qmap))


def flatten(sd):
    """A bitsandbytes state_dict as {npz key: array} (state of tensor i: ``s{i}_<key>``)."""
    out = {}
    for i, entry in sd["state"].items():
        entry = dict(entry)
        entry.update(entry.pop("__bnb_optimizer_quant_state__", {}))
        for k, v in entry.items():
            out[f"s{i}_{k}"] = np.array(v.numpy() if hasattr(v, "numpy") else v)   # a copy
    return out


def unflatten(arrays, n_params=len(SHAPES)):
    """The state_dict of bitsandbytes' AdamW8bit that `flatten` stored (torch tensors)."""
    import torch
    state = {}
    for i in range(n_params):
        entry = {}
        for key in [k for k in arrays if k.startswith(f"s{i}_")]:
            name = key[len(f"s{i}_"):]
            entry[name] = int(arrays[key]) if name == "step" else torch.tensor(arrays[key])
        wrapped = {k: entry.pop(k) for k in list(entry) if k != "step"}
        state[i] = {**entry, "__bnb_optimizer_quant_state__": wrapped}
    group = {**HYPER, "alpha": 0.0, "t_alpha": None, "t_beta3": None,
             "params": list(range(n_params))}
    return {"state": state, "param_groups": [group]}


def run_bnb():
    """bitsandbytes' results: {name: array}."""
    import torch
    import bitsandbytes as bnb
    params, grads = problem()
    ts = [torch.tensor(p) for p in params]
    opt = bnb.optim.AdamW8bit(ts, **HYPER)
    for k in range(STEPS):
        for t, g in zip(ts, grads[k]):
            t.grad = torch.tensor(g)
        opt.step()
    out = flatten(opt.state_dict())
    for i, t in enumerate(ts):
        out[f"start_p{i}"] = t.numpy().copy()
        out[f"g_next{i}"] = grads[STEPS][i]
    st = opt.state[ts[0]]
    for k, beta, power in (("1", HYPER["betas"][0], 1), ("2", HYPER["betas"][1], 2)):
        out[f"ref_state{k}"], out[f"ref_absmax{k}"] = nearest_next(
            out[f"s0_state{k}"], out[f"s0_absmax{k}"], out[f"s0_qmap{k}"], grads[STEPS][0],
            beta, power)
    for t, g in zip(ts, grads[STEPS]):
        t.grad = torch.tensor(g)
    opt.step()
    for i, t in enumerate(ts):
        out[f"end_p{i}"] = t.numpy().copy()
    for k in ("state1", "state2", "absmax1", "absmax2"):
        out[f"end_{k}"] = st[k].numpy().copy()
    small = opt.state[ts[1]]
    out["end_small_state1"] = small["state1"].numpy().copy()
    out["end_small_state2"] = small["state2"].numpy().copy()
    out["bnb_version"] = np.array(bnb.__version__)
    return out
