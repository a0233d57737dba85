"""The check every optimizer runs before it trusts its `param_groups`: are they still the
groups it planned?

`param_groups` is a plain mutable list of dicts (as in torch.optim), but an optimizer plans each
group once: kernel plans over the group's arrays, state kept by the arrays' positions, the
offsets of the later groups. A group's ``"params"`` replaced or edited, a group deleted or
inserted without `add_param_group`, would otherwise be stepped with the old plan (the old
arrays, another group's hyperparameters). fastopt does not re-plan such edits (its state is
per group and position, not per array, so torch's "new array, fresh state" has no faithful
equivalent); `check_groups` refuses them with a ValueError naming the group, before anything
is written. Replacing a group's dict by a copy holding the same arrays, or replacing its
hyperparameters, is fine.
"""
from operator import is_ as _is

__all__ = ["check_groups"]

_HOW = ("fastopt plans a group's arrays once and keeps their state by position, so it cannot "
        "follow this edit. Nothing was updated. Add groups with add_param_group(); to step "
        "other arrays, build a new optimizer")


def _same(group, arrays):
    """Whether `group` is a dict whose 'params' holds exactly `arrays` (the same objects)."""
    try:
        params = group["params"]
        return len(params) == len(arrays) and all(map(_is, params, arrays))
    except (TypeError, KeyError):
        return False


def check_groups(param_groups, planned):
    """Raise ValueError unless ``param_groups[i]["params"]`` holds exactly the arrays
    ``planned[i]`` (a tuple per planned group), for every group, and nothing more.

    Costs one identity comparison per array; the message names the first group that differs.
    """
    if type(param_groups) is list and len(param_groups) == len(planned):
        for group, arrays in zip(param_groups, planned):
            if not _same(group, arrays):
                break
        else:
            return
    raise ValueError(_problem(param_groups, planned))


def _problem(param_groups, planned):
    if not isinstance(param_groups, list):
        return (f"param_groups must stay the optimizer's list of groups, got "
                f"{type(param_groups).__name__}; {_HOW}")
    n, m = len(param_groups), len(planned)
    gi = next((i for i in range(min(n, m)) if not _same(param_groups[i], planned[i])), min(n, m))
    if n < m:
        return (f"param_groups[{gi}] was removed: the optimizer planned {m} param groups and "
                f"param_groups now holds {n}. {_HOW}")
    if n > m:
        return (f"param_groups[{gi}] was inserted without add_param_group(): the optimizer "
                f"planned {m} param groups and param_groups now holds {n}. {_HOW}")
    group = param_groups[gi]
    if not isinstance(group, dict) or "params" not in group:
        return f"param_groups[{gi}] must be a dict with a 'params' list, got {group!r:.80}. {_HOW}"
    return (f"param_groups[{gi}]['params'] no longer holds the arrays the optimizer planned for "
            f"this group (it was replaced or edited in place). {_HOW}")


def store_plain(group, snapshot, seen):
    """Write a validated snapshot's plain values (Python floats for NumPy scalars, a tuple for
    a betas list, ...) back into `group`, as `add_param_group` stores them, wherever the group
    still holds the object the snapshot was made from (`seen`: the group's values, in order,
    when it was copied). Returns the group's values, in order, as this call leaves them: the
    objects now known to be valid. A value another thread wrote in the meantime is neither
    overwritten nor counted as valid."""
    stored = []
    for key, old in zip(list(snapshot), seen):
        new = snapshot[key]
        if new is not old and group.get(key) is old:
            group[key] = new
            stored.append(new)
        else:
            stored.append(old)
    return tuple(stored)
