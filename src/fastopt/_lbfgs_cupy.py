"""L-BFGS's two-loop recursion on CuPy arrays (the device counterpart of csrc/lbfgs.c).

Design note
-----------
torch's recursion as CuPy calls, one dot product (cuBLAS) and one axpy per pair and loop:

    q = -g;  for i = k-1..0: al_i = (s_i . q) ro_i;  q += -al_i y_i
    r = H_diag q;  for i = 0..k-1: be_i = (y_i . r) ro_i;  r += (al_i - be_i) s_i

al_i and be_i are 0-d device arrays of the parameters' dtype (torch's 0-d tensors), so the
recursion launches its kernels without waiting for the host; the al_i reach the host once, at
the end (the optimizer's state keeps them as floats). The axpy is a multiply into a scratch
vector and an add (two roundings where the CPU loop rounds once with an fma), and cuBLAS sums
a dot product in its own order: iterates agree with the CPU's to rounding. Nothing of size n
is allocated: q and r live in `d`, the product in `tmp`.
"""
import numpy as np

__all__ = ["two_loop"]


def two_loop(cp, hist, slots, ro, g, d, h_diag, al, tmp):
    """d = -H g over the pairs hist[slots[0]], ..., hist[slots[-1]] (oldest first), as
    fastopt._lbfgs_loops.two_loop; al[i] (host float64): the first loop's coefficients.
    `cp`: the cupy module; hist (size, 2, n), g, d, tmp (n,): CuPy arrays of one dtype."""
    k = len(slots)
    cast = np.dtype(d.dtype).type
    cp.negative(g, out=d)
    coef = [None] * k
    for i in range(k - 1, -1, -1):
        j = int(slots[i])
        a = cp.dot(hist[j, 0], d) * cast(ro[j])
        coef[i] = a
        cp.multiply(hist[j, 1], -a, out=tmp)
        cp.add(d, tmp, out=d)
    cp.multiply(d, cast(h_diag), out=d)
    for i in range(k):
        j = int(slots[i])
        be = cp.dot(hist[j, 1], d) * cast(ro[j])
        cp.multiply(hist[j, 0], coef[i] - be, out=tmp)
        cp.add(d, tmp, out=d)
    al[:k] = cp.stack(coef).get()
