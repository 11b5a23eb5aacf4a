"""Readers that turn CSV and Parquet tables into readings, row by row, with their line numbers.

Three shapes are handled by one column mapping: market bars (``date,open,...,Name``), NAB series
(``timestamp,value``) and sensor tables (a timestamp and several numeric columns). One value
column gives a univariate ``value``; several give named ``values``. A row that cannot become a
reading is returned with the reason instead of raising, so a replay can dead-letter it and go on.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from vigil.records import Reading, parse_timestamp

TIMESTAMP_COLUMNS = ("timestamp", "date", "datetime", "time", "ts")
KEY_COLUMNS = ("name", "symbol", "ticker")
MISSING_MARKERS = frozenset({"", "nan", "null", "none", "na", "n/a"})
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


class TableError(ValueError):
    """A file or its columns cannot be replayed at all (not one bad row: the whole table)."""


class RowError(ValueError):
    """One row cannot become a reading; the message says why, without the line number."""


@dataclass(frozen=True)
class ColumnChoice:
    """What the user asked for; unset fields are detected from the header."""

    timestamp: str | None = None
    values: tuple[str, ...] = ()
    key_column: str | None = None
    key: str | None = None
    key_prefix: str = ""


@dataclass(frozen=True)
class TableLayout:
    """The column mapping resolved against one file's header."""

    columns: tuple[str, ...]
    timestamp: str
    values: tuple[str, ...]
    key_column: str | None
    fixed_key: str | None
    key_prefix: str = ""

    @property
    def univariate(self) -> bool:
        return len(self.values) == 1

    @property
    def file_key(self) -> str | None:
        """The key of every row when it does not come from a column (so bad rows have it too)."""
        return None if self.fixed_key is None else self.key_prefix + self.fixed_key

    def reading_of(self, row: dict[str, Any]) -> tuple[str, Reading]:
        """Key and reading of one row; raises RowError naming the offending cell."""
        ts = cell_timestamp(row.get(self.timestamp), self.timestamp)
        numbers = {name: cell_number(row.get(name), name) for name in self.values}
        if self.fixed_key is not None:
            key = self.fixed_key
        else:
            assert self.key_column is not None
            raw_key = row.get(self.key_column)
            key = "" if raw_key is None else str(raw_key).strip()
            if not key:
                raise RowError(f"key column {self.key_column!r} is empty")
        if self.univariate:
            reading = Reading.model_validate({"timestamp": ts, "value": numbers[self.values[0]]})
        else:
            reading = Reading.model_validate({"timestamp": ts, "values": numbers})
        return self.key_prefix + key, reading


def resolve_layout(
    path: Path, columns: Sequence[str], choice: ColumnChoice, numeric: Sequence[str] | None = None
) -> TableLayout:
    """Match the choice to a header. ``numeric`` (Parquet) limits the default value columns to
    numeric ones; a CSV has no types, so every remaining column is a value by default."""
    names = tuple(columns)
    lower = {c.lower(): c for c in names}

    def need(column: str, role: str) -> str:
        if column in names:
            return column
        if column.lower() in lower:
            return lower[column.lower()]
        raise TableError(f"{path.name}: no {role} column {column!r}; columns are {list(names)}")

    if choice.timestamp:
        timestamp = need(choice.timestamp, "timestamp")
    else:
        found = next((lower[c] for c in TIMESTAMP_COLUMNS if c in lower), None)
        if found is None:
            raise TableError(
                f"{path.name}: no timestamp column (looked for {', '.join(TIMESTAMP_COLUMNS)}); "
                f"name it with --timestamp-column; columns are {list(names)}"
            )
        timestamp = found
    key_column: str | None = None
    fixed_key = choice.key
    if fixed_key is None:
        if choice.key_column:
            key_column = need(choice.key_column, "key")
        else:
            key_column = next((lower[c] for c in KEY_COLUMNS if c in lower), None)
            if key_column is None:
                fixed_key = path.stem
    if choice.values:
        values = tuple(need(c, "value") for c in choice.values)
    else:
        taken = {timestamp, key_column}
        pool = numeric if numeric is not None else names
        values = tuple(c for c in pool if c not in taken)
        if not values:
            raise TableError(
                f"{path.name}: no value column besides {sorted(c for c in taken if c)}"
            )
    if timestamp in values or (key_column is not None and key_column in values):
        raise TableError(f"{path.name}: a value column cannot also be the timestamp or the key")
    return TableLayout(names, timestamp, values, key_column, fixed_key, choice.key_prefix)


def cell_timestamp(raw: Any, column: str) -> float:
    """Epoch seconds from a CSV string, a number or a (naive = UTC) datetime."""
    if raw is None:
        raise RowError(f"{column} is empty")
    if isinstance(raw, datetime):
        return (raw if raw.tzinfo else raw.replace(tzinfo=UTC)).timestamp()
    if isinstance(raw, date):
        return datetime(raw.year, raw.month, raw.day, tzinfo=UTC).timestamp()
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise RowError(f"{column} is empty")
        try:
            raw = float(text)
        except ValueError:
            raw = text
    try:
        return parse_timestamp(raw)
    except ValueError as exc:
        raise RowError(f"{column} {raw!r} is not a timestamp") from exc


def cell_number(raw: Any, column: str) -> float | None:
    """A finite float, or None for a missing cell (empty, NaN, null); anything else is an error."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise RowError(f"{column} {raw!r} is not a number")
    if isinstance(raw, int | float):
        number = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if text.lower() in MISSING_MARKERS:
            return None
        try:
            number = float(text)
        except ValueError:
            raise RowError(f"{column} {raw!r} is not a number") from None
    else:
        raise RowError(f"{column} {raw!r} is not a number")
    if math.isnan(number):
        return None
    if not math.isfinite(number):
        raise RowError(f"{column} {raw!r} is not finite")
    return number


@dataclass(frozen=True)
class FileRow:
    """One data row: a reading, or the reason it could not be one.

    ``line`` is the CSV line number (header = 1) or the Parquet row number (first row = 1),
    ``end_line`` the last line of the row (a quoted field can span lines). ``ts`` is the row's
    time or, for a bad row, the last good time before it, so a merge of several files keeps bad
    rows where they were.
    """

    path: Path
    line: int
    end_line: int
    end_offset: int
    ts: float
    key: str | None
    reading: Reading | None
    problem: str | None
    raw: bytes


class Table(Protocol):
    path: Path
    layout: TableLayout
    unit: str  # "line" or "row", for messages

    def count_rows(self) -> int: ...

    def rows(
        self, after_line: int = 0, after_offset: int = 0
    ) -> Generator[FileRow, None, None]: ...


class CsvTable:
    """A CSV with a header, read as bytes so every row knows its line number and byte offset."""

    unit = "line"

    def __init__(self, path: Path, choice: ColumnChoice) -> None:
        self.path = path
        with path.open("rb") as handle:
            first = handle.readline()
        self._header_bytes = len(first)
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]), [])
        if not header:
            raise TableError(f"{path.name}: empty file, expected a header line")
        self.header = [h.strip() for h in header]
        self.layout = resolve_layout(path, self.header, choice)

    def count_rows(self) -> int:
        """Data lines, for a progress bar (counts newlines, so it stays cheap on big files)."""
        count = 0
        with self.path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                count += chunk.count(b"\n")
            if self.path.stat().st_size and not _ends_with_newline(handle):
                count += 1
        return max(count - 1, 0)

    def rows(self, after_line: int = 0, after_offset: int = 0) -> Generator[FileRow, None, None]:
        """Rows after a checkpoint: seek to ``after_offset`` (the byte after ``after_line``)."""
        with self.path.open("rb") as handle:
            if after_offset > self._header_bytes:
                _check_line_start(handle, self.path, after_offset)
                handle.seek(after_offset)
                line_no = after_line
            else:
                handle.seek(self._header_bytes)
                line_no = 1
            offset = handle.tell()
            last_ts = -math.inf
            while True:
                raw = handle.readline()
                if not raw:
                    return
                first_line = line_no + 1
                line_no += 1
                # A quoted field may hold a newline: keep reading until the quotes balance.
                while raw.count(b'"') % 2 == 1:
                    more = handle.readline()
                    if not more:
                        break
                    raw += more
                    line_no += 1
                offset += len(raw)
                body = raw.rstrip(b"\r\n")
                if not body.strip():
                    continue  # blank lines carry nothing, not even a mistake
                row = self._row(first_line, line_no, offset, body, last_ts)
                if row.reading is not None:
                    last_ts = row.ts
                yield row

    def _row(self, line: int, end_line: int, offset: int, body: bytes, last_ts: float) -> FileRow:
        def bad(why: str) -> FileRow:
            problem = f"{self.path.name} line {line}: {why}"
            key = self.layout.file_key
            return FileRow(self.path, line, end_line, offset, last_ts, key, None, problem, body)

        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return bad(f"not UTF-8 ({exc.reason} at byte {exc.start})")
        try:
            cells = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            return bad(f"not CSV ({exc})")
        if len(cells) != len(self.header):
            return bad(f"expected {len(self.header)} columns, got {len(cells)}")
        try:
            key, reading = self.layout.reading_of(dict(zip(self.header, cells, strict=True)))
        except (RowError, ValueError) as exc:
            return bad(_short(exc))
        return FileRow(self.path, line, end_line, offset, reading.ts, key, reading, None, body)


class ParquetTable:
    """A Parquet file read in record batches; rows are numbered from 1 in file order."""

    unit = "row"

    def __init__(self, path: Path, choice: ColumnChoice, batch_size: int = 8192) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self.batch_size = batch_size
        try:
            self._file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise TableError(f"{path.name}: not a readable Parquet file ({exc})") from exc
        schema = self._file.schema_arrow
        numeric = [
            f.name
            for f in schema
            if pa.types.is_integer(f.type)
            or pa.types.is_floating(f.type)
            or pa.types.is_decimal(f.type)
        ]
        self.layout = resolve_layout(path, schema.names, choice, numeric=numeric)

    def count_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    def rows(self, after_line: int = 0, after_offset: int = 0) -> Generator[FileRow, None, None]:
        layout = self.layout
        wanted = [layout.timestamp, *layout.values]
        if layout.key_column:
            wanted.append(layout.key_column)
        metadata = self._file.metadata
        # Skip whole row groups already replayed, then the head of the first one left.
        first_group, row_no = 0, 0
        while first_group < metadata.num_row_groups:
            size = metadata.row_group(first_group).num_rows
            if row_no + size > after_line:
                break
            row_no += size
            first_group += 1
        groups = list(range(first_group, metadata.num_row_groups))
        if not groups:
            return
        last_ts = -math.inf
        batches = self._file.iter_batches(
            batch_size=self.batch_size, row_groups=groups, columns=wanted
        )
        for batch in batches:
            for row in batch.to_pylist():
                row_no += 1
                if row_no <= after_line:
                    continue
                try:
                    key, reading = layout.reading_of(row)
                except (RowError, ValueError) as exc:
                    raw = json.dumps(row, default=str).encode()
                    problem = f"{self.path.name} row {row_no}: {_short(exc)}"
                    known = layout.file_key
                    yield FileRow(self.path, row_no, row_no, 0, last_ts, known, None, problem, raw)
                    continue
                last_ts = reading.ts
                raw = json.dumps(row, default=str).encode()
                yield FileRow(self.path, row_no, row_no, 0, reading.ts, key, reading, None, raw)


def open_table(path: Path, choice: ColumnChoice) -> Table:
    """The reader for a file, by its suffix."""
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return ParquetTable(path, choice)
    if suffix in CSV_SUFFIXES:
        return CsvTable(path, choice)
    raise TableError(f"{path.name}: unknown format {suffix!r} (expected .csv or .parquet)")


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a directory stands for its CSV and Parquet files, sorted by name."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.iterdir() if p.suffix.lower() in CSV_SUFFIXES + PARQUET_SUFFIXES
                )
            )
        else:
            found.append(path)
    return list(dict.fromkeys(p.resolve() for p in found))


def _short(exc: Exception) -> str:
    """A pydantic error's first message, or the exception text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return str(first.get("msg", exc)).removeprefix("Value error, ")
        except (IndexError, TypeError):
            pass
    return str(exc)


def _ends_with_newline(handle: Any) -> bool:
    handle.seek(-1, 2)
    return bool(handle.read(1) == b"\n")


def _check_line_start(handle: Any, path: Path, offset: int) -> None:
    """A checkpoint offset must sit just after a newline, or the file changed since."""
    handle.seek(offset - 1)
    if handle.read(1) != b"\n":
        raise TableError(
            f"{path.name}: the saved checkpoint (byte {offset}) does not match the file any more; "
            "it changed since the last replay: rerun with --restart"
        )
