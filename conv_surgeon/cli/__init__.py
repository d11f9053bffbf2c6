"""The command line: each command parses, calls one library function and renders.

:mod:`.app` holds the Typer app and the one error boundary; each command has its
module, imported here so that it registers itself (in the order of ``--help``).
"""

from . import inspect_cmd, get_cmd, show_cmd, set_cmd, apply_cmd, diff_cmd, fold_cmd, equalize_cmd, prune_cmd, port_cmd  # noqa: F401  (they register)
from .app import app, main

__all__ = ["app", "main"]
