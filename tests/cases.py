"""The option grid every optimizer is tested on (shared by parity, property and golden tests)."""

CASES = {
    "sgd": [
        dict(lr=0.05),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.02, momentum=0.9, dampening=0.1, weight_decay=0.01),
        dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01),
        dict(lr=0.02, momentum=0.5, maximize=True),
    ],
    "adagrad": [
        dict(lr=0.1),
        dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
        dict(lr=0.05, eps=1e-6, maximize=True),
    ],
    "rmsprop": [
        dict(lr=0.01),
        dict(lr=0.01, centered=True),
        dict(lr=0.005, momentum=0.9),
        dict(lr=0.005, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01),
        dict(lr=0.01, maximize=True),
    ],
    "adam": [
        dict(lr=0.01),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.01),
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True),
        dict(lr=0.02, betas=(0.3, 0.6)),
    ],
    "adamw": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, amsgrad=True),
    ],
    "adadelta": [
        dict(lr=1.0),
        dict(lr=0.5, rho=0.5, weight_decay=0.01),
        dict(lr=1.0, eps=1e-4, maximize=True),
    ],
    "adamax": [
        dict(lr=0.01),
        dict(lr=0.01, betas=(0.3, 0.5), weight_decay=0.01, maximize=True),
    ],
}

# Options that torch does not have (tested against the reference only).
EXTRA_CASES = {
    "sgd": [dict(lr=0.02, momentum=0.9, sutskever=True),
            dict(lr=0.02, momentum=0.9, sutskever=True, nesterov=True)],
    "adagrad": [dict(lr=0.1, eps=1e-3, eps_in_sqrt=True)],
    "rmsprop": [dict(lr=0.01, eps=1e-4, eps_in_sqrt=True, centered=True)],
    "adam": [dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)],
}


def case_id(name, i, hyper):
    return f"{name}-{i}"
