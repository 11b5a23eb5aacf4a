"""`vigil tail`: follow Vigil's output topics as readable one-line records.

Reads without a consumer group (nothing is committed, the worker's group is untouched), from the
end by default or from the beginning with ``--from-beginning``; ``--key`` filters by the record's
series key (fnmatch pattern), ``--json`` prints each record's value as it is on the wire.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from vigil.ops_common import fail, service_errors, started_consumer, topic_partitions, when
from vigil.settings import VigilSettings, settings_or_exit


class Stream(StrEnum):
    predictions = "predictions"
    alerts = "alerts"
    dead_letters = "dead-letters"
    drift = "drift"


def topic_of(settings: VigilSettings, stream: Stream) -> str:
    t = settings.topics
    return {
        Stream.predictions: t.predictions,
        Stream.alerts: t.alerts,
        Stream.dead_letters: t.dead_letters,
        Stream.drift: t.drift,
    }[stream]


def _numbers(values: list[float] | None, digits: int = 4) -> str:
    if not values:
        return "[]"
    shown = ", ".join(f"{v:.{digits}g}" for v in values[:4])
    return f"[{shown}{', …' if len(values) > 4 else ''}]"


def format_record(stream: Stream, data: dict[str, Any]) -> str:
    """One readable line for one record of ``stream`` (raises KeyError/TypeError if malformed)."""
    if stream is Stream.predictions:
        prov = data["provenance"]
        observed = data.get("observed")
        return (
            f"{when(data['timestamp'])} {data['key']} [{data['group']}]"
            f" observed={'-' if observed is None else f'{observed:.6g}'}"
            f" forecast={_numbers(data['forecast'])}"
            f" interval={_numbers(data['lower'])}..{_numbers(data['upper'])}"
            f" score={data['score']:.3f}{' ANOMALY' if data['anomaly'] else ''}"
            f" model={prov['model_version']} from {prov['topic']}:{prov['partition']}"
            f"@{prov['offset']}"
        )
    if stream is Stream.alerts:
        end = f" end={when(data['end'])}" if data.get("end") else ""
        return (
            f"{when(data['start'])} {data['status'].upper()} {data['severity']} {data['key']}"
            f" [{data['group']}] score={data['score']:.4f}{end} id={data['alert_id']}"
            f" recent={_numbers(data.get('recent_values'))}"
            f" forecast={_numbers(data.get('forecast'))}"
        )
    if stream is Stream.dead_letters:
        where = data["topic"]
        if data.get("partition") is not None:
            where += f":{data['partition']}@{data['offset']}"
        cut = (
            f" (copy truncated, {data.get('original_size')} bytes at the source)"
            if data.get("original_truncated")
            else ""
        )
        reason = " ".join(str(data["reason"]).split())
        return (
            f"{when(data['at'])} {data.get('code') or '-'} {where} key={data.get('key') or '-'}"
            f" source={data.get('source', '-')} reason={reason[:200]}{cut}"
        )
    prov = data["provenance"]
    return (
        f"{when(data['timestamp'])} {data['key']} [{data['group']}] drift {data['direction']}"
        f" method={data['method']} statistic={data['statistic']:.4g}"
        f" lr_scale={data['lr_scale']:.3g} model={prov['model_version']}"
    )


def record_key(kafka_key: bytes | None, data: dict[str, Any] | None) -> str | None:
    """The series key: the record's own ``key`` field, else the Kafka key."""
    if isinstance(data, dict) and isinstance(data.get("key"), str):
        return data["key"]
    return kafka_key.decode("utf-8", "replace") if kafka_key is not None else None


def render(stream: Stream, kafka_key: bytes | None, value: bytes | None, raw: bool) -> tuple[
    str | None, str
]:  # fmt: skip
    """(series key, line to print) for one record."""
    text = (value or b"").decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    key = record_key(kafka_key, data)
    if raw:
        return key, text
    if not isinstance(data, dict):
        return key, f"(not JSON) {text[:200]}"
    try:
        return key, format_record(stream, data)
    except (KeyError, TypeError, ValueError):
        return key, f"(unexpected record) {text[:200]}"


async def tail_topic(
    settings: VigilSettings,
    stream: Stream,
    *,
    key_pattern: str | None,
    from_beginning: bool,
    raw: bool,
    limit: int | None,
    follow: bool,
    out: Any = None,
) -> int:
    """Print matching records; return how many were printed."""
    from aiokafka import TopicPartition

    echo = out or typer.echo
    topic = topic_of(settings, stream)
    consumer = await started_consumer(settings)
    printed = 0
    try:
        partitions = await topic_partitions(consumer, topic)
        if not partitions:
            raise fail(settings, f"topic {topic} does not exist (has a worker started yet?)")
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        stop_at = None if follow else await consumer.end_offsets(tps)
        while limit is None or printed < limit:
            if stop_at is not None:
                positions = [(tp, await consumer.position(tp)) for tp in tps]
                if all(position >= stop_at[tp] for tp, position in positions):
                    break
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp_records in batches.values():
                for record in tp_records:
                    key, line = render(stream, record.key, record.value, raw)
                    if key_pattern and (key is None or not fnmatch.fnmatchcase(key, key_pattern)):
                        continue
                    echo(line)
                    printed += 1
                    if limit is not None and printed >= limit:
                        return printed
    finally:
        await consumer.stop()
    return printed


def tail(
    stream: Annotated[Stream, typer.Argument(help="which output to follow")],
    key: Annotated[
        str, typer.Option("--key", help="only series keys matching this pattern, e.g. 'sensor.*'")
    ] = "",
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="start at the oldest record kept")
    ] = False,
    raw: Annotated[bool, typer.Option("--json", help="print each record as it is on the wire")] = (
        False
    ),
    limit: Annotated[int, typer.Option(help="stop after this many records (0 = no limit)")] = 0,
    follow: Annotated[
        bool, typer.Option(help="keep waiting for new records (--no-follow: stop at the end)")
    ] = True,
) -> None:
    """Print records of an output topic, one line each, as they arrive (Ctrl-C stops).

    Examples: vigil tail predictions --key 'sensor.*' ; vigil tail dead-letters
    --from-beginning --no-follow ; vigil tail alerts --json --limit 10
    """
    settings = settings_or_exit()
    if limit < 0:
        raise fail(settings, "--limit must be 0 (no limit) or more", 2)
    with service_errors(settings):
        try:
            asyncio.run(
                tail_topic(
                    settings,
                    stream,
                    key_pattern=key or None,
                    from_beginning=from_beginning,
                    raw=raw,
                    limit=limit or None,
                    follow=follow,
                )
            )
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
