"""Record tests/golden/bnb_adamw8bit_state_dict.npz from bitsandbytes' blockwise CPU AdamW8bit
(needs torch and bitsandbytes): python tests/golden/make_bnb_state_dict_golden.py. See
bnb_state_dict_problem.py."""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bnb_state_dict_problem import run_bnb  # noqa: E402

if __name__ == "__main__":
    out = run_bnb()
    path = os.path.join(HERE, "bnb_adamw8bit_state_dict.npz")
    np.savez_compressed(path, **out)
    print("wrote", path, "bitsandbytes", out["bnb_version"])
