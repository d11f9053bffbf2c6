"""What an untrusted HDF5 file may not hold, worded once for both of its readers.

Keras refuses a dataset whose data lies in another file (HDF5 external raw storage), a
virtual dataset, and soft and external links (``safe_get_h5_dataset`` in
keras/src/saving/saving_lib.py): each has the reader fetch bytes that the file's author
chose from elsewhere, any file on the reader's disk included. conv-surgeon refuses them
anywhere in a file, before it reads a value.

It refuses as well a dataset whose declared size its file cannot hold: a 44 KB `.keras` can
declare a (100000, 100000, 3, 64) kernel and store none of it, and reading it would fill
memory with 7.7 TB of fill values. Stored bytes must be the declared ones (contiguous or
compact storage), or able to hold them (chunked: as many bytes uncompressed, one in
:data:`MAX_EXPANSION` through a filter); a chunked dataset may not span more chunks than
it has stored bytes. Keras writes none of these.

The pure-Python reader (:mod:`.hdf5_tree`) refuses what it can tell as it walks; h5py's
side (:func:`.hdf5.refuse_untrusted_content`) checks a whole file when it is opened.
"""

from __future__ import annotations

import math

# deflate's best ratio is about 1032 to 1 (a run of one byte value); a filtered dataset
# that declares more than this many times its stored bytes was not compressed from them.
MAX_EXPANSION = 1100
_MAX_SHOWN = 200  # characters of a name or path shown in a message
_CRAFTED = "the file is corrupt or crafted, refusing to read it"
_RESAVE = "re-save it with Keras"


def stored_elsewhere(path: str, file: str) -> str:
    return (f"dataset {shown(path)}: its data is stored in another file ({shown(file)}), which "
            f"Keras refuses to read; {_RESAVE}")


def virtual(path: str) -> str:
    return (f"dataset {shown(path)} is a virtual dataset (its data is read from other datasets, "
            f"other files included), which Keras refuses to read; {_RESAVE}")


def soft_link(path: str, target: str | None) -> str:
    to = f" to {shown(target)}" if target is not None else ""
    return f"{shown(path)} is a soft link{to}, which Keras refuses to follow; {_RESAVE}"


def external_link(path: str, file: str, target: str) -> str:
    return (f"{shown(path)} is an external link to {shown(target)} in {shown(file)}, which Keras "
            f"refuses to follow; {_RESAVE}")


def other_link(path: str) -> str:
    return f"{shown(path)} is a user-defined link, which Keras refuses to follow; {_RESAVE}"


def size_problem(path: str, shape: tuple[int, ...], dtype: str, declared: int, stored: int,
                 chunks: int | None = None, filtered: bool = False) -> str | None:
    """Why a dataset's ``declared`` bytes do not fit the ``stored`` bytes its file holds
    for it, or None when they do. ``chunks``: how many chunks its shape spans, for chunked
    storage (None: contiguous or compact, whose stored bytes are the values themselves);
    ``filtered``: whether its chunks pass through a filter (compression)."""
    if declared == 0:
        return None
    if chunks is None:
        fits = stored == declared
    elif filtered:
        fits = 0 < stored and declared <= stored * MAX_EXPANSION
    else:
        fits = stored >= declared
    if not fits:
        return size_mismatch(path, shape, dtype, declared, stored)
    if chunks is not None and chunks > stored:
        return (f"dataset {shown(path)}: declares {chunks} chunks (shape {shape} {dtype}) in "
                f"{byte_size(stored)} of storage; {_CRAFTED}")
    return None


def size_mismatch(path: str, shape: tuple[int, ...], dtype: str, declared: int, stored: int) -> str:
    return (f"dataset {shown(path)}: declares {byte_size(declared)} (shape {shape} {dtype}) but the "
            f"file stores {byte_size(stored)} for it; {_CRAFTED}")


def byte_size(count: int) -> str:
    """``7.7 TB``, ``44.0 KB``, ``0 bytes``: decimal units."""
    if count < 1000:
        return f"{count} bytes"
    exponent = min(int(math.log10(count)) // 3, 6)
    return f"{count / 1000 ** exponent:.1f} {'KMGTPE'[exponent - 1]}B"


def shown(text: str) -> str:
    """A name from the file, fit for a one-line message: control characters escaped, cut
    short past :data:`_MAX_SHOWN` characters."""
    escaped = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return escaped if len(escaped) <= _MAX_SHOWN else escaped[:_MAX_SHOWN] + "..."
