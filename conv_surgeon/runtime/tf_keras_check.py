"""The smoke test under tf-keras, in a process of its own (``python -m`` this module).

Keras 3 cannot load some files Keras 2 wrote (a list-style Keras 2.0-2.1 config, tf-keras's
DepthwiseConv2D with ``groups``); tf-keras reads them. The parent
(:func:`.smoke.run_smoke_test`) sends the check's arguments (the target, its
:class:`.checks.SmokeOptions`, the expected values, the original) pickled on stdin and
reads back, pickled on stdout, ``("ok", SmokeReport)``, ``("error", ConvSurgeonError)``
or ``("bug", (message, traceback))``. Only conv-surgeon itself is on either end.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback


def main() -> None:
    # Whatever Keras or TensorFlow print must not mix with the answer on stdout.
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    request = pickle.loads(sys.stdin.buffer.read())
    from ..errors import ConvSurgeonError
    from .smoke import run_smoke_test

    try:
        payload = pickle.dumps(("ok", run_smoke_test(**request, runtime="tf-keras")))
    except ConvSurgeonError as exc:
        payload = pickle.dumps(("error", exc))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent as a bug
        payload = pickle.dumps(("bug", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
    answer.write(payload)
    answer.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
