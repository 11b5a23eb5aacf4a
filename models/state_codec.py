"""One encoding for the state of every per-key estimator: strict JSON, bit-identical round trips.

An estimator opts in with :func:`persistent` and lists what it *learns* in ``__state__`` (a tuple
of attribute names). Its constructor parameters are read back from attributes of the same name
(river's convention), so decoding calls the constructor with the stored parameters, then sets the
learned attributes. Derived attributes (a smoothing weight computed from a window, a sorted copy)
are never stored: the constructor recomputes them, so they cannot disagree with the parameters.

Format: ``{"$type": "ResidualScorer", <parameter>: ..., <state attribute>: ...}``, values
encoded recursively:

* ``None``, ``bool``, ``int``, ``str`` as themselves; an ``Enum`` as its value;
* a finite ``float`` as itself, a non-finite one as ``{"$float": "nan" | "inf" | "-inf"}``, so
  the text is strict JSON (no ``NaN`` ever reaches Redis) and still round-trips;
* ``list`` as a list, ``tuple`` as ``{"$tuple": [...]}``, ``deque`` as
  ``{"$deque": [...], "maxlen": n | null}``, ``dict`` (string keys) as itself;
* a numpy array as ``{"$ndarray": [flat values], "dtype": "float32", "shape": [rows, cols]}``;
* a nested persistent object as its own ``{"$type": ...}`` dict.

Floats survive exactly: orjson writes the shortest text that reads back as the same double, and
float32 values are exact doubles. Decoding resolves ``$type`` only among registered classes (never
an import path from stored data), rejects unknown fields and missing state, and checks every stored
array against the shape and dtype the constructor builds. A parameter missing from stored data
takes its constructor default, so adding one with a default keeps older state loadable.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, ClassVar, Protocol, TypeVar, cast

import numpy as np
import orjson

__all__ = ["Persistent", "clone", "decode", "dumps", "encode", "get_params", "loads", "persistent"]

T = TypeVar("T")
C = TypeVar("C", bound=type)

_TYPE = "$type"
_REGISTRY: dict[str, type] = {}
_PARAMS: dict[type, tuple[str, ...]] = {}
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_ARRAY_KINDS = "biuf"  # bool, signed and unsigned integers, floats
_NUMBERS = {float, int}
_PLAIN = {int, str, bool, type(None)}
_SCALARS = {float, *_PLAIN}


class Persistent(Protocol):
    """What :func:`persistent` expects of a class: the names of its learned attributes."""

    __state__: ClassVar[tuple[str, ...]]


def persistent(cls: C) -> C:
    """Class decorator: register ``cls`` with the codec (by class name, which must be unique)."""
    state = getattr(cls, "__state__", None)
    if not isinstance(state, tuple) or not all(isinstance(s, str) for s in state):
        raise TypeError(f"{cls.__name__}.__state__ must be a tuple of attribute names")
    known = _REGISTRY.get(cls.__name__)
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(f"two persistent classes are named {cls.__name__!r}")
    params = tuple(
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    overlap = set(params) & set(state)
    if overlap:
        raise TypeError(f"{cls.__name__}: {sorted(overlap)} are both parameters and state")
    _REGISTRY[cls.__name__] = cls
    _PARAMS[cls] = params
    return cls


def get_params(obj: object) -> dict[str, Any]:
    """The constructor parameters of a persistent object, read from its attributes."""
    return {name: getattr(obj, name) for name in _params_of(type(obj))}


def encode(obj: object) -> dict[str, Any]:
    """A persistent object → a JSON-able dict (see the module docstring for the format)."""
    cls = type(obj)
    params = _params_of(cls)
    out: dict[str, Any] = {_TYPE: cls.__name__}
    for name in params:
        out[name] = _encode_value(getattr(obj, name))
    for name in cast(Persistent, cls).__state__:
        out[name] = _encode_value(getattr(obj, name))
    return out


def decode(data: Mapping[str, Any], cls: type[T]) -> T:
    """The object :func:`encode` made ``data`` from; ``TypeError`` if it is not a ``cls``."""
    obj = _decode_object(data)
    if not isinstance(obj, cls):
        raise TypeError(f"stored state is a {type(obj).__name__}, expected {cls.__name__}")
    return obj


def dumps(obj: object) -> bytes:
    """:func:`encode` then orjson: the bytes the state store writes."""
    return orjson.dumps(encode(obj))


def loads(data: bytes | str, cls: type[T]) -> T:
    """Inverse of :func:`dumps`."""
    return decode(orjson.loads(data), cls)


def clone(obj: T) -> T:
    """A fresh object with ``obj``'s parameters and nothing learned (nested ones cloned too)."""
    cls = type(obj)
    params = {name: _clone_value(value) for name, value in get_params(obj).items()}
    return cls(**params)


# ---- internals ---------------------------------------------------------------------------
def _params_of(cls: type) -> tuple[str, ...]:
    try:
        return _PARAMS[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not registered with @persistent") from None


def _clone_value(value: Any) -> Any:
    if type(value) in _PARAMS:
        return clone(value)
    if isinstance(value, list):
        return [_clone_value(v) for v in value]
    return copy.deepcopy(value)


def _encode_float(value: float) -> float | dict[str, str]:
    if math.isfinite(value):
        return float(value)
    return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


def _encode_value(value: Any) -> Any:
    kind = type(value)  # exact types first: this runs for every attribute of every key's state
    if kind is float:
        return value if math.isfinite(value) else _encode_float(value)
    if kind in _PLAIN:
        return value
    if kind in _PARAMS:
        return encode(value)
    if kind is list:
        return _encode_items(value)
    if isinstance(value, Enum):
        return _encode_value(value.value)
    if isinstance(value, bool | str):
        return bool(value) if isinstance(value, bool) else str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _encode_float(float(value))
    if isinstance(value, list):
        return _encode_items(value)
    if isinstance(value, tuple):
        return {"$tuple": _encode_items(value)}
    if isinstance(value, deque):
        return {"$deque": _encode_items(value), "maxlen": value.maxlen}
    if isinstance(value, np.ndarray | np.generic):
        return _encode_array(np.asarray(value))
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or key.startswith("$"):
                raise TypeError(f"state dict keys must be strings not starting with $: {key!r}")
        return {k: _encode_value(v) for k, v in value.items()}
    raise TypeError(f"cannot encode a {type(value).__name__} as state")


def _encode_items(values: Iterable[Any]) -> list[Any]:
    """A sequence's items; a run of finite floats and ints (the usual state) is copied as is."""
    items = list(values)
    if set(map(type, items)) <= _NUMBERS:
        try:
            if math.isfinite(math.fsum(items)):
                return items
        except (OverflowError, ValueError):  # huge but finite items, or inf - inf: item by item
            pass
    return [_encode_value(v) for v in items]


def _encode_array(array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"cannot encode an array of dtype {array.dtype} as state")
    flat = array.ravel().tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        flat = [_encode_float(v) for v in flat]
    return {"$ndarray": flat, "dtype": _dtype_name(array.dtype), "shape": list(array.shape)}


@functools.cache
def _dtype_name(dtype: np.dtype[Any]) -> str:
    return dtype.name


def _decode_array(data: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(data["dtype"])
    if dtype.kind not in _ARRAY_KINDS:
        raise ValueError(f"stored array has unsupported dtype {dtype}")
    flat = _decode_list(data["$ndarray"])
    return np.asarray(flat, dtype=dtype).reshape([int(n) for n in data["shape"]])


_TAGGED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "$float": lambda d: _NON_FINITE[d["$float"]],
    "$tuple": lambda d: tuple(_decode_list(d["$tuple"])),
    "$deque": lambda d: deque(_decode_list(d["$deque"]), maxlen=d["maxlen"]),
    "$ndarray": _decode_array,
    _TYPE: lambda d: _decode_object(d),
}


def _decode_list(values: list[Any]) -> list[Any]:
    if set(map(type, values)) <= _SCALARS:  # the usual state: nothing tagged inside
        return values
    return [_decode_value(v) for v in values]


def _decode_value(value: Any) -> Any:
    if isinstance(value, list):
        return _decode_list(value)
    if not isinstance(value, dict):
        return value
    for tag, decoder in _TAGGED.items():
        if tag in value:
            return decoder(value)
    if any(key.startswith("$") for key in value):
        raise ValueError(f"unknown tag in stored state: {sorted(value)}")
    return {k: _decode_value(v) for k, v in value.items()}


def _decode_object(data: Mapping[str, Any]) -> Any:
    name = data.get(_TYPE) if isinstance(data, Mapping) else None
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"stored state has no known $type (got {name!r})")
    params = _PARAMS[cls]
    state = cast(Persistent, cls).__state__
    unknown = set(data) - {_TYPE, *params, *state}
    missing = set(state) - set(data)
    if unknown or missing:
        raise ValueError(
            f"stored {cls.__name__} does not match the class:"
            f" unknown fields {sorted(unknown)}, missing {sorted(missing)}"
        )
    obj = cls(**{name: _decode_value(data[name]) for name in params if name in data})
    for name in state:
        value = _decode_value(data[name])
        fresh = getattr(obj, name)
        if isinstance(fresh, np.ndarray) and (
            not isinstance(value, np.ndarray)
            or value.shape != fresh.shape
            or value.dtype != fresh.dtype
        ):
            raise ValueError(f"stored {cls.__name__}.{name} does not fit the parameters")
        setattr(obj, name, value)
    return obj
