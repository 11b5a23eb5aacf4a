"""The "Targets" table every benchmark prints: measured value, goal, met or not.

A benchmark's ``targets()`` gives ``{key: {"value", "target", "met"}}``; ``labels`` gives, per
key, the row's label and the format strings of the measured value and of the goal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table


def target_table(
    targets: Mapping[str, Mapping[str, Any]], labels: Mapping[str, tuple[str, str, str]]
) -> Table:
    table = Table(title="Targets")
    for column in ("target", "measured", "goal", "met"):
        table.add_column(column)
    for key, outcome in targets.items():
        label, measured, goal = labels[key]
        table.add_row(
            label,
            measured.format(outcome["value"]),
            goal.format(outcome["target"]),
            "yes" if outcome["met"] else "NO",
        )
    return table
