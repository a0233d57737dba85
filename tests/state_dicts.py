"""A state_dict as a list of comparable entries, for tests that check two runs agree bit for
bit: (path, dtype, shape, bytes) per array (a low-bit `Blockwise8` buffer by its codes, absmax
and map), (path, repr) per other value, dict keys sorted."""
import numpy as np

from fastopt.state_format import Blockwise8


def flatten(sd):
    out = []

    def walk(node, path):
        if isinstance(node, dict):
            for k in sorted(node, key=str):
                walk(node[k], f"{path}/{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
        elif isinstance(node, Blockwise8):
            for part in ("codes", "absmax", "qmap"):
                walk(getattr(node, part), f"{path}.{part}")
        elif isinstance(node, np.ndarray):
            out.append((path, node.dtype.str, node.shape, node.tobytes()))
        else:
            out.append((path, repr(node)))
    walk(sd, "")
    return out
