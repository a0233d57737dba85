"""Checkpoint integrity: fo.load refuses damaged or mismatched files with a clear ValueError and
leaves the optimizer as it was; fo.save never leaves a partial file at the target path, even
when the writing process fails or is killed (SIGKILL) half-way.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt as fo
from fastopt import checkpoint


def trained(cls=fo.Adam, shapes=((3, 4), (5,)), steps=3, seed=0, **hyper):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in shapes]
    opt = cls(params, **(hyper or {"lr": 0.01}))
    for _ in range(steps):
        opt.step([rng.standard_normal(s) for s in shapes])
    return opt, params


def fingerprint(opt):
    """Everything a load could change: hyperparameters, step counts, buffers, parameters."""
    sd = opt.state_dict()
    state = {i: {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in e.items()}
             for i, e in sd["state"].items()}
    params = [p.tobytes() for g in opt.param_groups for p in g["params"]]
    return repr(sd["param_groups"]), state, params


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a trained Adam, and a second Adam (other values) to load it into."""
    opt, _ = trained(seed=0)
    path = tmp_path / "ckpt.npz"
    fo.save(opt, path)
    target, _ = trained(seed=1)
    return opt, path, path.read_bytes(), target


def assert_refused(target, path, match):
    before = fingerprint(target)
    with pytest.raises(ValueError, match=match):
        fo.load(target, path)
    assert fingerprint(target) == before, "a refused load changed the optimizer"


def test_intact_checkpoint_round_trips(saved):
    opt, path, _, target = saved
    fo.load(target, path)
    assert fingerprint(target)[:2] == fingerprint(opt)[:2]


@pytest.mark.parametrize("keep", [0, 1, 30, 0.5, -22, -1])
def test_truncated_file_is_refused(saved, keep):
    _, path, raw, target = saved
    n = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    path.write_bytes(raw[:n])
    assert_refused(target, path, "not a readable fastopt checkpoint|no metadata|checksum")


def test_every_single_bit_flip_is_refused_or_harmless(saved):
    """Flip one bit in each byte in turn. Either the load is refused, or the flipped byte held
    no data (zip timestamps, version-made-by, ...) and the loaded state is exactly the saved one.
    """
    opt, path, raw, target = saved
    expected = fingerprint(opt)[:2]
    refused = 0
    for at in range(len(raw)):
        bent = bytearray(raw)
        bent[at] ^= 1 << (at % 8)
        path.write_bytes(bytes(bent))
        fresh, _ = trained(seed=1)
        before = fingerprint(fresh)
        try:
            fo.load(fresh, path)
        except ValueError:
            refused += 1
            assert fingerprint(fresh) == before
        else:
            assert fingerprint(fresh)[:2] == expected, f"bit flip at byte {at} loaded wrong state"
    assert refused > len(raw) // 2, f"only {refused} of {len(raw)} flips refused"


def _rewrite(path, edit):
    """Re-write a checkpoint with edited metadata and a valid digest (a well-formed file)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    arrays.pop("__sha256__")
    edit(meta, arrays)
    meta_bytes = json.dumps(meta).encode()
    digest = checkpoint._digest(meta_bytes, arrays)
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(meta_bytes, np.uint8),
                 __sha256__=np.frombuffer(digest.encode(), np.uint8), **arrays)


def test_other_format_version_is_refused(saved):
    _, path, _, target = saved
    _rewrite(path, lambda meta, arrays: meta.update(version=checkpoint.VERSION + 1))
    assert_refused(target, path, f"format version {checkpoint.VERSION + 1} is not supported")


def test_other_format_name_is_refused(saved):
    _, path, _, target = saved
    _rewrite(path, lambda meta, arrays: meta.update(format="something-else"))
    assert_refused(target, path, "not a fastopt checkpoint")


def test_malformed_metadata_is_refused(saved):
    _, path, _, target = saved
    _rewrite(path, lambda meta, arrays: meta.pop("state_dict"))
    assert_refused(target, path, "arrays do not match its metadata")
    _rewrite(path, lambda meta, arrays: meta.update(state_dict=[1, 2]))
    assert_refused(target, path, "arrays do not match its metadata")


def test_stored_digest_must_match(saved):
    _, path, _, target = saved
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    name = "state_dict/state/0/exp_avg"
    arrays[name] = arrays[name] + 1                                # digest left as it was
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    assert_refused(target, path, "checksum mismatch")


def test_other_optimizer_class_is_refused(saved):
    _, path, _, _ = saved
    sgd, _ = trained(fo.SGD, lr=0.1, momentum=0.9)
    assert_refused(sgd, path, "checkpoint of a Adam, cannot load into a SGD")


@pytest.mark.parametrize("shapes", [((3, 4), (6,)), ((4, 3), (5,)), ((3, 4),), ((3, 4), (5,), (1,))])
def test_mismatched_parameters_are_refused(saved, shapes):
    _, path, _, _ = saved
    other, _ = trained(shapes=shapes, seed=2)
    assert_refused(other, path, "does not fit this optimizer")


def test_mismatched_groups_are_refused(saved):
    _, path, _, _ = saved
    a, b = np.zeros((3, 4)), np.zeros(5)
    other = fo.Adam([{"params": [a]}, {"params": [b], "lr": 0.1}])
    assert_refused(other, path, "param groups")


def test_not_a_checkpoint_is_refused(tmp_path):
    opt, _ = trained()
    for name, content in [("empty.npz", b""), ("text.npz", b"hello world" * 100)]:
        (tmp_path / name).write_bytes(content)
        assert_refused(opt, tmp_path / name, "not a readable fastopt checkpoint")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    assert_refused(opt, tmp_path / "plain.npz", "no metadata")
    with pytest.raises(FileNotFoundError):
        fo.load(opt, tmp_path / "missing.npz")


# ----------------------------------------------------------------------- crashes during save
@pytest.mark.parametrize("failure", ["replace", "savez", "interrupt", "fsync"])
def test_failed_save_keeps_the_previous_checkpoint(saved, monkeypatch, failure):
    opt, path, raw, _ = saved
    newer, _ = trained(seed=5)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt if failure == "interrupt" else OSError("disk on fire")

    if failure == "replace":
        monkeypatch.setattr(checkpoint.os, "replace", boom)
    elif failure == "fsync":
        monkeypatch.setattr(checkpoint.os, "fsync", boom)
    else:
        def half_then_boom(file, **arrays):     # write part of the archive, then fail
            file.write(b"PK\x03\x04" + b"\0" * 1000)
            boom()
        monkeypatch.setattr(checkpoint.np, "savez", half_then_boom)
    with pytest.raises((OSError, KeyboardInterrupt)):
        fo.save(newer, path)
    monkeypatch.undo()
    assert path.read_bytes() == raw, "the previous checkpoint was touched"
    assert sorted(os.listdir(path.parent)) == ["ckpt.npz"], "a temporary file was left behind"
    fresh, _ = trained(seed=1)
    fo.load(fresh, path)
    assert fingerprint(fresh)[:2] == fingerprint(opt)[:2]


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import fastopt as fo

    path = sys.argv[1]
    p = np.zeros(2_000_000)
    opt = fo.Adam([p], lr=0.5)
    opt.step([np.ones_like(p)])
    real_savez = np.savez

    class Stalling:
        # the archive file, which stalls for good once 1 MiB is written
        def __init__(self, f):
            self.f, self.n = f, 0
        def write(self, b):
            n = self.f.write(b)
            self.n += len(b)
            if self.n > 1 << 20:
                self.f.flush()
                print("half-way", flush=True)
                time.sleep(600)
            return n
        def __getattr__(self, name):
            return getattr(self.f, name)

    np.savez = lambda file, **arrays: real_savez(Stalling(file), **arrays)
    fo.save(opt, path)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_process_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    p_old = np.zeros(2_000_000)
    old = fo.Adam([p_old], lr=0.5)
    old.step([np.full_like(p_old, 3.0)])
    fo.save(old, path)
    raw = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "half-way", f"writer did not reach the middle of the save: {line!r}"
        partial = [f for f in os.listdir(tmp_path) if f != "ckpt.npz"]
        assert len(partial) == 1 and os.path.getsize(tmp_path / partial[0]) > 1 << 20
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == raw, "the checkpoint at the target path changed"
    fresh = fo.Adam([np.zeros(2_000_000)], lr=0.5)
    fo.load(fresh, path)
    assert fresh.state_dict()["state"][0]["step"] == 1
    np.testing.assert_array_equal(fresh.state[0]["exp_avg"], old.state[0]["exp_avg"])
    # the killed writer's temporary file stays behind under its own name, never as ckpt.npz,
    # until the next save to the same path removes it
    leftovers = [f for f in os.listdir(tmp_path) if f != "ckpt.npz"]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".ckpt.npz.fastopt-") and leftovers[0].endswith(".tmp")
    fo.save(fresh, path)
    assert os.listdir(tmp_path) == ["ckpt.npz"]
