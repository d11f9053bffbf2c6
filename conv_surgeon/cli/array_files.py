"""The array files `get` writes, chosen by the output's suffix (the encoders live in
:mod:`conv_surgeon.store.fileio`; numpy, h5py and safetensors load only when a file is
written)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    import numpy as np


def _npy(arrays: dict[str, np.ndarray]) -> bytes:
    from ..store.fileio import npy_bytes

    (array,) = arrays.values()
    return npy_bytes(array)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    from ..store.fileio import npz_bytes

    return npz_bytes(arrays)


def _safetensors(arrays: dict[str, np.ndarray]) -> bytes:
    from ..store.fileio import safetensors_bytes

    return safetensors_bytes(arrays)


def _h5(arrays: dict[str, np.ndarray]) -> bytes:
    from ..store.fileio import h5_bytes

    return h5_bytes(arrays)


@dataclass(frozen=True)
class ArrayFormat:
    name: str
    suffixes: tuple[str, ...]
    holds_many: bool  # several named arrays (all of a layer's variables), or exactly one
    encode: Callable[[dict[str, np.ndarray]], bytes]


NPY = ArrayFormat(".npy", (".npy",), False, _npy)
NPZ = ArrayFormat(".npz", (".npz",), True, _npz)
ARRAY_FORMATS = (NPY, NPZ, ArrayFormat(".safetensors", (".safetensors",), True, _safetensors),
                 ArrayFormat(".h5", (".h5", ".hdf5"), True, _h5))


def array_format(output: str | None, bundle: bool) -> ArrayFormat:
    """The format ``-o`` names: stdout gets .npy (a bundle, .npz); a file its suffix's."""
    if output in (None, "-"):
        return NPZ if bundle else NPY
    name = output.lower()
    if bundle:
        if not name.endswith(NPZ.suffixes):
            raise UsageError(
                f"-o {output}: --all writes an .npz bundle (what set --from-npz reads); name the output FILE.npz")
        return NPZ
    found = next((f for f in ARRAY_FORMATS if name.endswith(f.suffixes)), None)
    if found is None:
        raise UsageError(
            f"-o {output}: the name says no array format; name it FILE.npy (one array), FILE.npz, "
            "FILE.safetensors or FILE.h5 (every variable of the layer, or the one --weight names), "
            "or - for stdout"
        )
    return found
