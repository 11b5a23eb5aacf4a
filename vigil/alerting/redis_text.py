"""Redis answers bytes or str depending on the client's ``decode_responses``; Vigil wants str."""

from __future__ import annotations


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
