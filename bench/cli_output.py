"""How every `vigil eval …` and `vigil tune …` command ends: human lines, then one JSON line as
the last line of stdout (with ``--json`` stdout is only that line), or ``error: <reason>`` and
exit code 2 for bad input."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import typer


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(lines: Sequence[str], payload: Mapping[str, Any], json_only: bool) -> None:
    stream = sys.stderr if json_only else sys.stdout
    for line in lines:
        print(line, file=stream)
    stream.flush()
    print(json.dumps(json_safe(dict(payload)), allow_nan=False), flush=True)


def fail(reason: object) -> typer.Exit:
    """``error: <reason>`` on stderr; raise the returned exit (code 2)."""
    typer.secho(f"error: {reason}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Bad input ends the command with its reason and exit code 2, not a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError, TypeError) as exc:
        raise fail(exc) from None
