"""File replay: readers (pure) and replay into the real Kafka with checkpoints in the real Redis."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from tests.connector_fixtures import by_key, cli_env, head_of_csv, read_topic
from vigil.cli import app
from vigil.connectors.checkpoint import CheckpointStore, checkpoint_key
from vigil.connectors.file_formats import (
    ColumnChoice,
    CsvTable,
    ParquetTable,
    TableError,
    open_table,
)
from vigil.connectors.pacing import Pacer
from vigil.connectors.producer import RecordProducer
from vigil.connectors.replay import FileReplay
from vigil.records import Reading
from vigil.settings import VigilSettings
from vigil.topics import ensure_topics

CLOSE = ColumnChoice(values=("close",))


def epoch(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# ---- readers (pure) ---------------------------------------------------------------------------


MESSY = (
    "timestamp,value\n"  # line 1
    "2024-01-01 00:00:00,1.5\n"  # 2
    "2024-01-01 00:05:00,abc\n"  # 3: not a number
    "\n"  # 4: blank, skipped silently
    "yesterday,2.0\n"  # 5: bad timestamp
    "2024-01-01 00:15:00,3.0,9\n"  # 6: one column too many
    "2024-01-01 00:20:00,\n"  # 7: empty cell = a missing value
    "1704068700,4.25\n"  # 8: epoch seconds
    "2024-01-01 00:30:00,inf\n"  # 9: not finite
)


def test_csv_rows_have_line_numbers_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "sensor_a.csv"
    path.write_text(MESSY)
    rows = list(open_table(path, ColumnChoice()).rows())
    assert [r.line for r in rows] == [2, 3, 5, 6, 7, 8, 9]
    good = {r.line: r.reading for r in rows if r.reading is not None}
    assert good[2] == Reading.model_validate({"timestamp": "2024-01-01T00:00:00", "value": 1.5})
    assert good[7] is not None and good[7].value is None and good[7].missing
    assert good[8] is not None and good[8].ts == 1704068700.0 and good[8].value == 4.25
    problems = {r.line: r.problem for r in rows if r.reading is None}
    assert problems == {
        3: "sensor_a.csv line 3: value 'abc' is not a number",
        5: "sensor_a.csv line 5: timestamp 'yesterday' is not a timestamp",
        6: "sensor_a.csv line 6: expected 2 columns, got 3",
        9: "sensor_a.csv line 9: value 'inf' is not finite",
    }
    bad_row = next(r for r in rows if r.line == 3)
    assert bad_row.raw == b"2024-01-01 00:05:00,abc"
    assert bad_row.ts == good[2].ts  # a bad row keeps its place in a time merge
    assert {r.key for r in rows} == {"sensor_a"}  # key = file stem, bad rows included


def test_market_bars_value_or_values_and_keys(shared_data: Path, tmp_path: Path) -> None:
    path = head_of_csv(shared_data / "market/daily/AAPL_data.csv", tmp_path / "AAPL_data.csv", 5)
    source = csv_rows(path)
    close_only = list(CsvTable(path, ColumnChoice(values=("close",), key_prefix="market.")).rows())
    assert [r.key for r in close_only] == ["market.AAPL"] * 5  # from the Name column
    assert [r.reading.value for r in close_only if r.reading] == [float(s["close"]) for s in source]
    assert close_only[0].reading is not None and close_only[0].reading.ts == epoch("2013-02-08")

    bars = list(CsvTable(path, ColumnChoice()).rows())
    first = bars[0].reading
    assert first is not None and first.values is not None
    assert set(first.values) == {"open", "high", "low", "close", "volume"}
    assert first.values["volume"] == float(source[0]["volume"])

    fixed = list(CsvTable(path, ColumnChoice(values=("close",), key="apple")).rows())
    assert {r.key for r in fixed} == {"apple"}
    with pytest.raises(TableError, match="no value column 'price'"):
        CsvTable(path, ColumnChoice(values=("price",)))


def test_quoted_field_spanning_lines_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text('timestamp,value,note\n1,1.0,"two\nlines"\n2,abc,x\n')
    table = CsvTable(path, ColumnChoice(values=("value",)))
    rows = list(table.rows())
    assert rows[0].reading is not None and (rows[0].line, rows[0].end_line) == (2, 3)
    assert rows[1].problem == "notes.csv line 4: value 'abc' is not a number"
    resumed = list(table.rows(after_line=rows[0].end_line, after_offset=rows[0].end_offset))
    assert [(r.line, r.problem) for r in resumed] == [(4, rows[1].problem)]


def test_resuming_at_an_offset_gives_the_same_rows(shared_data: Path, tmp_path: Path) -> None:
    path = head_of_csv(
        shared_data / "nab/data/realKnownCause/nyc_taxi.csv", tmp_path / "taxi.csv", 50
    )
    table = CsvTable(path, ColumnChoice())
    everything = list(table.rows())
    cut = everything[19]
    rest = list(table.rows(after_line=cut.line, after_offset=cut.end_offset))
    assert [(r.line, r.reading) for r in rest] == [(r.line, r.reading) for r in everything[20:]]
    assert table.count_rows() == 50
    with pytest.raises(TableError, match="--restart"):
        list(table.rows(after_line=cut.line, after_offset=cut.end_offset + 3))


def test_parquet_sensor_table_with_row_groups(tmp_path: Path) -> None:
    n = 25
    times = [datetime(2024, 5, 1, 0, i, tzinfo=UTC) for i in range(n)]
    table = pa.table(
        {
            "time": pa.array(times, pa.timestamp("ms", tz="UTC")),
            "temp": [20.0 + i for i in range(n)],
            "humidity": [float("nan") if i == 3 else 50.0 - i for i in range(n)],
            "site": ["roof"] * n,
        }
    )
    times_col = table.column("time").to_pylist()
    times_col[7] = None
    table = table.set_column(0, "time", pa.array(times_col, pa.timestamp("ms", tz="UTC")))
    path = tmp_path / "plant.parquet"
    pq.write_table(table, path, row_group_size=10)
    reader = open_table(path, ColumnChoice(key_column="site"))
    assert isinstance(reader, ParquetTable)
    rows = list(reader.rows())
    assert [r.line for r in rows] == list(range(1, n + 1))
    assert rows[7].problem == "plant.parquet row 8: time is empty"
    third = rows[3].reading
    assert third is not None and third.values == {"temp": 23.0, "humidity": None}
    assert rows[0].key == "roof" and rows[0].reading is not None
    assert rows[0].reading.ts == times[0].timestamp()
    tail = list(reader.rows(after_line=13))  # skips the first row group, then 3 rows
    assert [r.line for r in tail] == list(range(14, n + 1))
    assert [r.reading for r in tail] == [r.reading for r in rows[13:]]


def test_pacer_follows_the_record_clock() -> None:
    now = [100.0]
    pacer = Pacer(speed=10.0, clock=lambda: now[0])
    assert pacer.delay(1000.0) == 0.0  # the first record anchors
    assert pacer.delay(1010.0) == pytest.approx(1.0)  # 10 s of record time at 10x
    now[0] = 100.6
    assert pacer.delay(1010.0) == pytest.approx(0.4)  # waits do not add up: anchored
    now[0] = 105.0
    assert pacer.delay(1020.0) == 0.0  # behind schedule: no wait
    assert Pacer(0.0).delay(5e9) == 0.0
    with pytest.raises(ValueError):
        Pacer(-1.0)


# ---- replay into the real Kafka, checkpoints in the real Redis --------------------------------


@pytest.fixture
def two_stocks(shared_data: Path, tmp_path: Path) -> list[Path]:
    daily = shared_data / "market/daily"
    return [
        head_of_csv(daily / f"{ticker}_data.csv", tmp_path / f"{ticker}_data.csv", 200)
        for ticker in ("AAPL", "MSFT")
    ]


async def replay(
    settings: VigilSettings,
    paths: list[Path],
    columns: ColumnChoice = CLOSE,
    **options: object,
) -> FileReplay:
    redis = Redis.from_url(settings.redis)
    try:
        async with RecordProducer(settings) as producer:
            job = FileReplay(
                paths,
                producer,
                CheckpointStore(redis, settings.app_id),
                columns=columns,
                **options,  # type: ignore[arg-type]
            )
            await job.run()
            return job
    finally:
        await redis.aclose()


def expected_closes(paths: list[Path]) -> dict[str, list[tuple[float, float]]]:
    return {
        rows[0]["Name"]: [(epoch(r["date"]), float(r["close"])) for r in rows]
        for rows in (csv_rows(p) for p in paths)
    }


def as_pairs(readings: list[dict]) -> list[tuple[float, float]]:
    return [(r["timestamp"], r["value"]) for r in readings]


async def test_two_tickers_arrive_complete_in_order_and_interleaved(
    settings: VigilSettings, two_stocks: list[Path]
) -> None:
    one_partition = settings.topics.model_copy(update={"partitions": 1})
    settings = settings.model_copy(update={"topics": one_partition})
    await ensure_topics(settings)
    job = await replay(settings, two_stocks)
    assert job.summary is not None
    assert (job.summary.readings, job.summary.dead_letters) == (400, 0)
    records = await read_topic(settings, settings.topics.readings, expect=400)
    assert {k: as_pairs(v) for k, v in by_key(records).items()} == expected_closes(two_stocks)
    # One partition shows the send order: merged by time, so the tickers alternate day by day.
    stamps = [r.json()["timestamp"] for r in records]
    assert stamps == sorted(stamps)
    assert [r.key for r in records[:4]] == ["AAPL", "MSFT", "AAPL", "MSFT"]


async def test_replay_resumes_after_the_last_acknowledged_record(
    settings: VigilSettings, two_stocks: list[Path], redis_client
) -> None:
    await ensure_topics(settings)
    first = await replay(settings, two_stocks, stop_after=150, checkpoint_every=40)
    assert first.summary is not None and first.summary.stopped_early
    assert first.summary.readings == 150
    saved = {}
    for path in two_stocks:
        raw = redis_client.get(checkpoint_key(settings.app_id, path))
        assert raw is not None
        saved[path.name] = json.loads(raw)
        assert saved[path.name]["path"] == str(path.resolve())
    # The checkpoints hold exactly what was sent: 150 records, line numbers include the header.
    assert sum(cp["line"] - 1 for cp in saved.values()) == 150

    second = await replay(settings, two_stocks)
    assert second.summary is not None
    assert second.summary.readings == 250
    assert {f.path.name: f.resumed_after for f in second.summary.files} == {
        name: cp["line"] for name, cp in saved.items()
    }
    records = await read_topic(settings, settings.topics.readings, expect=400)
    assert len(records) == 400  # nothing lost, nothing twice
    assert {k: as_pairs(v) for k, v in by_key(records).items()} == expected_closes(two_stocks)

    third = await replay(settings, two_stocks)  # finished files: nothing to do
    assert third.summary is not None and third.summary.readings == 0
    again = await replay(settings, two_stocks, restart=True)
    assert again.summary is not None and again.summary.readings == 400


async def test_cancelled_replay_resumes_without_loss_or_duplicates(
    settings: VigilSettings, two_stocks: list[Path], redis_client
) -> None:
    await ensure_topics(settings)
    key = checkpoint_key(settings.app_id, two_stocks[0])
    # 200 trading days at 200 days/s of wall time: about 1.4 s, cancelled well before the end.
    task = asyncio.create_task(replay(settings, two_stocks, speed=86400 * 200, checkpoint_every=20))
    for _ in range(300):
        raw = redis_client.get(key)
        if raw is not None and json.loads(raw)["line"] > 40:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sent_before = sum(
        json.loads(redis_client.get(checkpoint_key(settings.app_id, p)))["readings"]
        for p in two_stocks
    )
    assert 40 < sent_before < 400

    await replay(settings, two_stocks)
    records = await read_topic(settings, settings.topics.readings, expect=400)
    assert len(records) == 400
    assert {k: as_pairs(v) for k, v in by_key(records).items()} == expected_closes(two_stocks)


async def test_malformed_lines_go_to_dead_letters_and_replay_goes_on(
    settings: VigilSettings, shared_data: Path, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    source = shared_data / "nab/data/realKnownCause/nyc_taxi.csv"
    lines = source.read_text().splitlines()[:31]  # header + 30 rows
    lines[4] = lines[4].split(",")[0] + ",abc"  # line 5
    lines[8] = "2014-13-45 00:00:00," + lines[8].split(",")[1]  # line 9
    lines[11] = lines[11].split(",")[0]  # line 12: a column short
    path = tmp_path / "nyc_taxi.csv"
    path.write_text("\n".join(lines) + "\n")

    job = await replay(settings, [path], ColumnChoice(), restart=True)
    assert job.summary is not None
    assert (job.summary.readings, job.summary.dead_letters) == (27, 3)
    readings = await read_topic(settings, settings.topics.readings, expect=27)
    assert len(readings) == 27 and {r.key for r in readings} == {"nyc_taxi"}
    letters = [r.json() for r in await read_topic(settings, settings.topics.dead_letters, expect=3)]
    by_line = {int(letter["source"].rsplit(":", 1)[1]): letter for letter in letters}
    assert sorted(by_line) == [5, 9, 12]
    assert by_line[5]["reason"] == "nyc_taxi.csv line 5: value 'abc' is not a number"
    assert "line 9: timestamp '2014-13-45 00:00:00' is not a timestamp" in by_line[9]["reason"]
    assert by_line[12]["reason"] == "nyc_taxi.csv line 12: expected 2 columns, got 1"
    assert by_line[5]["source"] == f"replay:{path.resolve()}:5"
    assert by_line[5]["original"] == lines[4]
    assert by_line[5]["topic"] == settings.topics.readings
    assert by_line[5]["key"] == "nyc_taxi"
    assert not math.isnan(readings[0].json()["value"])


def test_cli_replay_resumes_and_reports(
    settings: VigilSettings, shared_data: Path, tmp_path: Path
) -> None:
    path = head_of_csv(shared_data / "market/daily/XOM_data.csv", tmp_path / "XOM_data.csv", 60)
    with path.open("a") as handle:
        handle.write("2013-05-06,1,1,1,not-a-price,1,XOM\n")  # line 62
    base = ["connect", "replay", str(path), "--columns", "close", "--key-prefix", "market."]
    result = CliRunner().invoke(app, [*base, "--no-progress"], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    assert "60 readings" in result.output and "1 dead letters" in result.output
    again = CliRunner().invoke(app, [*base, "--no-progress"], env=cli_env(settings))
    assert again.exit_code == 0, again.output
    assert "0 readings" in again.output and "resumed after line 62" in again.output
    missing = CliRunner().invoke(app, [*base, "--columns", "price"], env=cli_env(settings))
    assert missing.exit_code == 2 and "no value column 'price'" in missing.output
