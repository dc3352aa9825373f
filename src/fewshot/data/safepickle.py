"""Reading the pickled arrays that mini-ImageNet and tiered-ImageNet mirrors distribute,
without running any code: fewshot's one exception to "no pickle".

The mirrors ship ``mini-imagenet-cache-{train,val,test}.pkl`` (a dict of a uint8 image
array and a dict of index lists) and tiered-ImageNet's ``*_images_png.pkl`` (a list of
uint8 arrays of PNG bytes) and ``*_labels.pkl`` (a dict of int arrays and lists of
strings). ``pickle.load`` of such a file can run any code the file names, and even a
restricted ``pickle.Unpickler`` (one whose ``find_class`` allows only numpy's
reconstruction globals) is not enough: CPython's C unpickler allocates its memo by
index, so a 20-byte pickle with ``LONG_BINPUT 2**31`` asks for 16 GB, and it
allocates a ``BYTEARRAY8`` of the claimed length before reading it.

So this module does not use :mod:`pickle` at all. :func:`read_pickle` interprets the
opcodes itself, over a read-only memory map of the file, and knows only the subset such
files use (pickle protocols 2 to 5, what Python 2 and 3 write for them): plain data (``None``, booleans, ints, floats, strings, bytes, lists, tuples,
dicts), the memo (a dict, so an index costs nothing), and numpy arrays. It resolves
exactly these globals, each to a stand-in of its own that builds nothing but a plain
numeric array or bytes:

* ``numpy.core.multiarray._reconstruct`` (also ``numpy._core...``), ``numpy.ndarray``
  and ``numpy.dtype``, how numpy pickles an array with protocols 2 to 4;
* ``numpy.core.numeric._frombuffer`` (also ``numpy._core...``), with protocol 5;
* ``numpy.core.multiarray.scalar`` (also ``numpy._core...``), a numpy number (an index
  kept as ``np.int64``);
* ``_codecs.encode``, how Python 3 pickles bytes with protocol 2.

Any other global, or any opcode outside the subset (``PERSID``, ``INST``, ``OBJ``,
``NEWOBJ``, ``EXT1``, ...), is refused in one line naming it, before anything is called:
nothing read from the file can name code to run. Every length is checked against the
bytes left in the file before anything is allocated; array data larger than
:data:`COPY_LIMIT` is not copied but viewed in place in the memory map, so reading an
800 MB cache costs almost no memory; integers are at most 255 bytes long and nesting is
at most :data:`MAX_DEPTH` deep. A damaged or truncated file is a
:class:`~fewshot.errors.DataError` saying where it stopped.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from ..errors import DataError

#: Byte strings longer than this are views into the memory map, not copies: array data
#: (tiered-ImageNet's 448,695 PNGs of 10-20 kB each, mini-ImageNet's 800 MB array) is
#: never copied; dict keys and names, always short, are bytes.
COPY_LIMIT = 4096
#: The deepest nesting of containers accepted.
MAX_DEPTH = 64
#: Array dtypes a dataset pickle may hold (no objects, no records).
DTYPES = {"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"}

_REFUSE = "refusing to read it: use the file as distributed, or convert it to .npz"


class _Global:
    """One allowed global: a name the reader calls itself, never a Python object from numpy."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_RECONSTRUCT, _NDARRAY, _DTYPE, _FROMBUFFER, _SCALAR, _ENCODE = (_Global(n) for n in (
    "numpy _reconstruct", "numpy.ndarray", "numpy.dtype", "numpy _frombuffer", "numpy scalar", "_codecs.encode"))
GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT, ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DTYPE,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER, ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.multiarray", "scalar"): _SCALAR, ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("_codecs", "encode"): _ENCODE,
}


class _ArrayStub:
    """An array announced by ``_reconstruct``; its contents come with the ``BUILD`` that follows."""
    array: np.ndarray | None = None


class _DtypeStub:
    """A dtype announced by ``numpy.dtype(spec)``; its byte order comes with ``BUILD``."""

    def __init__(self, spec: str):
        self.spec, self.dtype = spec, np.dtype(spec)


class _Mark:
    pass


_MARK = _Mark()


def read_pickle(path: str | Path) -> object:
    """The plain data and numpy arrays pickled in ``path``, read without running code
    (see the module docstring). Large arrays are read-only views of the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if not path.stat().st_size:
                raise DataError(f"{path} is empty; {_REFUSE}")
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e}); check the file and its permissions") from None
    return _Reader(memoryview(buffer), str(path)).load()


def loads(data: bytes, label: str = "pickle") -> object:
    """:func:`read_pickle` of bytes in memory."""
    return _Reader(memoryview(data), label).load()


class _Reader:
    def __init__(self, data: memoryview, label: str):
        self.data, self.label, self.pos = data, label, 0
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}

    def fail(self, what: str) -> DataError:
        return DataError(f"{self.label}: {what} (at byte {self.pos:,}); {_REFUSE}")

    def take(self, n: int) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            raise self.fail(f"ends before the {n:,} bytes it announces: it is truncated or damaged")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def number(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def line(self) -> str:
        end = bytes(self.data[self.pos:self.pos + 256]).find(b"\n")
        if end < 0:
            raise self.fail("has a global name that does not end within 256 bytes")
        return self.take(end + 1)[:-1].tobytes().decode("ascii", errors="replace")

    def blob(self, n: int):
        chunk = self.take(n)
        return chunk if n > COPY_LIMIT else chunk.tobytes()

    def text(self, n: int) -> str:
        try:
            return str(self.take(n), "utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            raise self.fail("holds a string that is not UTF-8") from None

    def pop_mark(self) -> list:
        if not self.marks:
            raise self.fail("closes a MARK it never opened")
        start = self.marks.pop()
        items = self.stack[start + 1:]
        del self.stack[start:]
        return items

    def pop(self):
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("pops from an empty stack")
        return self.stack.pop()

    def top(self):
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("uses an empty stack")
        return self.stack[-1]

    def load(self) -> object:
        try:
            while True:
                if self.pos >= len(self.data):
                    raise self.fail("ends before its STOP opcode: it is truncated")
                op = self.data[self.pos]
                self.pos += 1
                if op == 0x2E:  # STOP
                    result = self.pop()
                    return _resolve(result, self, 0)
                handler = _OPCODES.get(op)
                if handler is None:
                    raise self.fail(f"uses pickle opcode {bytes([op])!r}, which a dataset file never needs")
                handler(self)
        except (struct.error, ValueError, TypeError, OverflowError) as e:
            raise self.fail(f"is not a readable pickle ({e})") from None


def _resolve(obj, reader: _Reader, depth: int):
    """``obj`` with every stand-in replaced by what it built."""
    if depth > MAX_DEPTH:
        raise reader.fail(f"nests containers more than {MAX_DEPTH} deep")
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise reader.fail("announces an array that it never fills")
        return obj.array
    if isinstance(obj, (_DtypeStub, _Global)):
        raise reader.fail(f"holds {obj!r} itself rather than data")
    if isinstance(obj, list):
        return [_resolve(v, reader, depth + 1) for v in obj] if any(not _plain(v) for v in obj) else obj
    if isinstance(obj, tuple):
        return tuple(_resolve(v, reader, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return {_resolve(k, reader, depth + 1): _resolve(v, reader, depth + 1) for k, v in obj.items()}
    return obj


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bytes, np.ndarray)) or value is None


def _call(reader: _Reader, func, args):
    """``REDUCE``: one of the stand-ins, on checked arguments."""
    if not isinstance(args, tuple):
        raise reader.fail("calls with arguments that are not a tuple")
    if func is _RECONSTRUCT:
        if len(args) != 3 or args[0] is not _NDARRAY:
            raise reader.fail("rebuilds an array of a type other than numpy.ndarray")
        return _ArrayStub()
    if func is _DTYPE:
        spec = args[0].decode("ascii", "replace") if args and isinstance(args[0], bytes) else (args[0] if args else None)
        if not isinstance(spec, str) or spec.lstrip("<>|=") not in DTYPES:
            raise reader.fail(f"asks for array dtype {spec!r}; dataset files hold plain numbers only")
        return _DtypeStub(spec)
    if func is _FROMBUFFER:
        if len(args) != 4:
            raise reader.fail("rebuilds an array with the wrong number of arguments")
        buffer, dtype, shape, order = args
        return _array(reader, shape, dtype, order == "F", buffer)
    if func is _SCALAR:
        if len(args) != 2:
            raise reader.fail("rebuilds a numpy number with the wrong number of arguments")
        return _array(reader, (), args[0], False, args[1])[()]
    if func is _ENCODE:
        if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
            raise reader.fail("encodes bytes other than the way Python pickles them")
        return args[0].encode("latin-1")
    raise reader.fail(f"calls {func!r}, which is not one of the names it may use")


def _dtype(reader: _Reader, value) -> np.dtype:
    if isinstance(value, _DtypeStub):
        return value.dtype
    raise reader.fail("gives an array a dtype that is not a plain numpy dtype")


def _array(reader: _Reader, shape, dtype, fortran: bool, raw) -> np.ndarray:
    dtype = _dtype(reader, dtype)
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and 0 <= d for d in shape) or len(shape) > 32:
        raise reader.fail(f"gives an array the shape {shape!r}")
    if isinstance(raw, str):  # protocol 0/1 arrays written by Python 2, read as latin-1
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, memoryview)):
        raise reader.fail("gives array data that is not bytes")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(raw):
        raise reader.fail(f"gives {len(raw):,} bytes for an array of shape {shape} and dtype {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _build(reader: _Reader) -> None:
    state = reader.pop()
    obj = reader.top()
    if isinstance(obj, _ArrayStub) and obj.array is None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise reader.fail("fills an array with a state numpy never writes")
        _, shape, dtype, fortran, raw = state
        obj.array = _array(reader, shape, dtype, bool(fortran), raw)
    elif isinstance(obj, _DtypeStub):
        if not isinstance(state, tuple) or len(state) not in (8, 9) or any(v is not None for v in state[2:5]):
            raise reader.fail("gives a dtype fields or sub-arrays; dataset files hold plain numbers only")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise reader.fail(f"gives a dtype the byte order {order!r}")
        obj.dtype = np.dtype(obj.spec.lstrip("<>|=")).newbyteorder(order if order != "|" else "=")
    else:
        raise reader.fail(f"sets the state of a {type(obj).__name__}, which dataset files never do")


def _global(reader: _Reader, module: str, name: str) -> None:
    found = GLOBALS.get((module, name))
    if found is None:
        raise reader.fail(f"refers to {module}.{name}, which a dataset pickle never names")
    reader.stack.append(found)


def _stack_global(r: _Reader) -> None:
    name, module = r.pop(), r.pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise r.fail("names a global with something other than strings")
    _global(r, module, name)


def _setitems(r: _Reader) -> None:
    items = r.pop_mark()
    target = r.top()
    if not isinstance(target, dict) or len(items) % 2:
        raise r.fail("sets items on something other than a dict")
    for k, v in zip(items[::2], items[1::2]):
        _setitem_into(r, target, k, v)


def _setitem_into(r: _Reader, target, key, value) -> None:
    try:
        target[key] = value
    except TypeError:
        raise r.fail(f"uses an unhashable {type(key).__name__} as a dict key") from None


def _setitem(r: _Reader) -> None:
    value, key = r.pop(), r.pop()
    target = r.top()
    if not isinstance(target, dict):
        raise r.fail("sets an item on something other than a dict")
    _setitem_into(r, target, key, value)


def _appends(r: _Reader) -> None:
    items = r.pop_mark()
    target = r.top()
    if not isinstance(target, list):
        raise r.fail("appends to something other than a list")
    target.extend(items)


def _append(r: _Reader) -> None:
    value = r.pop()
    target = r.top()
    if not isinstance(target, list):
        raise r.fail("appends to something other than a list")
    target.append(value)


def _get(r: _Reader, index: int) -> None:
    if index not in r.memo:
        raise r.fail(f"refers to memo entry {index}, which it never stored")
    r.stack.append(r.memo[index])


def _long(r: _Reader, n: int) -> None:
    if n > 255:
        raise r.fail(f"holds a {n:,}-byte integer")
    r.stack.append(int.from_bytes(r.take(n), "little", signed=True))


def _mark(r: _Reader) -> None:
    r.marks.append(len(r.stack))
    r.stack.append(_MARK)


def _dict_of(r: _Reader) -> None:
    items = r.pop_mark()
    d: dict = {}
    for k, v in zip(items[::2], items[1::2]):
        _setitem_into(r, d, k, v)
    r.stack.append(d)


def _pop_mark_op(r: _Reader) -> None:
    r.pop_mark()


def _reduce(r: _Reader) -> None:
    args, func = r.pop(), r.pop()
    r.stack.append(_call(r, func, args))


def _tuple_n(n: int):
    def op(r: _Reader) -> None:
        items = [r.pop() for _ in range(n)][::-1]
        r.stack.append(tuple(items))
    return op


_OPCODES = {
    0x80: lambda r: r.take(1),  # PROTO
    0x95: lambda r: r.take(8),  # FRAME: a read-ahead hint, nothing to do
    ord("("): _mark,
    ord("0"): lambda r: r.pop(),
    ord("1"): _pop_mark_op,
    ord("2"): lambda r: r.stack.append(r.top()),
    ord("N"): lambda r: r.stack.append(None),
    0x88: lambda r: r.stack.append(True),
    0x89: lambda r: r.stack.append(False),
    ord("J"): lambda r: r.stack.append(r.number("<i")),
    ord("K"): lambda r: r.stack.append(r.number("<B")),
    ord("M"): lambda r: r.stack.append(r.number("<H")),
    0x8A: lambda r: _long(r, r.number("<B")),
    0x8B: lambda r: _long(r, r.number("<I")),
    ord("G"): lambda r: r.stack.append(r.number(">d")),
    ord("X"): lambda r: r.stack.append(r.text(r.number("<I"))),
    0x8C: lambda r: r.stack.append(r.text(r.number("<B"))),
    0x8D: lambda r: r.stack.append(r.text(r.number("<Q"))),
    ord("T"): lambda r: r.stack.append(r.blob(r.number("<i"))),  # Python 2 str, kept as bytes
    ord("U"): lambda r: r.stack.append(r.blob(r.number("<B"))),
    ord("B"): lambda r: r.stack.append(r.blob(r.number("<I"))),
    ord("C"): lambda r: r.stack.append(r.blob(r.number("<B"))),
    0x8E: lambda r: r.stack.append(r.blob(r.number("<Q"))),
    0x96: lambda r: r.stack.append(r.blob(r.number("<Q"))),  # BYTEARRAY8, read as bytes
    ord("]"): lambda r: r.stack.append([]),
    ord("}"): lambda r: r.stack.append({}),
    ord(")"): lambda r: r.stack.append(()),
    ord("l"): lambda r: r.stack.append(r.pop_mark()),
    ord("t"): lambda r: r.stack.append(tuple(r.pop_mark())),
    ord("d"): _dict_of,
    0x85: _tuple_n(1), 0x86: _tuple_n(2), 0x87: _tuple_n(3),
    ord("a"): _append,
    ord("e"): _appends,
    ord("s"): _setitem,
    ord("u"): _setitems,
    ord("q"): lambda r: r.memo.__setitem__(r.number("<B"), r.top()),
    ord("r"): lambda r: r.memo.__setitem__(r.number("<I"), r.top()),
    0x94: lambda r: r.memo.__setitem__(len(r.memo), r.top()),
    ord("h"): lambda r: _get(r, r.number("<B")),
    ord("j"): lambda r: _get(r, r.number("<I")),
    ord("c"): lambda r: _global(r, r.line(), r.line()),
    0x93: _stack_global,
    ord("R"): _reduce,
    ord("b"): _build,
}


__all__ = ["COPY_LIMIT", "DTYPES", "GLOBALS", "MAX_DEPTH", "loads", "read_pickle"]
