"""The `fastopt` command: `fastopt <command> [options]`.

Each command lives in its own module, registered in ``COMMANDS`` as
``name: (module, one-line help)``. The module provides ``add_arguments(parser)`` (its options)
and ``run_from_args(args)`` (does the work, returns an exit status), and may import only the
standard library and NumPy at module level, so that building the parser stays cheap; optional
dependencies are imported inside the command.
"""
import argparse
import importlib
import sys

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {
    "demo": ("fastopt.demo", "every optimizer on real logistic-regression problems: table and "
                             "convergence figures"),
    "viz": ("fastopt.viz", "optimizer trajectories on 2-D test functions: PNG and animated GIF"),
    "bench": ("fastopt.bench", "measure update speed against memory bandwidth, NumPy and torch"),
}


def build_parser():
    """The argparse parser with one subparser per entry of COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="fastopt", description="fastopt: fused, in-place optimizer updates.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run_from_args)
    return parser


def main(argv=None):
    """Parse `argv` (default: sys.argv[1:]) and run the chosen command; returns its status."""
    args = build_parser().parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
