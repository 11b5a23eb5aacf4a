"""`vigil dlq redrive`: send dead letters back to their source topic after the cause is fixed.

Which dead letters: those of records that were in a Kafka topic (the worker's and the alerts
consumer's rejections carry the source ``topic``/``partition``/``offset``), optionally only one
``--reason`` code and only those written ``--since`` a time. Dead letters without a source
position (a connector rejected a line before it reached Kafka; a webhook delivery was given up)
are counted and skipped: they are fixed and re-sent at their source.

Once each: every redriven source record is remembered in Redis by (topic, partition, offset), at
``vigil:{app_id}:dlq:redriven:{topic}:{partition}:{offset}`` for :data:`REMEMBER_S` (longer than
any dead-letter retention), claimed with SET NX before it is sent, so a second run (or two
operators at once) sends nothing again. A record that fails again is dead-lettered again under a
new offset (the redriven copy's) and can be redriven once more after the next fix.

What is sent: the dead letter's copy of the value when it is complete; when the copy was cut
(``original_truncated``, or its size differs from ``original_size``, or it is empty) the record is
read back from the source topic at its partition and offset, so the whole original is redriven.
A source record already removed by retention is reported and not marked.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from vigil.ops_common import (
    fail,
    parse_since,
    service_errors,
    started_consumer,
    topic_partitions,
    when,
)
from vigil.records import DeadLetter
from vigil.settings import VigilSettings, settings_or_exit

app = typer.Typer(
    help="Dead letters: send them back once their cause is fixed.", no_args_is_help=True
)

REMEMBER_S = 90 * 86_400
FLUSH_EVERY = 200


@dataclass
class RedriveReport:
    redriven: list[str] = field(default_factory=list)
    from_source: int = 0
    already: int = 0
    no_position: int = 0
    gone: list[str] = field(default_factory=list)
    unreadable: int = 0
    filtered: int = 0


def identity(letter: DeadLetter) -> str:
    return f"{letter.topic}:{letter.partition}:{letter.offset}"


def copy_is_complete(letter: DeadLetter) -> bool:
    copy = letter.original_bytes()
    if letter.original_truncated or not copy:
        return False
    return letter.original_size is None or len(copy) == letter.original_size


def matches(letter: DeadLetter, reason: str | None, since: float | None) -> bool:
    if since is not None and letter.at < since:
        return False
    if reason is None:
        return True
    code = letter.code or letter.reason.split(":", 1)[0].strip()
    return code == reason


async def _read_topic_to_end(consumer: Any, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now (the consumer is unsubscribed)."""
    from aiokafka import TopicPartition

    partitions = await topic_partitions(consumer, topic)
    if not partitions:
        return []
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    records: list[Any] = []
    while any(position < ends[tp] for tp, position in await _positions(consumer, tps)):
        batches = await consumer.getmany(*tps, timeout_ms=1000, max_records=1000)
        for tp, found in batches.items():
            records.extend(r for r in found if r.offset < ends[tp])
    return records


async def _positions(consumer: Any, tps: list[Any]) -> list[tuple[Any, int]]:
    return [(tp, await consumer.position(tp)) for tp in tps]


async def _read_source(consumer: Any, topic: str, partition: int, offset: int) -> Any | None:
    """The record at ``topic``/``partition``/``offset``, or None if retention removed it."""
    from aiokafka import TopicPartition

    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if not begin <= offset < end:
        return None
    consumer.seek(tp, offset)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        found = (await consumer.getmany(tp, timeout_ms=1000, max_records=10)).get(tp, [])
        for record in found:
            if record.offset == offset:
                return record
            if record.offset > offset:  # compacted away
                return None
    raise TimeoutError(f"reading {topic}:{partition}@{offset} took too long")


async def redrive(
    settings: VigilSettings,
    *,
    reason: str | None = None,
    since: float | None = None,
    dry_run: bool = False,
    echo: Any = None,
) -> RedriveReport:
    from redis.asyncio import Redis

    from vigil.connectors.producer import RecordProducer

    say = echo or typer.echo
    report = RedriveReport()
    prefix = f"vigil:{settings.app_id}:dlq:redriven:"
    redis = Redis.from_url(settings.redis, socket_connect_timeout=5, socket_timeout=10)
    try:
        await redis.ping()  # fail before reading anything if Redis is not there
        consumer = await started_consumer(settings)
    except BaseException:
        await redis.aclose()
        raise
    try:
        source_reader = await started_consumer(settings)
    except BaseException:
        await consumer.stop()
        await redis.aclose()
        raise
    try:
        candidates: dict[str, DeadLetter] = {}
        for record in await _read_topic_to_end(consumer, settings.topics.dead_letters):
            try:
                letter = DeadLetter.model_validate_json(record.value or b"")
            except ValidationError:
                report.unreadable += 1
                continue
            if not matches(letter, reason, since):
                report.filtered += 1
            elif letter.partition is None or letter.offset is None:
                report.no_position += 1
            else:
                candidates.setdefault(identity(letter), letter)
        if candidates:
            pipe = redis.pipeline(transaction=False)
            for name in candidates:
                pipe.exists(prefix + name)
            done = await pipe.execute()
            for name, seen in zip(list(candidates), done, strict=True):
                if seen:
                    report.already += 1
                    del candidates[name]
        async with RecordProducer(settings) as producer:
            claimed: list[str] = []
            for name, letter in candidates.items():
                assert letter.partition is not None and letter.offset is not None
                key = letter.key.encode() if letter.key is not None else None
                value = letter.original_bytes()
                how = "copy"
                if not copy_is_complete(letter):
                    source = await _read_source(
                        source_reader, letter.topic, letter.partition, letter.offset
                    )
                    if source is None:
                        report.gone.append(name)
                        say(f"gone      {name}: no longer in the source topic (retention)")
                        continue
                    key, value, how = source.key, source.value or b"", "source topic"
                    report.from_source += 1
                where = f"{letter.topic}:{letter.partition}@{letter.offset}"
                line = (
                    f"{where} key={letter.key or '-'} code={letter.code or '-'}"
                    f" dead-lettered {when(letter.at)} ({len(value)} bytes from the {how})"
                )
                if dry_run:
                    say(f"would redrive {line}")
                    report.redriven.append(name)
                    continue
                mark = json.dumps({"at": time.time(), "code": letter.code})
                if not await redis.set(prefix + name, mark, nx=True, ex=REMEMBER_S):
                    report.already += 1  # another run claimed it meanwhile
                    continue
                claimed.append(name)
                try:
                    await producer.send_raw(letter.topic, value, key)
                    if len(claimed) >= FLUSH_EVERY:
                        await producer.flush()
                        claimed = []
                except BaseException:
                    await redis.delete(*(prefix + n for n in claimed))  # not sent: not done
                    raise
                report.redriven.append(name)
                say(f"redriven  {line}")
            try:
                await producer.flush()
            except BaseException:
                if claimed:
                    await redis.delete(*(prefix + n for n in claimed))
                raise
    finally:
        await source_reader.stop()
        await consumer.stop()
        await redis.aclose()
    return report


@app.command("redrive")
def redrive_command(
    reason: Annotated[
        str, typer.Option(help="only dead letters with this reason code, e.g. out_of_range")
    ] = "",
    since: Annotated[
        str, typer.Option(help="only dead letters written since: 2h, 7d, an ISO time or epoch")
    ] = "",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be sent; send and mark nothing")
    ] = False,
) -> None:
    """Send dead letters back to their source topic, once each, after the cause is fixed.

    Example: vigil dlq redrive --reason out_of_range --since 1d --dry-run
    """
    settings = settings_or_exit()
    since_ts = parse_since(since) if since else None
    with service_errors(settings):
        report = asyncio.run(
            redrive(settings, reason=reason or None, since=since_ts, dry_run=dry_run)
        )
    verb = "would redrive" if dry_run else "redriven"
    typer.echo(
        f"{len(report.redriven)} {verb} ({report.from_source} read back from the source topic"
        f" because the dead letter's copy was cut), {report.already} already redriven before,"
        f" {report.no_position} without a source position (re-send those at their source),"
        f" {len(report.gone)} gone from the source topic, {report.filtered} not matching"
        + (f", {report.unreadable} unreadable" if report.unreadable else "")
    )
    if report.gone:
        raise fail(settings, f"{len(report.gone)} source record(s) are gone: {report.gone[:5]}")
