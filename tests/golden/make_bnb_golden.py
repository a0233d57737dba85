"""Record tests/golden/bnb_adam8bit.npz from bitsandbytes' blockwise CPU Adam8bit (needs torch
and bitsandbytes): python tests/golden/make_bnb_golden.py. See bnb_problem.py."""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bnb_problem import run_bnb  # noqa: E402

if __name__ == "__main__":
    out = run_bnb()
    np.savez_compressed(os.path.join(HERE, "bnb_adam8bit.npz"), **out)
    print("wrote", os.path.join(HERE, "bnb_adam8bit.npz"), "bitsandbytes", out["bnb_version"])
