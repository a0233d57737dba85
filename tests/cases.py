"""The option grid every optimizer is tested on (shared by parity, property and golden tests).

Read from the optimizer table (fastopt._table): each entry's ``cases`` (options torch has too:
compared with torch.optim and the reference) and ``extra_cases`` (fastopt's own options: compared
with the reference only).
"""
from fastopt._table import OPTIMIZERS

CASES = {name: [dict(case) for case in opt.cases] for name, opt in OPTIMIZERS.items()}

# Options that torch does not have (tested against the reference only).
EXTRA_CASES = {name: [dict(case) for case in opt.extra_cases]
               for name, opt in OPTIMIZERS.items() if opt.extra_cases}


def case_id(name, i, hyper):
    return f"{name}-{i}"
