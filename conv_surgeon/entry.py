"""The console-script entry point: start reading the model before anything else loads.

Typer, click and rich take about as long to import as h5py and numpy take to import
and parse a model's structure. The parse runs in a forked worker anyway (DESIGN §3:
HDF5 can hang on corrupt files), so for the read commands it is started here, before
the command line is parsed, and the two run side by side on separate cores. The
library claims the worker's result when it reads that file; an unclaimed one is
killed at exit. Nothing else about the command changes.
"""

from __future__ import annotations

import os
import sys

from .store.source import CONFIG_MEMBER
from .store.hdf5 import HDF5_MAGIC
from .store.archive import ZIP_MAGIC
from .model.structure import abandon_prefetched, prefetch_structures

# The commands that start by reading a model's structure, and how many models each reads.
READ_COMMANDS = {"inspect": 1, "get": 1, "show": 2, "diff": 2, "set": 1, "apply": 1}  # show: and --against


def models_named(args: list[str]) -> list[str]:
    """The models a read command names: files that start like a model or a shard map,
    and folders holding a config.json."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command not in READ_COMMANDS:
        return []
    found = []
    for arg in args[args.index(command) + 1 :]:
        if arg.startswith("-"):
            continue
        if os.path.isdir(arg):
            # A saved folder or keras-hub preset.
            if os.path.isfile(os.path.join(arg, CONFIG_MEMBER)):
                found.append(arg)
        elif os.path.isfile(arg):
            try:
                with open(arg, "rb") as handle:
                    head = handle.read(8)
            except OSError:
                continue
            if head.startswith((ZIP_MAGIC, HDF5_MAGIC)) or (arg.endswith(".json") and head.lstrip()[:1] == b"{"):
                found.append(arg)
        if len(found) == READ_COMMANDS[command]:
            break
    return found


def main() -> None:
    prefetch_structures(models_named(sys.argv[1:]))
    from .cli import main as cli_main

    try:
        cli_main()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of numpy, h5py and TensorFlow.

    Tearing those modules down takes 40-130 ms here, longer than a whole `inspect` of
    a small model. Every file the command wrote is closed (and fsynced) by then; only
    the standard streams still need flushing.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # the reader went away; the exit code already says so
    abandon_prefetched()
    os._exit(code)
