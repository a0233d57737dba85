"""Generate fastopt's per-optimizer sources from the optimizer table (src/fastopt/_table.py).

    python tools/generate.py            write the outputs whose text changed, list them
    python tools/generate.py --check    write nothing; exit 1 naming any output that is
                                        missing or differs from what the table gives

Every template in TEMPLATES (Tempita, which ships with Cython, as scikit-learn's
``_loss.pyx.tp``) is rendered with the table and written next to itself, without ``.tp``.
``setup.py`` calls ``generate()`` on every build, so nothing stale is ever compiled; the
outputs are build products, ignored by git. An output is rewritten only when its text
changes, so an unchanged table triggers no recompilation.

The template namespace: ``flags`` (the table's FLAGS), ``kernels`` (its KERNELS, in order),
``on(backend)`` (the kernels compiled for a backend), ``banner(comment)`` (the
do-not-edit line) and the small formatting helpers below.
"""
import argparse
import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = "src/fastopt/_table.py"
TEMPLATES = (
    "csrc/fastopt/flags.h.tp",
    "csrc/fastopt/hp.h.tp",
    "csrc/fastopt/constants.h.tp",
    "csrc/fastopt/instances.h.tp",
    "src/fastopt/_kernels_decl.pxi.tp",
    "src/fastopt/_kernels_steps.pxi.tp",
    "src/fastopt/_mixed_steps.pxi.tp",
    "src/fastopt/_qstate_steps.pxi.tp",
)


def load_table(root=ROOT):
    """The table module's namespace, loaded by path (fastopt itself is not imported)."""
    return runpy.run_path(str(Path(root) / TABLE))


def _namespace(table, template):
    kernels = list(table["KERNELS"].values())
    flags = table["FLAGS"]
    bits = table["FLAG_BITS"]

    def on(backend):
        """The kernels of a backend; "qstate": those with a low-bit state format."""
        if backend == "qstate":
            return [k for k in kernels if len(table["state_formats"](k)) > 1]
        return [k for k in kernels if backend in k.backends]

    def fields(k):
        """The double fields of fo_<k>_hp, in order."""
        return [name for name, _ in k.scalars]

    def c_flags(names):
        """C expression of a set of flags: 0, FO_A or FO_A | FO_B."""
        return " | ".join(f"FO_{n}" for n in names) or "0"

    def mask(k):
        """The flags its loop instances fix: the union of its cases, in FLAGS order."""
        used = {n for case in k.cases for n in case}
        return c_flags([f.name for f in flags if f.name in used])

    def init(k, ctype):
        """The initializer of fo_<k>_k from `const fo_<k>_hp *h`: each constant formed in
        double and rounded once to `ctype`."""
        names = set(fields(k))
        items = []
        for _, expr in k.consts:
            c = re.sub(r"\b([A-Za-z_]\w*)\b",
                       lambda m: f"h->{m.group(1)}" if m.group(1) in names else m.group(1), expr)
            items.append(f"({ctype})h->{expr}" if expr in names else f"({ctype})({c})")
        return "{" + ", ".join(items + ["h->flags"]) + "}"

    def state_mask(k):
        """Cython expression (of `flags`) of the state slots the rule uses: bit i = slot i."""
        always = sum(1 << i for i, s in enumerate(k.state) if s.needs is None)
        terms = [f"({1 << i} if flags & FO_{s.needs} else 0)"
                 for i, s in enumerate(k.state) if s.needs is not None]
        return " | ".join(([str(always)] if always or not terms else []) + terms)

    for k in kernels:
        unknown = ({n for c in k.cases for n in c} | set(k.flags)) - set(bits)
        assert not unknown, f"{k.name}: flags {sorted(unknown)} are not in FLAGS"
        assert len(k.state) <= 3, f"{k.name}: a rule has at most 3 state slots"
        assert k.plain is None or re.fullmatch(r"[A-Z][A-Z0-9_]*", k.plain), \
            f"{k.name}: plain names an FO_PLAIN_X macro of rules.h, got {k.plain!r}"

    def banner(comment):
        return (f"{comment} GENERATED from {TABLE} by tools/generate.py ({template}); "
                f"do not edit.")

    return dict(flags=flags, kernels=kernels, on=on, fields=fields, c_flags=c_flags,
                mask=mask, init=init, state_mask=state_mask, banner=banner,
                types=(("f32", "float"), ("f64", "double")))


def render(root=ROOT, table=None):
    """{output path: text} for every template."""
    from Cython import Tempita
    root = Path(root)
    table = load_table(root) if table is None else table
    out = {}
    for name in TEMPLATES:
        path = root / name
        tmpl = Tempita.Template(path.read_text(), name=name)
        out[path.with_suffix("")] = tmpl.substitute(_namespace(table, name))
    return out


def generate(root=ROOT, check=False):
    """Write the outputs that differ from the table's rendering; return their paths.

    With check=True nothing is written (the paths returned are the stale or missing ones).
    """
    changed = []
    for path, text in render(root).items():
        if not path.exists() or path.read_text() != text:
            changed.append(path)
            if not check:
                path.write_text(text)
    return changed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="write nothing; fail if an output is missing or out of date")
    args = ap.parse_args(argv)
    changed = generate(ROOT, check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'wrote'} {path.relative_to(ROOT)}")
    if not changed:
        print("generated files are up to date")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
