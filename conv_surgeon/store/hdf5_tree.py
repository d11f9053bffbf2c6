"""The groups and datasets of an HDF5 file, read in pure Python: no h5py, no numpy.

Reading a model's structure needs little of HDF5: the group tree, each dataset's shape
and dtype, and a few string attributes. Through h5py that read first costs the import
of h5py and numpy (130-150 ms here), more than the rest of ``inspect`` together. This
module reads that much of the files Keras writes through h5py with libhdf5's default
settings (checked on every kind of save in the test zoo), and nothing else:

- superblock version 0, 8-byte offsets and lengths, base address 0, no driver block;
- version 1 object headers, continuation blocks included;
- groups with a symbol table: a version 1 B-tree of symbol table nodes and a local heap
  of link names; hard links only, each object reached once;
- datasets: dataspace messages version 1 and 2 (scalar or simple); those whose shape or
  dtype is asked for: data layout version 3, contiguous or compact, no filters, fill
  value messages versions 1 to 3;
- datatypes (version 1) as h5py maps them to numpy: little-endian IEEE float16/32/64,
  little-endian integers of 1, 2, 4 and 8 bytes, h5py's boolean (an enum FALSE=0,
  TRUE=1), opaque records without a tag (``void16``; Keras's bfloat16 when a
  ``dtype="bfloat16"`` attribute says so);
- attribute messages versions 1 to 3 whose values are strings, fixed-length or
  variable-length (read from global heap collections).

What Keras refuses to read and a dataset whose declared size the file cannot hold
(:mod:`.untrusted`) are refused for good, with a :class:`~conv_surgeon.errors.ModelFileError`
that names them, where this reader tells them: a dataset stored in another file, a
virtual dataset, a soft link, a contiguous dataset never allocated. h5py is not asked to
read these either.

Exact or nothing: anything else outside that subset raises :class:`UnsupportedHDF5`, and the
caller reads the file with h5py instead, which stays the reference. So does anything
that does not add up: an offset past the end of the file, a block without its
signature, a B-tree whose keys would make libhdf5's lookup by name fail, a heap free
list libhdf5 would reject, a block reached twice (a cycle, or a file h5py walks
differently), more than :data:`MAX_OBJECTS` objects. Where libhdf5 checks a structure
when h5py opens or reads it (the B-tree keys, the local heap's free list, a dataset's
storage size against its shape, ...), this reader checks it at least as strictly, so
that a damaged file it accepts is one h5py reads too, and a damaged file h5py refuses
gets h5py's own error through the fallback.

Why it needs no worker process: libhdf5 can spin forever inside C on a corrupt file (a
free list that points back at itself, a zero-sized heap object), so h5py runs in a
forked worker with a deadline (:mod:`.worker`). This reader is plain Python whose every
loop is bounded: each block is read at most once, after its extent has been checked
against the file's size; message, entry and object counts are capped; lists that link
onwards (free lists, continuation blocks) stop at the first repeat. It cannot hang,
and it runs in the calling process.
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Union

from ..errors import ModelFileError
from . import untrusted

# The bytes of a file: read from stdin, or a file mapped into memory.
Buffer = Union[bytes, mmap.mmap]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
UNDEFINED_ADDRESS = 0xFFFFFFFFFFFFFFFF
MAX_OBJECTS = 1 << 20  # more than any Keras model holds; past it h5py reads the file
MAX_BTREE_LEVELS = 32
MAX_RANK = 32  # libhdf5's H5S_MAX_RANK

# Header message types (HDF5 File Format Specification, IV.A.2).
NIL, DATASPACE, DATATYPE, FILL_VALUE, EXTERNAL_FILES, LAYOUT = 0x00, 0x01, 0x03, 0x05, 0x07, 0x08
FILTERS, ATTRIBUTE, CONTINUATION, SYMBOL_TABLE, MTIME = 0x0B, 0x0C, 0x10, 0x11, 0x12
# Every message type this reader knows; an object with any other is unsupported.
KNOWN_MESSAGES = frozenset({NIL, DATASPACE, DATATYPE, FILL_VALUE, EXTERNAL_FILES, LAYOUT, FILTERS, ATTRIBUTE,
                            CONTINUATION, SYMBOL_TABLE, MTIME})
MESSAGE_CONSTANT = 0x01  # the one message flag allowed: shared messages are not read

# Datatype classes.
FIXED_POINT, FLOAT, STRING, OPAQUE, ENUM, VARIABLE_LENGTH = 0, 1, 3, 5, 8, 9
# IEEE little-endian floats as h5py writes them: size -> (sign bit, exponent location,
# exponent size, mantissa location, mantissa size, exponent bias).
IEEE_FLOATS = {
    2: (15, 10, 5, 0, 10, 15),
    4: (31, 23, 8, 0, 23, 127),
    8: (63, 52, 11, 0, 52, 1023),
}
IMPLIED_MANTISSA_BIT = 2 << 4  # mantissa normalization "msb implied": bits 4-5 of byte 0
H5PY_BOOLEAN = {b"FALSE": 0, b"TRUE": 1}  # the enum h5py writes for numpy bool
NULL_TERMINATED, NULL_PADDED = 0, 1
ASCII, UTF8 = 0, 1

SUPERBLOCK = struct.Struct("<8sBBBBBBBBHHI4Q")
SYMBOL_ENTRY = struct.Struct("<QQI4xQQ")  # name offset, header, cache type, scratch pad
OBJECT_HEADER = struct.Struct("<BxHII4x")  # version, messages, reference count, size
MESSAGE_HEADER = struct.Struct("<HHB3x")  # type, size, flags
LOCAL_HEAP = struct.Struct("<4sB3xQQQ")  # signature, version, size, free list, data
FREE_BLOCK = struct.Struct("<QQ")  # next free block, size
FREE_LIST_END = 1  # libhdf5's H5HL_FREE_NULL
BTREE_NODE = struct.Struct("<4sBBHQQ")  # signature, type, level, entries used, siblings
SYMBOL_NODE = struct.Struct("<4sBxH")  # signature, version, symbols
GLOBAL_HEAP = struct.Struct("<4sB3xQ")  # signature, version, collection size
GLOBAL_HEAP_MIN_SIZE = 4096
HEAP_OBJECT = struct.Struct("<HH4xQ")  # index, reference count, size
ADDRESS = struct.Struct("<Q")
TWO_ADDRESSES = struct.Struct("<QQ")
DATATYPE_HEADER = struct.Struct("<BBBBI")  # class and version, 3 bytes of bit fields, size
INTEGER_PROPERTIES = struct.Struct("<HH")  # bit offset, precision
FLOAT_PROPERTIES = struct.Struct("<HHBBBBI")
DATASPACE_V1 = struct.Struct("<BBB5x")  # version, rank, flags
DATASPACE_V2 = struct.Struct("<BBBB")  # version, rank, flags, type
SCALAR, SIMPLE = 0, 1
ATTRIBUTE_V1 = struct.Struct("<BxHHH")  # version, name, datatype, dataspace sizes
ATTRIBUTE_V2 = struct.Struct("<BBHHH")  # ... with flags
ATTRIBUTE_V3 = struct.Struct("<BBHHHB")  # ... and the name's character set
VLEN_REFERENCE = struct.Struct("<IQI")  # length, global heap collection, object index
COMPACT, CONTIGUOUS = 0, 1
VIRTUAL_LAYOUT = (4, 3)  # (layout message version, class) of a virtual dataset
EXTERNAL_FILE_LIST = struct.Struct("<B3xHHQ")  # version, slots allocated, slots used, local heap
EXTERNAL_FILE_SLOT = struct.Struct("<QQQ")  # name offset in the heap, offset in the file, size
SOFT_LINK_ENTRY = 2  # a symbol table entry's cache type for a soft link
COMPACT_SIZE = struct.Struct("<H")
FILL_VALUE_SIZE = struct.Struct("<I")


# A group member: its name, object header address and the symbol table its entry caches.
_Member = tuple[bytes, int, Union[tuple[int, int], None]]


class UnsupportedHDF5(Exception):
    """The file holds something this reader does not read exactly, or is damaged:
    read it with h5py instead."""


def _padded(length: int, multiple: int = 8) -> int:
    return -(-length // multiple) * multiple


def _unpack(layout: struct.Struct, data: bytes, offset: int = 0) -> tuple[Any, ...]:
    if offset < 0 or offset + layout.size > len(data):
        raise UnsupportedHDF5("a message shorter than its fields")
    return layout.unpack_from(data, offset)


class _File:
    """The bytes of one HDF5 file: ``size`` bytes at ``base`` of ``buffer``, every read
    checked against its end first; ``label`` names the file in refusals."""

    def __init__(self, buffer: Buffer, base: int, size: int, label: str) -> None:
        self.buffer, self.base, self.end, self.label = buffer, base, size, label
        self.seen: set[int] = set()
        self.global_heaps: dict[int, dict[int, bytes]] = {}
        self.objects = 0

    def check(self, offset: int, length: int) -> int:
        if offset < 0 or length < 0 or offset + length > self.end:
            raise UnsupportedHDF5(f"{length} bytes at {offset} lie outside the file's {self.end} bytes")
        return self.base + offset

    def unpack(self, layout: struct.Struct, offset: int) -> tuple[Any, ...]:
        return layout.unpack_from(self.buffer, self.check(offset, layout.size))

    def read(self, offset: int, length: int) -> bytes:
        start = self.check(offset, length)
        return self.buffer[start:start + length]

    def refuse(self, problem: str) -> NoReturn:
        """Refuse the file for good (:mod:`.untrusted`): h5py must not read it either."""
        raise ModelFileError(f"{self.label}: {problem}")

    def once(self, offset: int) -> None:
        """Mark a block read: one reached twice is a cycle, or a file h5py would walk
        differently (an object under two names)."""
        if offset in self.seen:
            raise UnsupportedHDF5(f"the block at {offset} is reached twice")
        self.seen.add(offset)

    def heap_object(self, collection: int, index: int) -> bytes:
        """Object ``index`` of the global heap collection at ``collection``."""
        if collection not in self.global_heaps:
            self.global_heaps[collection] = self._global_heap(collection)
        objects = self.global_heaps[collection]
        if index not in objects:
            raise UnsupportedHDF5(f"global heap collection {collection} has no object {index}")
        return objects[index]

    def _global_heap(self, collection: int) -> dict[int, bytes]:
        """Every object of a collection, parsed as libhdf5 parses it (the whole
        collection, free space included, must add up)."""
        signature, version, size = self.unpack(GLOBAL_HEAP, collection)
        if signature != b"GCOL" or version != 1 or size < GLOBAL_HEAP_MIN_SIZE:
            raise UnsupportedHDF5(f"no global heap collection at {collection}")
        data = self.read(collection, size)
        objects: dict[int, bytes] = {}
        cursor, free_space = GLOBAL_HEAP.size, False
        while cursor < size:
            if cursor + HEAP_OBJECT.size > size:  # a tail too small for an object: free
                if free_space:
                    raise UnsupportedHDF5(f"global heap collection {collection} is damaged")
                break
            index, _, length = HEAP_OBJECT.unpack_from(data, cursor)
            if index:
                need = HEAP_OBJECT.size + _padded(length)
                if index in objects:
                    raise UnsupportedHDF5(f"global heap object {index} twice")
                objects[index] = data[cursor + HEAP_OBJECT.size:cursor + HEAP_OBJECT.size + length]
            else:  # the free space: its size includes its header, unpadded
                need = length
                if free_space or need % 8 != 0:
                    raise UnsupportedHDF5(f"global heap collection {collection} is damaged")
                free_space = True
            if need <= 0 or cursor + need > size:
                raise UnsupportedHDF5(f"global heap collection {collection} is damaged")
            cursor += need
        return objects


@dataclass(frozen=True)
class _Attribute:
    datatype: bytes
    dataspace: bytes
    data: bytes


class _Object:
    """What groups and datasets share: attributes, checked and decoded when asked for."""

    def __init__(self, file: _File, attributes: dict[bytes, _Attribute]) -> None:
        self._file, self._attributes, self._checked = file, attributes, False

    def _checked_attributes(self) -> dict[bytes, _Attribute]:
        # h5py decodes every attribute of an object to find one by name.
        if not self._checked:
            for attribute in self._attributes.values():
                _check_datatype(attribute.datatype)
                _shape(attribute.dataspace)
            self._checked = True
        return self._attributes

    def has_attribute(self, name: str) -> bool:
        return name.encode() in self._checked_attributes()

    def text_attribute(self, name: str) -> str | None:
        """A string attribute as h5py reads it (the first item of an array of
        strings), or None where there is no such attribute."""
        attribute = self._checked_attributes().get(name.encode())
        if attribute is None:
            return None
        if _element_count(attribute.dataspace) == 0:
            raise UnsupportedHDF5(f"attribute {name} holds no value")
        return _decode_text(self._file, attribute.datatype, attribute.data)

    def scalar_text_attribute(self, name: str) -> str | None:
        """:meth:`text_attribute` of a scalar attribute (an array one is unsupported)."""
        attribute = self._checked_attributes().get(name.encode())
        if attribute is not None and _shape(attribute.dataspace) != ():
            raise UnsupportedHDF5(f"attribute {name} is an array")
        return self.text_attribute(name)


class Group(_Object):
    """A group: its members' names, in h5py's iteration order, and header addresses."""

    kind: Literal["group"] = "group"

    def __init__(self, file: _File, attributes: dict[bytes, _Attribute], members: list[_Member]) -> None:
        super().__init__(file, attributes)
        self.members = members

    def has_member(self, name: str) -> bool:
        encoded = name.encode()
        return any(member == encoded for member, _, _ in self.members)


class Dataset(_Object):
    """A dataset: its shape, and the numpy dtype name h5py gives it.

    Its messages are checked when one of these is first asked for, as ``H5Dopen``
    checks them when h5py opens the dataset.
    """

    kind: Literal["dataset"] = "dataset"

    def __init__(self, file: _File, attributes: dict[bytes, _Attribute], messages: dict[int, list[bytes]],
                 path: str) -> None:
        super().__init__(file, attributes)
        self._messages, self.path = messages, path
        self._opened: tuple[tuple[int, ...], str] | None = None

    def _open(self) -> tuple[tuple[int, ...], str]:
        """(shape, numeric dtype), checked."""
        if self._opened is None:
            kinds = {kind: bodies for kind, bodies in self._messages.items() if kind != MTIME}
            if (set(kinds) - {DATASPACE, DATATYPE, LAYOUT, FILL_VALUE}
                    or any(len(bodies) != 1 for bodies in kinds.values())):
                raise UnsupportedHDF5(f"a dataset with messages {sorted(kinds)}")
            (dataspace,), (datatype,), (layout,) = kinds[DATASPACE], kinds[DATATYPE], kinds[LAYOUT]
            shape = _shape(dataspace)
            dtype = _numeric_dtype(datatype)
            if FILL_VALUE in kinds:
                _check_fill_value(kinds[FILL_VALUE][0])
            declared = math.prod(shape) * _datatype_size(datatype)
            _check_storage(layout, declared, self._file.end)
            if declared and layout[1] == CONTIGUOUS and _unpack(ADDRESS, layout, 2)[0] == UNDEFINED_ADDRESS:
                # Never allocated: h5py would read all those bytes as fill values.
                self._file.refuse(untrusted.size_mismatch(self.path, shape, dtype, declared, 0))
            self._opened = (shape, dtype)
        return self._opened

    @property
    def shape(self) -> tuple[int, ...]:
        return self._open()[0]

    def data_span(self) -> tuple[Buffer, int, int]:
        """Where the dataset's bytes lie, as h5py reads them: ``(buffer, start, size)``
        (the file's own buffer for contiguous storage, the layout message for compact).
        Storage never allocated (of an empty dataset: a non-empty one is refused when
        opened) is unsupported."""
        self._open()
        (layout,) = self._messages[LAYOUT]
        if layout[1] == COMPACT:
            (stored,) = _unpack(COMPACT_SIZE, layout, 2)
            return layout, 4, stored
        address, stored = _unpack(TWO_ADDRESSES, layout, 2)
        if address == UNDEFINED_ADDRESS:
            raise UnsupportedHDF5("a dataset whose storage was never allocated: h5py reads its fill value")
        return self._file.buffer, self._file.check(address, stored), stored

    @property
    def dtype(self) -> str:
        """numpy's name for the dtype h5py reads (``float32``, ``bool``, ...), or
        ``bfloat16`` for the opaque 2-byte records Keras marks so."""
        dtype = self._open()[1]
        if dtype.startswith("void") and self.scalar_text_attribute("dtype") == "bfloat16":
            return "bfloat16"
        return dtype


class HDF5Tree:
    """One HDF5 file's groups and datasets, walked as ``h5py.h5o.visit`` walks them:
    the ``size`` bytes at ``base`` of ``buffer`` (a file mapped into memory, an archive's
    member inside it, bytes from stdin). ``label`` names the file in refusals.

    >>> tree = HDF5Tree(open("sample_models/tiny_cnn.h5", "rb").read())
    >>> next(path for path, item in tree.walk() if item.kind == "dataset")
    'model_weights/conv1/sequential/conv1/bias'
    """

    def __init__(self, buffer: Buffer, base: int = 0, size: int | None = None, label: str = "the HDF5 file") -> None:
        size = len(buffer) - base if size is None else size
        if base < 0 or size < 0 or base + size > len(buffer):
            raise UnsupportedHDF5("the file lies outside the buffer")
        self._file = _File(buffer, base, size, label)
        (signature, version, free_space, root_version, _, shared_version, offsets, lengths, _,
         self._leaf_k, self._internal_k, flags, base_address, extension, end, driver) = self._file.unpack(SUPERBLOCK, 0)
        if signature != HDF5_SIGNATURE:
            raise UnsupportedHDF5("no HDF5 signature at the file's start")
        if (version, free_space, root_version, shared_version) != (0, 0, 0, 0):
            raise UnsupportedHDF5(f"superblock version {version}")
        if (offsets, lengths) != (8, 8):
            raise UnsupportedHDF5(f"{offsets}-byte offsets and {lengths}-byte lengths")
        if base_address != 0 or flags != 0 or driver != UNDEFINED_ADDRESS or not self._leaf_k or not self._internal_k:
            raise UnsupportedHDF5("a superblock with a base address, flags or a driver block")
        if extension != UNDEFINED_ADDRESS:  # libhdf5 refuses it below superblock version 2
            raise UnsupportedHDF5("a superblock extension address in a version 0 superblock")
        if end > size:
            raise UnsupportedHDF5(f"the file is truncated: {size} of its {end} bytes")
        self._file.end = end  # libhdf5 reads nothing past the end of the address space
        _, header, cache, btree, heap = self._file.unpack(SYMBOL_ENTRY, SUPERBLOCK.size)
        root = self._object(header, _cached_table(cache, btree, heap), "")
        if not isinstance(root, Group):
            raise UnsupportedHDF5("the root object is not a group")
        assert isinstance(root, Group)
        self.root = root
        self._found: dict[str, Group | Dataset] = {}  # by path, for find()

    def find(self, path: str) -> Group | Dataset:
        """The object at ``path`` (``layers/conv2d/vars/0``), as ``h5py.File[path]``
        finds it. Each object is read once, however many paths pass through it; do not
        mix with :meth:`walk` on one tree (the walk would reach them a second time)."""
        item: Group | Dataset = self.root
        walked = ""
        for part in path.split("/"):
            if not isinstance(item, Group):
                raise UnsupportedHDF5(f"{walked} is a dataset, not a group: h5py words the error")
            walked = f"{walked}/{part}" if walked else part
            found = self._found.get(walked)
            if found is None:
                name = part.encode()
                member = next((m for m in item.members if m[0] == name), None)
                if member is None:
                    raise UnsupportedHDF5(f"no object {walked}: h5py words the error")
                found = self._found[walked] = self._object(member[1], member[2], walked)
            item = found
        return item

    def walk(self) -> Iterator[tuple[str, Group | Dataset]]:
        """Every object below the root with its path (``layers/conv2d/vars/0``), depth
        first, each group's members in name order: ``h5py.h5o.visit``'s order."""
        prefixes = [""]
        pending = [iter(self.root.members)]
        while pending:
            member = next(pending[-1], None)
            if member is None:
                pending.pop()
                prefixes.pop()
                continue
            name, header, cached = member
            try:
                text = name.decode()
            except UnicodeDecodeError:
                raise UnsupportedHDF5(f"a link name that is not UTF-8: {name!r}") from None
            path = f"{prefixes[-1]}/{text}" if prefixes[-1] else text
            item = self._object(header, cached, path)
            yield path, item
            if isinstance(item, Group):
                prefixes.append(path)
                pending.append(iter(item.members))

    # --- objects --------------------------------------------------------------------

    def _object(self, header: int, cached: tuple[int, int] | None, path: str) -> Group | Dataset:
        """The object at ``path`` whose header is at ``header``; ``cached`` is the symbol
        table its link's entry caches, which must be the one its header holds."""
        file = self._file
        file.objects += 1
        if file.objects > MAX_OBJECTS:
            raise UnsupportedHDF5(f"more than {MAX_OBJECTS} objects")
        attributes: dict[bytes, _Attribute] = {}
        messages: dict[int, list[bytes]] = {}
        for kind, body in self._messages(header):
            if kind == ATTRIBUTE:
                name, attribute = _attribute(body)
                if name in attributes:
                    raise UnsupportedHDF5(f"attribute {name!r} twice on one object")
                attributes[name] = attribute
            elif kind == MTIME:
                if len(body) < 8 or body[0] != 1:
                    raise UnsupportedHDF5("a modification time message of another version")
            elif kind not in (NIL, CONTINUATION):
                if kind not in KNOWN_MESSAGES:
                    raise UnsupportedHDF5(f"an object at {header} with a message of type {kind}")
                messages.setdefault(kind, []).append(body)
        if EXTERNAL_FILES in messages:
            file.refuse(untrusted.stored_elsewhere(path, self._external_file(messages[EXTERNAL_FILES][0])))
        if any(tuple(body[:2]) == VIRTUAL_LAYOUT for body in messages.get(LAYOUT, [])):
            file.refuse(untrusted.virtual(path))
        if SYMBOL_TABLE in messages:
            if set(messages) != {SYMBOL_TABLE} or len(messages[SYMBOL_TABLE]) != 1:
                raise UnsupportedHDF5(f"a group at {header} with messages {sorted(messages)}")
            table = _unpack(TWO_ADDRESSES, messages[SYMBOL_TABLE][0])
            if cached is not None and cached != table:
                raise UnsupportedHDF5(f"group {header}'s cached symbol table differs")
            btree, heap = table
            return Group(file, attributes, self._members(btree, heap, path))
        if cached is not None or not {DATASPACE, DATATYPE, LAYOUT} <= set(messages):
            raise UnsupportedHDF5(f"an object at {header} with messages {sorted(messages)}, neither group nor dataset")
        return Dataset(file, attributes, messages, path)

    def _messages(self, header: int) -> list[tuple[int, bytes]]:
        """(type, body) of every message of a version 1 object header, in order."""
        file = self._file
        file.once(header)
        version, count, _, size = file.unpack(OBJECT_HEADER, header)
        if version != 1:
            raise UnsupportedHDF5(f"object header version {version} at {header}")
        chunks = [(header + OBJECT_HEADER.size, size)]
        messages: list[tuple[int, bytes]] = []
        while chunks:
            start, length = chunks.pop(0)
            data = file.read(start, length)
            cursor = 0
            while cursor < length:
                if cursor + MESSAGE_HEADER.size > length or len(messages) >= count:
                    raise UnsupportedHDF5(f"object header at {header} is damaged")
                kind, body_size, flags = MESSAGE_HEADER.unpack_from(data, cursor)
                body_start = cursor + MESSAGE_HEADER.size
                if body_start + body_size > length or body_size % 8 != 0 or flags & ~MESSAGE_CONSTANT:
                    raise UnsupportedHDF5(f"message {kind} at {header}: {body_size} bytes, flags {flags}")
                body = data[body_start:body_start + body_size] if kind != NIL else b""
                if kind == CONTINUATION:
                    address, extent = _unpack(TWO_ADDRESSES, body)
                    if extent == 0:
                        raise UnsupportedHDF5("an empty continuation block")
                    file.once(address)
                    chunks.append((address, extent))
                messages.append((kind, body))
                cursor = body_start + body_size
        if len(messages) != count:
            raise UnsupportedHDF5(f"object header at {header} lists {count} messages, holds {len(messages)}")
        return messages

    def _external_file(self, body: bytes) -> str:
        """The first file an external file list message names: where libhdf5 would read
        the dataset's first bytes from."""
        version, allocated, used, heap = _unpack(EXTERNAL_FILE_LIST, body)
        if version != 1 or not 0 < used <= allocated:
            raise UnsupportedHDF5("an external file list libhdf5 does not read")
        name_offset, _, _ = _unpack(EXTERNAL_FILE_SLOT, body, EXTERNAL_FILE_LIST.size)
        return _heap_name(self._local_heap(heap), name_offset).decode("utf-8", "backslashreplace")

    # --- groups ---------------------------------------------------------------------

    def _members(self, btree: int, heap: int, path: str) -> list[_Member]:
        """The (name, header address, cached symbol table) of the members of the group at
        ``path``, in B-tree order, which must be name order (libhdf5 looks names up by
        binary search)."""
        names = self._local_heap(heap)
        members: list[_Member] = []
        rows: dict[int, list[tuple[int, int, int]]] = {}
        self._btree_node(btree, None, names, members, rows, path)
        for (before, _, _), (after, _, _) in zip(members, members[1:]):
            if not before < after:
                raise UnsupportedHDF5("a group's members are out of name order")
        # libhdf5 also walks each level of the tree through the nodes' sibling links
        # (to size the group's metadata): they must link the nodes just read, in order.
        for row in rows.values():
            for i, (_, left, right) in enumerate(row):
                if (left != (row[i - 1][0] if i else UNDEFINED_ADDRESS)
                        or right != (row[i + 1][0] if i + 1 < len(row) else UNDEFINED_ADDRESS)):
                    raise UnsupportedHDF5(f"a B-tree node at {row[i][0]} with wrong sibling links")
        return members

    def _local_heap(self, address: int) -> bytes:
        """A local heap's data, its free list checked as libhdf5 checks it."""
        file = self._file
        file.once(address)
        signature, version, size, free, data_address = file.unpack(LOCAL_HEAP, address)
        if signature != b"HEAP" or version != 0:
            raise UnsupportedHDF5(f"no local heap at {address}")
        data = file.read(data_address, size)
        seen = set()
        while free != FREE_LIST_END:
            if free in seen or free + FREE_BLOCK.size > size:
                raise UnsupportedHDF5(f"local heap {address}: a bad free list")
            seen.add(free)
            following, block = FREE_BLOCK.unpack_from(data, free)
            if following == 0 or free + block > size:
                raise UnsupportedHDF5(f"local heap {address}: a bad free list")
            free = following
        return data

    def _btree_node(self, address: int, level: int | None, names: bytes, members: list[_Member],
                    rows: dict[int, list[tuple[int, int, int]]], path: str) -> None:
        """The symbol table nodes below a group B-tree node, in order; each child's
        names must lie between its keys, as libhdf5's lookup by name assumes. Every
        node is added to its level's row, with its sibling links."""
        file = self._file
        file.once(address)
        capacity = 2 * self._internal_k
        # libhdf5 reads the node at its full capacity.
        file.check(address, BTREE_NODE.size + (2 * capacity + 1) * ADDRESS.size)
        signature, node_type, node_level, used, left, right = file.unpack(BTREE_NODE, address)
        if signature != b"TREE" or node_type != 0 or used > capacity:
            raise UnsupportedHDF5(f"no group B-tree node at {address}")
        if (level is not None and node_level != level) or node_level >= MAX_BTREE_LEVELS:
            raise UnsupportedHDF5(f"the B-tree node at {address} is on the wrong level")
        rows.setdefault(node_level, []).append((address, left, right))
        # Keys (offsets of names in the heap) and children alternate: key, child, ..., key.
        entries = file.read(address + BTREE_NODE.size, (2 * used + 1) * ADDRESS.size)
        keys = [_heap_name(names, ADDRESS.unpack_from(entries, 16 * i)[0]) for i in range(used + 1)]
        for i in range(used):
            (child,) = ADDRESS.unpack_from(entries, 16 * i + 8)
            first = len(members)
            if node_level:
                self._btree_node(child, node_level - 1, names, members, rows, path)
            else:
                self._symbol_node(child, names, members, path)
            if len(members) == first or not keys[i] < members[first][0] or not members[-1][0] <= keys[i + 1]:
                raise UnsupportedHDF5(f"the B-tree node at {address} has keys that do not bound its children")

    def _symbol_node(self, address: int, names: bytes, members: list[_Member], path: str) -> None:
        file = self._file
        file.once(address)
        capacity = 2 * self._leaf_k
        file.check(address, SYMBOL_NODE.size + capacity * SYMBOL_ENTRY.size)  # read at full capacity
        signature, version, count = file.unpack(SYMBOL_NODE, address)
        if signature != b"SNOD" or version != 1 or count > capacity:
            raise UnsupportedHDF5(f"no symbol table node at {address}")
        for i in range(count):
            name_offset, header, cache, btree, heap = file.unpack(
                SYMBOL_ENTRY, address + SYMBOL_NODE.size + i * SYMBOL_ENTRY.size)
            name = _heap_name(names, name_offset)
            if not name or b"/" in name or name == b".":
                raise UnsupportedHDF5(f"a link named {name!r}")
            if cache == SOFT_LINK_ENTRY:  # its scratch pad starts with the offset of its target
                file.refuse(untrusted.soft_link(_joined(path, name), _soft_link_target(names, btree)))
            members.append((name, header, _cached_table(cache, btree, heap)))


def _joined(group: str, name: bytes) -> str:
    """The path of member ``name`` of the group at ``group``, for a message."""
    text = name.decode("utf-8", "backslashreplace")
    return f"{group}/{text}" if group else text


def _soft_link_target(names: bytes, scratch: int) -> str | None:
    """Where a soft link's symbol table entry points, if that can be read: the first 4
    bytes of its scratch pad are the offset of the path in the group's local heap."""
    try:
        return _heap_name(names, scratch & 0xFFFFFFFF).decode("utf-8", "backslashreplace")
    except UnsupportedHDF5:
        return None


def _cached_table(cache: int, btree: int, heap: int) -> tuple[int, int] | None:
    """The symbol table a symbol table entry caches (type 1), if any."""
    if cache not in (0, 1):
        raise UnsupportedHDF5(f"a symbol table entry of cache type {cache} (2: a soft link)")
    return (btree, heap) if cache == 1 else None


def _heap_name(names: bytes, offset: int) -> bytes:
    end = names.find(b"\0", offset)
    if offset >= len(names) or end < 0:
        raise UnsupportedHDF5(f"a name at {offset}, outside its local heap")
    return names[offset:end]


# --- messages ----------------------------------------------------------------------


def _attribute(body: bytes) -> tuple[bytes, _Attribute]:
    """An attribute message's name, datatype, dataspace and raw value."""
    if not body:
        raise UnsupportedHDF5("an empty attribute message")
    version = body[0]
    if version == 1:
        _, name_size, type_size, space_size = _unpack(ATTRIBUTE_V1, body)
        cursor, multiple = ATTRIBUTE_V1.size, 8
    elif version in (2, 3):
        layout = ATTRIBUTE_V3 if version == 3 else ATTRIBUTE_V2
        fields = _unpack(layout, body)
        flags, name_size, type_size, space_size = fields[1:5]
        if flags != 0:
            raise UnsupportedHDF5(f"attribute message flags {flags}: a shared datatype or dataspace")
        if version == 3 and fields[5] not in (ASCII, UTF8):
            raise UnsupportedHDF5("an attribute name in an unknown encoding")
        cursor, multiple = layout.size, 1
    else:
        raise UnsupportedHDF5(f"attribute message version {version}")
    sections = []
    for size in (name_size, type_size, space_size):
        if cursor + size > len(body):
            raise UnsupportedHDF5("an attribute message shorter than its fields")
        sections.append(body[cursor:cursor + size])
        cursor += _padded(size, multiple)
    name, datatype, dataspace = sections
    if not name.endswith(b"\0") or b"\0" in name[:-1]:
        raise UnsupportedHDF5("an attribute name that is not one string")
    data_size = _element_count(dataspace) * _datatype_size(datatype)
    if cursor + data_size > len(body):
        raise UnsupportedHDF5(f"attribute {name[:-1]!r} is shorter than its value")
    return name[:-1], _Attribute(datatype, dataspace, body[cursor:cursor + data_size])


def _shape(dataspace: bytes) -> tuple[int, ...]:
    """A dataspace's dimensions, checked as libhdf5 checks them."""
    if not dataspace:
        raise UnsupportedHDF5("an empty dataspace message")
    version = dataspace[0]
    if version == 1:
        _, rank, flags = _unpack(DATASPACE_V1, dataspace)
        start = DATASPACE_V1.size
    elif version == 2:
        _, rank, flags, kind = _unpack(DATASPACE_V2, dataspace)
        start = DATASPACE_V2.size
        if kind not in (SCALAR, SIMPLE) or (kind == SCALAR) != (rank == 0):
            raise UnsupportedHDF5(f"a dataspace of type {kind} (2: null)")
    else:
        raise UnsupportedHDF5(f"dataspace message version {version}")
    if rank > MAX_RANK or bool(flags & ~1):
        raise UnsupportedHDF5(f"a dataspace of rank {rank}, flags {flags}")  # 1: maximum dimensions
    count = rank * (2 if flags & 1 else 1)
    if start + 8 * count > len(dataspace):
        raise UnsupportedHDF5("a dataspace message shorter than its dimensions")
    values = struct.unpack_from(f"<{count}Q", dataspace, start)
    shape, maximum = values[:rank], values[rank:]
    if any(m != UNDEFINED_ADDRESS and d > m for d, m in zip(shape, maximum)):
        raise UnsupportedHDF5("a dimension larger than its maximum")
    return shape


def _element_count(dataspace: bytes) -> int:
    return math.prod(_shape(dataspace))


def _check_storage(layout: bytes, size: int, end: int) -> None:
    """A layout message that stores a dataset's ``size`` bytes inside the file, checked
    as ``H5Dopen`` checks it."""
    if len(layout) < 2 or layout[0] != 3:
        raise UnsupportedHDF5("a data layout message of another version")
    if layout[1] == CONTIGUOUS:
        address, stored = _unpack(TWO_ADDRESSES, layout, 2)
        if stored != size:
            raise UnsupportedHDF5(f"a dataset of {size} bytes stored in {stored}")
        if address != UNDEFINED_ADDRESS and address + stored > end:
            raise UnsupportedHDF5("a dataset whose bytes lie past the end of the file")
    elif layout[1] == COMPACT:
        (stored,) = _unpack(COMPACT_SIZE, layout, 2)
        if stored != size or 4 + stored > len(layout):
            raise UnsupportedHDF5(f"a compact dataset of {size} bytes stored in {stored}")
    else:
        raise UnsupportedHDF5(f"data layout class {layout[1]} (2: chunked)")


def _check_fill_value(body: bytes) -> None:
    """A fill value message of a version libhdf5 reads, whose value fits in it."""
    if not body or body[0] not in (1, 2, 3):
        raise UnsupportedHDF5("a fill value message of another version")
    if body[0] == 3:
        defined, cursor = bool(body[1:2] and body[1] & 0x20), 2
    else:
        defined, cursor = body[0] == 1 or body[3:4] == b"\x01", 4
    if defined:
        (size,) = _unpack(FILL_VALUE_SIZE, body, cursor)
        if cursor + 4 + size > len(body):
            raise UnsupportedHDF5("a fill value message shorter than its value")


def _datatype_header(datatype: bytes) -> tuple[int, int, int, int, int]:
    """(class, bit field bytes 0-2, size) of a version 1 datatype."""
    kind, bits0, bits1, bits2, size = _unpack(DATATYPE_HEADER, datatype)
    if kind >> 4 != 1:
        raise UnsupportedHDF5(f"datatype message version {kind >> 4}")
    return kind & 0x0F, bits0, bits1, bits2, size


def _datatype_size(datatype: bytes) -> int:
    return _datatype_header(datatype)[4]


def _check_datatype(datatype: bytes) -> None:
    """Refuse every datatype but the numbers and strings this reader reads exactly."""
    kind, bits0, bits1, _, size = _datatype_header(datatype)
    if kind == STRING:
        if bits0 & 0x0F not in (NULL_TERMINATED, NULL_PADDED) or bits0 >> 4 not in (ASCII, UTF8) or size == 0:
            raise UnsupportedHDF5("a string type of another padding or character set")
    elif kind == VARIABLE_LENGTH:
        if (bits0 & 0x0F != 1 or bits0 >> 4 not in (NULL_TERMINATED, NULL_PADDED)
                or bits1 & 0x0F not in (ASCII, UTF8) or size != VLEN_REFERENCE.size):
            raise UnsupportedHDF5("a variable-length type that is not a string")
        if _integer(datatype[DATATYPE_HEADER.size:]) not in ((1, False), (1, True)):
            raise UnsupportedHDF5("a variable-length string of other characters than bytes")
    else:
        _numeric_dtype(datatype)


def _integer(datatype: bytes) -> tuple[int, bool] | None:
    """(size, signed) of a little-endian integer that uses all its bits, else None."""
    kind, bits0, bits1, bits2, size = _datatype_header(datatype)
    if kind != FIXED_POINT:
        return None
    offset, precision = _unpack(INTEGER_PROPERTIES, datatype, DATATYPE_HEADER.size)
    if bits0 & ~0x08 or bits1 or bits2 or offset != 0 or precision != 8 * size or size not in (1, 2, 4, 8):
        return None  # big-endian, padded or partial-precision integers
    return size, bool(bits0 & 0x08)


def _numeric_dtype(datatype: bytes) -> str:
    """numpy's name for the dtype h5py maps ``datatype`` to, for the types Keras stores."""
    kind, bits0, bits1, bits2, size = _datatype_header(datatype)
    integer = _integer(datatype)
    if integer is not None:
        width, signed = integer
        return f"{'int' if signed else 'uint'}{8 * width}"
    if kind == FLOAT and size in IEEE_FLOATS:
        offset, precision, *layout = _unpack(FLOAT_PROPERTIES, datatype, DATATYPE_HEADER.size)
        if ((bits0, bits2) == (IMPLIED_MANTISSA_BIT, 0) and offset == 0 and precision == 8 * size
                and (bits1, *layout) == IEEE_FLOATS[size]):
            return f"float{8 * size}"
    if kind == OPAQUE and bits0 == bits1 == bits2 == 0 and size > 0:  # no tag: numpy's void
        return f"void{8 * size}"
    if kind == ENUM and _enum_members(datatype) == H5PY_BOOLEAN:
        return "bool"
    raise UnsupportedHDF5(f"a datatype of class {kind} this reader does not map ({datatype[:8].hex()})")


def _enum_members(datatype: bytes) -> dict[bytes, int] | None:
    """An enum's members by name, if its base is an integer type this reader knows."""
    _, bits0, bits1, _, _ = _datatype_header(datatype)
    count = bits0 | bits1 << 8
    base = datatype[DATATYPE_HEADER.size:]
    integer = _integer(base)
    if integer is None:
        return None
    width, signed = integer
    cursor = DATATYPE_HEADER.size + INTEGER_PROPERTIES.size
    names = []
    for _ in range(count):  # each name null-terminated, padded to 8 bytes
        end = base.find(b"\0", cursor)
        if end < 0:
            raise UnsupportedHDF5("an enum member name without its end")
        names.append(base[cursor:end])
        cursor += _padded(end + 1 - cursor)
    values = base[cursor:cursor + count * width]
    if len(values) != count * width:
        raise UnsupportedHDF5("an enum shorter than its values")
    members = {name: int.from_bytes(values[i * width:(i + 1) * width], "little", signed=signed)
               for i, name in enumerate(names)}
    return members if len(members) == count else None


def _decode_text(file: _File, datatype: bytes, data: bytes) -> str:
    """The first string of an attribute's value, as h5py reads it and ``attr_text``
    turns it into text."""
    kind, bits0, bits1, _, size = _datatype_header(datatype)
    if kind == STRING:
        raw = data[:size]
        if bits0 & 0x0F == NULL_TERMINATED:
            if b"\0" not in raw:
                raise UnsupportedHDF5("a null-terminated string without its null")
            raw = raw[:raw.index(b"\0")]
        raw = raw.rstrip(b"\0")  # numpy's fixed-length bytes drop trailing nulls
    elif kind == VARIABLE_LENGTH:
        length, collection, index = _unpack(VLEN_REFERENCE, data)
        raw = file.heap_object(collection, index) if length else b""
        if len(raw) != length:
            raise UnsupportedHDF5("a string of another length than its global heap object")
    else:
        raise UnsupportedHDF5(f"an attribute of datatype class {kind}, not a string")
    # h5py reads strings up to a null; one inside would be cut there.
    if b"\0" in raw:
        raise UnsupportedHDF5("a string with a null inside")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedHDF5("a string attribute that is not UTF-8") from None
