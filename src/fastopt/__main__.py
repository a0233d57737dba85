"""`python -m fastopt <command>`: the same as the `fastopt` command."""
import sys

from .cli import main

sys.exit(main())
