"""ZeRO stage 1: optimizer state split over the ranks, each rank updating only its shard.

Design note
-----------
The parameters are packed into one flat buffer per dtype (``_flat.FlatLayout``) and each
buffer is split into N contiguous shards (``_flat.Shards``; uneven lengths allowed). This rank
builds an ordinary fastopt optimizer over *views of its own shard* of the flat parameter
buffers, one inner param group per (param group, dtype) piece that falls in the shard, so the
inner optimizer allocates state for the shard only: per rank, state memory is total / N (up
to one element per buffer). A step is

1. pack the local gradients into a send buffer and ``Reduce_scatter`` it (sum), so this rank
   receives the summed gradients of its shard only;
2. with ``nonfinite="skip"|"raise"`` only: check that the shard's sums are all finite (a
   read-only pass, ``_kernels.all_finite``) and agree with one ``Allreduce`` of a single
   integer (the first parameter with a non-finite sum, MIN over the ranks), so every rank
   skips or raises together before anything is written;
3. copy this rank's shard of the parameters out of the user's arrays (they stay the truth),
   scale the gradient shard by 1/N and run the inner optimizer's fused kernel on it;
4. ``Allgatherv`` the updated shards in place into the flat parameter buffers, and copy them
   back into the user's arrays.

The send buffer has one slot after each rank's shard that carries an error flag (a rank with
invalid gradients, or an invalid ``nonfinite``, sends zeros and sets it), so every rank
receives the sum of the flags with its shard and all raise together, nothing changed,
without an extra message. A skipped or refused step writes neither the flat parameter
buffers nor the user's arrays nor the inner optimizer.

Low-bit inner state (``state_dtype``): bfloat16 is elementwise and shards as float state does.
With int8 (blocks of 256 counted from each tensor's start, and float32 state for tensors below
``min_8bit_size``) the shard boundaries fall on whole blocks of each tensor, each tensor part
in a shard is its own inner param group, and a part keeps the format of its whole tensor
(``_qshard``), so a sharded run equals the unsharded one bit for bit (stochastic bfloat16
rounding draws its noise per inner parameter, so it differs).

Checkpoints are gathered on rank 0 into the single-process layout, ``fastopt.save``'s format
with the inner class's name: such a file loads into a plain optimizer with ``fastopt.load``,
and a ``ShardedOptimizer`` on any number of ranks loads either kind (rank 0 reads, checks,
and scatters each state buffer along the new shards).
"""
import numpy as np

from .. import _kernels, checkpoint
from ..optim._core import OptimizerCore, group_params, normalize_params, saved_group
from ..optim._groups import check_groups
from ..optim.base import Optimizer
from . import _flat, _qshard
from ._mpi import agree, bcast_tree, check_same, mpi, mpi_type, world

__all__ = ["ShardedOptimizer"]


#: The optimizers whose update is not elementwise, and why a shard cannot update itself.
_NOT_ELEMENTWISE = {
    "Muon": "orthogonalizes each whole 2-D update (Newton-Schulz over the full matrix)",
    "Adafactor": "factors each matrix's second moment into row and column means over the "
                 "full matrix",
    "SparseAdam": "takes row-sparse gradients and updates whole rows",
    "LBFGS": "takes a closure and inner products over all parameters, with a line search",
    "Newton": "solves with the Hessian of all parameters",
    "SVRG": "takes full-gradient snapshots of all parameters",
}


class _Piece:
    """One inner param group: the part of user group `group` in buffer `buf` on this rank
    (flat elements start:stop); `tensor`: the first parameter it covers (None: empty)."""
    __slots__ = ("group", "buf", "start", "stop", "tensor")

    def __init__(self, group, buf, start, stop, tensor=None):
        self.group, self.buf, self.start, self.stop = group, buf, start, stop
        self.tensor = tensor


class ShardedOptimizer:
    """An optimizer whose state is split over the ranks of `comm` (ZeRO stage 1).

    Each step averages the gradients over the ranks, :math:`\\bar g = \\frac1N \\sum_r g^{(r)}`,
    and applies `opt_cls`'s update rule with :math:`\\bar g`, the same numbers a
    `DistributedOptimizer` (or one process on the global batch) computes, but each rank keeps
    the state of only a contiguous 1/N of the flattened parameters and updates only those.

    Parameters
    ----------
    opt_cls : a fastopt optimizer class (``fastopt.Adam``, ``fastopt.SGD``, ...)
    params : list of arrays, or of param-group dicts (as for `opt_cls`)
        NumPy float32/float64 arrays, updated in place on every rank after each step.
    comm : mpi4py communicator, default ``MPI.COMM_WORLD``
    **hyperparameters : passed to `opt_cls` (``lr``, ``betas``, ``momentum``, ...)

    Construction, `step`, `state_dict`, `load_state_dict`, `save` and `load` are collective.
    ``step(grads, nonfinite="ignore" | "skip" | "raise")`` treats NaN/Inf in :math:`\\bar g`
    as `opt_cls`'s ``step`` does (see `fastopt.Optimizer.step`), on every rank alike.

    >>> opt = ShardedOptimizer(fo.Adam, [w, b], lr=1e-3)    # doctest: +SKIP
    >>> opt.step([gw, gb])                                  # doctest: +SKIP
    True
    >>> opt.save("ckpt.npz")          # one file, loads on any number of ranks  # doctest: +SKIP
    """

    def __init__(self, opt_cls, params, comm=None, **hyperparameters):
        self.comm = comm = world(comm)
        self.opt_cls = opt_cls
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        groups = agree(comm, self._check_args, opt_cls, params)
        self._params = [p for g in groups for p in g["params"]]
        self._planned = [tuple(g["params"]) for g in groups]
        self._identity = _kernels.ArrayIdentity(self._params)
        check_same(comm, [("optimizer", getattr(opt_cls, "__name__", "?")), ("param groups",
                   [len(g["params"]) for g in groups])] + _flat.signature(self._params),
                   "the optimizers or parameters")
        self._layout = layout = _flat.FlatLayout(self._params)
        # int8 state: shards, and the inner parameters, cut at whole blocks of each tensor;
        # stochastic bfloat16: one inner parameter per tensor part, keyed by the tensor's
        # elements (the noise of one process)
        self._by_tensor = hyperparameters.get("state_dtype") == "int8"
        self._per_tensor = self._by_tensor or (
            hyperparameters.get("state_dtype") == "bfloat16"
            and hyperparameters.get("rounding") == "stochastic")
        self._shards = [_qshard.aligned_shards(layout, b, self.size) if self._by_tensor
                        else _flat.Shards(n, self.size) for b, n in enumerate(layout.sizes)]
        self._spaces = [_qshard.BlockSpace(layout, b) for b in range(len(layout.dtypes))]
        self._flat = layout.empty()
        self._unpack = layout.unpacker(self._flat, self._params)
        self._group_of = [gi for gi, g in enumerate(groups) for _ in g["params"]]
        self._group_start = [self._group_of.index(gi) for gi in range(len(groups))]
        self._pieces = self._cut(self._group_of)
        self._shard_in = self._shard_sources()
        self._send_order = [self._send_order_of(b) for b in range(len(layout.dtypes))]
        self._flag_slots = [[d + c + r for r, (d, c) in enumerate(zip(s.displs, s.counts))]
                            for s in self._shards]
        self._flag = [np.zeros(1, d) for d in layout.dtypes]
        self._send = [np.empty(n + self.size, d) for n, d in zip(layout.sizes, layout.dtypes)]
        self._recv = [np.empty(s.counts[self.rank] + 1, d)
                      for s, d in zip(self._shards, layout.dtypes)]
        lo = [s.bounds(self.rank)[0] for s in self._shards]
        self._inner_grads = [self._recv[pc.buf][pc.start - lo[pc.buf]:pc.stop - lo[pc.buf]]
                             for pc in self._pieces]
        self._finite_pieces = self._shard_grad_pieces()
        self._finite_plan = _kernels.Plan([flat for _, flat, _ in self._finite_pieces])
        self._finite_grads = [g for _, _, g in self._finite_pieces]
        self._first_bad = np.zeros(1, np.int64)
        self._inner = agree(comm, self._build_inner, groups, hyperparameters)
        self.param_groups = [{**{k: v for k, v in ig.items() if k != "params"},
                              "params": g["params"]}
                             for g, ig in zip(groups, self._first_inner_groups())]
        self._inv_size = 1.0 / self.size
        layout.pack(self._params, self._flat)         # last: an error above changes nothing
        for buf in self._flat:
            comm.Bcast(buf, root=0)
        self._unpack()

    # ------------------------------------------------------------------------- construction
    @staticmethod
    def _check_args(opt_cls, params):
        if isinstance(opt_cls, type) and issubclass(opt_cls, OptimizerCore) \
                and not issubclass(opt_cls, Optimizer):
            name = opt_cls.__name__
            why = next((_NOT_ELEMENTWISE[k.__name__] for k in opt_cls.__mro__
                        if k.__name__ in _NOT_ELEMENTWISE), "has no elementwise update rule")
            instead = ("" if name in ("Newton", "SVRG") else
                       f". Use DistributedOptimizer({name}(params), comm) instead")
            raise TypeError(f"ShardedOptimizer updates each rank's contiguous 1/N of the "
                            f"flattened parameters on its own, so it takes elementwise update "
                            f"rules only; {name} {why}{instead}")
        if not (isinstance(opt_cls, type) and issubclass(opt_cls, Optimizer)):
            raise TypeError(f"opt_cls must be a fastopt optimizer class (e.g. fastopt.Adam), got "
                            f"{opt_cls!r}")
        out, index = [], 0
        for gi, g in enumerate(normalize_params(params)):
            ps = group_params(g, gi)
            for p in ps:
                _flat.check_param(p, f"params[{index}]")
                index += 1
            out.append({**g, "params": ps})
        return out

    def _cut(self, group_of):
        """The inner param groups: each (user group, buffer) run, clipped to this shard (with
        int8 state: each tensor's part in this shard, so that its blocks are the tensor's);
        a (group, buffer) with nothing here is one empty piece."""
        pieces = []
        for b in range(len(self._layout.dtypes)):
            lo, hi = self._shards[b].bounds(self.rank)
            runs = {}
            for i in self._layout.members[b]:
                _, off, n = self._layout.where[i]
                key = (group_of[i], i if self._per_tensor else -1)
                start, stop, first = runs.get(key, (off, off, i))
                runs[key] = (start, off + n, first)
            here = {}
            for (gi, _), (start, stop, first) in sorted(runs.items()):
                a, z = max(start, lo), min(stop, hi)
                here.setdefault(gi, [])
                if a < z:
                    here[gi].append(_Piece(gi, b, a, z, first))
            for gi, got in here.items():
                pieces += got or [_Piece(gi, b, lo, lo)]
        pieces.sort(key=lambda pc: (pc.group, pc.buf))
        return pieces

    def _send_order_of(self, b):
        """What goes where in buffer b's send buffer: rank 0's shard, a flag slot, rank 1's...

        Items are (param index, start, stop) within the parameter, or (None, 0, 0) for a flag.
        """
        shards = self._shards[b]
        per_rank = [[] for _ in range(self.size)]
        for i in self._layout.members[b]:
            _, off, n = self._layout.where[i]
            for r, a, z in shards.owner_pieces(off, off + n):
                per_rank[r].append((i, a - off, z - off))
        return [item for items in per_rank for item in items + [(None, 0, 0)]]

    def _in_shard(self):
        """(i, b, off, a, z, lo) for each parameter i with a part in this rank's shard:
        elements a:z of flat buffer b, where the parameter starts at off and the shard at lo."""
        for i, (b, off, n) in enumerate(self._layout.where):
            lo, hi = self._shards[b].bounds(self.rank)
            a, z = max(off, lo), min(off + n, hi)
            if a < z:
                yield i, b, off, a, z, lo

    def _shard_sources(self):
        """(flat buffer view, user parameter view) pairs covering this rank's shard."""
        return [(self._flat[b][a:z], self._params[i].reshape(-1)[a - off:z - off])
                for i, b, off, a, z, _ in self._in_shard()]

    def _shard_grad_pieces(self):
        """(param index, flat parameter view, received gradient view) covering this shard."""
        return [(i, self._flat[b][a:z], self._recv[b][a - lo:z - lo])
                for i, b, _, a, z, lo in self._in_shard()]

    def _build_inner(self, groups, hyperparameters):
        inner_groups = []
        for pc in self._pieces:
            hyper = {k: v for k, v in groups[pc.group].items() if k != "params"}
            inner_groups.append({**hyper, "params": [self._flat[pc.buf][pc.start:pc.stop]]})
        inner = self.opt_cls(inner_groups, **hyperparameters)
        fmt = inner._state_format
        if fmt is not None and self._per_tensor:    # a part keeps the format of its tensor
            for pc, ig in zip(self._pieces, inner.param_groups):
                if pc.tensor is not None:
                    part = ig["params"][0]
                    fmt.whole_sizes[id(part)] = self._params[pc.tensor].size
                    fmt.noise_index[id(part)] = \
                        (pc.tensor, pc.start - self._layout.where[pc.tensor][1])
            for rec in inner._records:
                fmt.key_noise(rec.plan)
        return inner

    def _first_inner_groups(self):
        firsts = {}
        for pc, ig in zip(self._pieces, self._inner.param_groups):
            firsts.setdefault(pc.group, ig)
        return [firsts[g] for g in sorted(firsts)]

    # --------------------------------------------------------------------------------- step
    def step(self, grads, nonfinite="ignore"):
        """Average `grads` over the ranks and update every parameter (collective).

        `nonfinite` decides what happens when an element of the averaged gradients
        :math:`\\bar g` is NaN or +-Inf (a non-finite value on any one rank, or a sum over the
        ranks that overflows, makes it so), with the same outcome on every rank:

        * ``"ignore"`` (default): update anyway, as `opt_cls`'s ``step`` does;
        * ``"skip"``: update nothing (parameters, state and step counts stay as they were
          on every rank) and return False;
        * ``"raise"``: raise ValueError on every rank, naming the first such gradient,
          nothing changed.

        "skip" and "raise" cost one read of this rank's gradient shard and one ``Allreduce``
        of a single integer; "ignore" costs nothing extra. Pass the same `nonfinite` on every
        rank. Returns True when the update was applied. Invalid gradients, or an invalid
        `nonfinite`, on any rank raise ValueError on every rank, nothing updated.
        """
        problem = _flat.nonfinite_problem(nonfinite) or self._layout.grad_problem(grads) \
            or self._arrays_problem()
        flat = [g.reshape(-1) for g in grads] if problem is None else None
        for b, send in enumerate(self._send):
            if problem is None:
                np.concatenate([self._flag[b] if i is None else flat[i][a:z]
                                for i, a, z in self._send_order[b]], out=send)
            else:
                send.fill(0)
                send[self._flag_slots[b]] = 1
        MPI = mpi()
        for b, (send, recv) in enumerate(zip(self._send, self._recv)):
            counts = [c + 1 for c in self._shards[b].counts]
            self.comm.Reduce_scatter([send, mpi_type(send.dtype)], [recv, mpi_type(recv.dtype)],
                                     counts, op=MPI.SUM)
        n_bad = int(round(float(self._recv[0][-1])))
        if n_bad:
            where = problem if problem is not None else "see the error on the other rank(s)"
            raise ValueError(f"invalid input to step on {n_bad} of {self.size} ranks, nothing "
                             f"was updated: {where}")
        if nonfinite != "ignore":
            bad = self._first_nonfinite()
            if bad is not None:
                if nonfinite == "raise":
                    raise ValueError(f"grads[{bad}] averaged over the {self.size} ranks "
                                     "contains NaN or Inf; nothing was updated "
                                     "(nonfinite='raise')")
                return False
        self._sync_hyperparameters()
        for dst, src in self._shard_in:          # the user's arrays are the truth
            dst[...] = src
        for recv in self._recv:
            recv *= self._inv_size
        self._inner.step(self._inner_grads)
        self._gather()
        self._pull_group_state()
        return True

    def _gather(self):
        """Collective: every rank's updated shard into the flat buffers, then the user's
        arrays."""
        MPI = mpi()
        for b, buf in enumerate(self._flat):
            s = self._shards[b]
            self.comm.Allgatherv(MPI.IN_PLACE, [buf, (s.counts, s.displs), mpi_type(buf.dtype)])
        self._unpack()

    def _pull_group_state(self):
        """Copy the group-level scalars the inner optimizer advanced (Schedule-Free's k,
        weight_sum, lr_max, train_mode; the same in every inner piece of a group, on every
        rank) into `param_groups`, which `_sync_hyperparameters` hands back to the pieces."""
        keys = self._inner.spec.group_state
        if not keys:
            return
        for group, inner in zip(self.param_groups, self._first_inner_groups()):
            for key in keys:
                group[key] = inner[key]

    # ------------------------------------------------------------------- train/eval modes
    def train(self):
        """Collective: train mode (Schedule-Free: parameters at y, where gradients are taken);
        see `opt_cls.train`. Each rank moves its shard, then the shards are gathered."""
        self._set_mode("train")

    def eval(self):
        """Collective: eval mode (Schedule-Free: parameters at the average x, to evaluate and
        save); see `opt_cls.eval`."""
        self._set_mode("eval")

    def _set_mode(self, mode):
        if self._inner.spec.modes is None:
            raise TypeError(f"{self.opt_cls.__name__} has no train/eval modes")
        agree(self.comm, self._check_arrays)
        self._sync_hyperparameters()
        for dst, src in self._shard_in:          # the user's arrays are the truth
            dst[...] = src
        getattr(self._inner, mode)()   # the same groups on every rank: all raise, or none
        self._gather()
        self._pull_group_state()

    def _arrays_problem(self):
        """Error message (str) if `param_groups` no longer holds the planned groups (a group's
        'params' replaced, a group removed or inserted) or a parameter was resized or
        reallocated in place since construction (the flat layout and the views that copy
        results back would be stale), else None."""
        try:
            check_groups(self.param_groups, self._planned)
            self._identity.check("params")
        except ValueError as e:
            return str(e)
        return None

    def _check_arrays(self):
        problem = self._arrays_problem()
        if problem is not None:
            raise ValueError(problem)

    def _first_nonfinite(self):
        """Collective: the first parameter whose summed gradient has a NaN/Inf, or None.

        Each rank reads its shard of the sums (one parallel pass; per parameter only when it
        is not all finite), then one ``Allreduce`` (MIN) of one integer makes the answer the
        same on every rank.
        """
        n = len(self._params)
        first = n
        if not _kernels.all_finite(self._finite_plan, self._finite_grads):
            first = next(i for i, _, g in self._finite_pieces if not np.isfinite(g).all())
        self._first_bad[0] = first
        MPI = mpi()
        self.comm.Allreduce(MPI.IN_PLACE, [self._first_bad, MPI.INT64_T], op=MPI.MIN)
        first = int(self._first_bad[0])
        return None if first == n else first

    def _sync_hyperparameters(self):
        """Carry edits of `param_groups` (e.g. a new lr) to the inner groups, checked by the
        optimizer's rules and stored as plain Python values (fastopt._validate)."""
        for gi, group in enumerate(self.param_groups):
            group.update(self._inner._checked(gi, group))
        for pc, ig in zip(self._pieces, self._inner.param_groups):
            for k, v in self.param_groups[pc.group].items():
                if k != "params":
                    ig[k] = v

    # ------------------------------------------------------------------------------ memory
    def state_nbytes(self):
        """Bytes of optimizer state held by this rank (its shard's buffers only)."""
        return sum(a.nbytes for entry in self._inner.state.values() for a in entry.values())

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self):
        """Collective: the full state in the single-process layout on rank 0, None elsewhere.

        The layout is `opt_cls`'s own (torch's): ``state[i]`` for parameter ``i`` over all
        groups, so ``opt_cls(params).load_state_dict(sd)`` accepts it.
        """
        agree(self.comm, self._check_arrays)
        self._sync_hyperparameters()
        inner = self._inner.state_dict()["state"]      # this shard, one entry per piece
        names = self._inner.spec.state
        full, formats = {}, {}
        for b, buf in enumerate(self._flat):
            for slot, name in enumerate(names):
                have = [k for k, pc in enumerate(self._pieces)
                        if pc.buf == b and name in inner.get(k, {})]
                if not have:                      # the same on every rank: same groups, steps
                    continue
                formats[(b, name)] = f = _qshard.slot_formats(self._inner, self._layout, b, slot)
                parts = [(f[pc.tensor], pc.start, pc.stop, inner[k][name])
                         for k, pc in ((k, self._pieces[k]) for k in have)
                         if pc.start < pc.stop]
                full[(b, name)] = _qshard.gather_slot(self.comm, self._shards[b],
                                                      self._spaces[b], f, parts, buf.dtype)
        if self.rank != 0:
            return None
        first_piece = {}
        for k, pc in enumerate(self._pieces):
            first_piece.setdefault(pc.group, k)
        state = {}
        for i, (b, off, n) in enumerate(self._layout.where):
            group_entry = inner.get(first_piece[self._group_of[i]])
            if group_entry is None:               # the group has not stepped yet
                continue
            state[i] = {"step": group_entry["step"]}
            for name in self._inner.spec.scalars:   # per-parameter scalars: one per group
                if name in group_entry:
                    state[i][name] = group_entry[name]
            for slot, name in enumerate(names):
                if name in group_entry:
                    state[i][name] = _qshard.root_buffer(
                        full[(b, name)], formats[(b, name)][i], i, self._layout,
                        self._spaces[b], self._params[i].shape,
                        _qshard.slot_signed(self._inner, slot))
        groups = [saved_group(g, off) for g, off in zip(self.param_groups, self._group_start)]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Collective: load rank 0's `state_dict` (single-process layout), re-sharded here.

        Rank 0 checks it against `opt_cls` over the full parameters (the same checks as
        ``opt_cls.load_state_dict``); any problem raises on every rank, nothing changed.
        """
        agree(self.comm, self._check_arrays)
        plan = agree(self.comm, self._plan_on_root, state_dict)
        scalars = self._inner.spec.scalars      # per-parameter scalars: one value per group
        meta = bcast_tree(self.comm, [(hyper, steps, [n for n in _common_names(bufs)
                                                      if n not in scalars],
                                       {n: float(bufs[0][n]) for n in scalars
                                        if bufs and n in bufs[0]})
                                      for hyper, steps, bufs in plan] if self.rank == 0 else None)
        names = self._inner.spec.state
        shard_state = {}
        for b, buf in enumerate(self._flat):
            for slot, name in enumerate(names):
                if not any(name in m[2] for m in meta):
                    continue
                saved = None
                if self.rank == 0:
                    saved = {}
                    for i in self._layout.members[b]:
                        gi = self._group_of[i]
                        if name in meta[gi][2]:
                            saved[i] = plan[gi][2][i - self._group_start[gi]][name]
                f = _qshard.slot_formats(self._inner, self._layout, b, slot)
                signed = _qshard.slot_signed(self._inner, slot)
                shard_state[(b, name)] = (f, signed, _qshard.scatter_slot(
                    self.comm, saved, self._shards[b], self._spaces[b], f, self._layout, b,
                    buf.dtype, signed))
        inner_state, inner_groups = {}, []
        for k, pc in enumerate(self._pieces):
            hyper, steps, bufnames, values = meta[pc.group]
            lo = self._shards[pc.buf].bounds(self.rank)[0]
            blo = self._spaces[pc.buf].shards(self._shards[pc.buf]).bounds(self.rank)[0]
            if bufnames or steps:
                inner_state[k] = {"step": float(steps), **values}
                for name in bufnames:
                    f, signed, mine = shard_state[(pc.buf, name)]
                    kind = f[pc.tensor] if pc.tensor is not None else next(iter(mine))
                    inner_state[k][name] = _qshard.part_buffer(
                        mine, kind, pc.start, pc.stop, lo, self._spaces[pc.buf], blo, signed)
            inner_groups.append({**hyper, "params": [k]})
        agree(self.comm, self._inner.load_state_dict,
              {"state": inner_state, "param_groups": inner_groups})
        for gi, (hyper, _, _, _) in enumerate(meta):
            params = self.param_groups[gi]["params"]
            self.param_groups[gi].clear()
            self.param_groups[gi].update({**hyper, "params": params})

    def _plan_on_root(self, state_dict):
        """Rank 0: validate against `opt_cls` over the full parameters (no state allocated)."""
        if self.rank != 0:
            return None
        full = self.opt_cls([{**{k: v for k, v in g.items() if k != "params"},
                              "params": g["params"]} for g in self.param_groups])
        return full._plan_load(state_dict)

    def save(self, path):
        """Collective: gather the state on rank 0 and write it atomically (fastopt.save format)."""
        sd = self.state_dict()

        def write():
            if self.rank == 0:
                checkpoint.write_state_dict(sd, self.opt_cls.__name__, path)
        agree(self.comm, write)

    def load(self, path):
        """Collective: rank 0 reads a checkpoint (from any number of ranks, or fastopt.save)."""
        def read():
            if self.rank == 0:
                return checkpoint.read_state_dict_of(path, self.opt_cls.__name__, self._params)
        self.load_state_dict(agree(self.comm, read))

    def __repr__(self):
        lo_hi = [s.bounds(self.rank) for s in self._shards]
        return (f"ShardedOptimizer({self.opt_cls.__name__}, rank {self.rank} of {self.size}, "
                f"shard {lo_hi} of {self._layout.sizes} elements per dtype)")


def _common_names(buffers):
    """State buffer names that every parameter of a group has (sorted)."""
    return sorted(set.intersection(*(set(b) for b in buffers))) if buffers else []
