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
    "demo": ("fastopt.demo", "every optimizer on logistic regression: table and figures"),
    "viz": ("fastopt.viz", "optimizer paths on 2-D test functions: PNG and GIF"),
    "bench": ("fastopt.bench", "update speed against memory bandwidth, NumPy and torch"),
}

EPILOG = """\
'python -m fastopt COMMAND' is the same as 'fastopt COMMAND'.
Run 'fastopt COMMAND --help' for the options of a command, e.g. 'fastopt demo --help'."""


def build_parser():
    """The argparse parser with one subparser per entry of COMMANDS."""
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="fastopt", description="fastopt: fused, in-place optimizer updates.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run_from_args)
    return parser


def main(argv=None):
    """Parse `argv` (default: sys.argv[1:]) and run the chosen command; returns its status.

    Without a command, prints the list of commands (one line each) and returns 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
