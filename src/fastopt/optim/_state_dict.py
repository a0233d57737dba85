"""The checks every optimizer's `load_state_dict` shares: the layout of a state_dict.

A state_dict is ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index,
...]}]}`` (torch's layout). `saved_groups` checks that layout against the optimizer's own param
groups and returns, per group, the saved parameter indices, the saved hyperparameters (deep
copies; callables such as schedules shared) and the saved state entries of those indices.
What the entries must contain is each optimizer's business.
"""
import copy

__all__ = ["saved_groups"]


def saved_groups(sd, param_groups):
    """Yield ``(gi, ids, hyper, entries)`` for each group of `sd`, checked against `param_groups`.

    Raises ValueError when `sd` is not a state_dict, has another number of groups, or a group
    has another number of parameters. ``entries[j]`` is ``sd["state"]`` of ``ids[j]`` (the key
    as int or str), or None.
    """
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
    groups, state = sd["param_groups"], sd["state"]
    if not isinstance(groups, (list, tuple)) or len(groups) != len(param_groups):
        count = len(groups) if isinstance(groups, (list, tuple)) else "?"
        raise ValueError(f"state_dict has {count} param groups, the optimizer has "
                         f"{len(param_groups)}")
    if not isinstance(state, dict):
        raise ValueError("state_dict['state'] must be a dict")
    rows = []
    for gi, (saved, group) in enumerate(zip(groups, param_groups)):
        if not isinstance(saved, dict) or "params" not in saved:
            raise ValueError(f"param_groups[{gi}] must be a dict with a 'params' list")
        ids = list(saved["params"])
        if len(ids) != len(group["params"]):
            raise ValueError(f"param_groups[{gi}] has {len(ids)} params, the optimizer's "
                             f"group has {len(group['params'])}")
        hyper = {k: copy.deepcopy(v) if not callable(v) else v
                 for k, v in saved.items() if k != "params"}
        entries = [state.get(i, state.get(str(i))) for i in ids]
        rows.append((gi, ids, hyper, entries))
    return rows
