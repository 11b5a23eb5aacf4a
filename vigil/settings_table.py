"""Every setting as a Markdown table row (for README.md and `vigil settings --table`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vigil.settings import ENV_PREFIX, VigilSettings

NESTED_AS_JSON = {"groups", "webhooks", "alerting"}  # lists and rule sets: one JSON variable


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _shown(value: Any) -> str:
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"))[:80] + "…"
    if isinstance(value, list):
        text = json.dumps(
            [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        )
        return text if len(text) < 60 else text[:57] + "…"
    return "unset" if value is None else f"`{value}`"


def rows(
    model: type[BaseModel] = VigilSettings, prefix: str = ENV_PREFIX
) -> Iterator[tuple[str, str, str]]:
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        annotation = field.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and name not in NESTED_AS_JSON:
            yield from rows(annotation, variable + "__")  # type: ignore[arg-type]
            continue
        description = (field.description or (annotation.__doc__ if nested else "") or "").strip()
        yield variable, _shown(_default(field)), " ".join(description.split())


def markdown_table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{v}` | {d} | {m} |" for v, d, m in rows()]
    return "\n".join(lines)
