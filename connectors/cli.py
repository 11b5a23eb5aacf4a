"""Connector commands: each source and sink is a `vigil` subcommand."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(help="Sources into Kafka and sinks out of it.", no_args_is_help=True)

T = TypeVar("T")

KafkaTopic = Annotated[
    str,
    typer.Option("--kafka-topic", help="Kafka topic to write (default: VIGIL_TOPICS__READINGS)"),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    from vigil.redaction import scrub

    typer.secho(scrub(" ".join(message.split())), fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _run(main: Callable[[], Awaitable[T]], on_term: Callable[[], None] | None = None) -> T:
    """Run a connector; SIGTERM (Kubernetes) stops it gracefully like Ctrl-C does."""

    async def wrapped() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_term or task.cancel)
        return await main()

    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    from vigil.connectors.producer import DeliveryError

    try:
        return asyncio.run(wrapped())
    except (KeyboardInterrupt, asyncio.CancelledError):
        typer.echo("stopped; everything sent so far is flushed", err=True)
        raise typer.Exit(130) from None
    except (KafkaError, DeliveryError) as exc:  # after the topics were there: the broker left
        settings = _settings()
        what = str(exc) or type(exc).__name__
        raise _fail(f"Kafka at {settings.bootstrap} failed: {what}", 1) from None
    except RedisError as exc:
        raise _fail(f"Redis at {_settings().redis} failed: {exc}", 1) from None


async def _prepare_topics(settings: Any, topic: str) -> None:
    """Create the target and dead-letter topics if missing; a clear error if Kafka is down."""
    from aiokafka.errors import KafkaError

    from vigil.topics import ensure_topics

    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # its lines would repeat the one below
    try:
        await ensure_topics(settings, [topic, settings.topics.dead_letters])
    except (KafkaError, OSError) as exc:
        raise _fail(f"cannot reach Kafka at {settings.bootstrap}: {exc}", 1) from None
    finally:
        client_log.setLevel(level)


def _settings() -> Any:
    from vigil.settings import settings_or_exit

    return settings_or_exit()


@app.command()
def replay(
    paths: Annotated[list[Path], typer.Argument(help="CSV or Parquet files, or folders of them")],
    columns: Annotated[
        str, typer.Option(help="value columns, comma-separated; one = `value`, several = `values`")
    ] = "",
    timestamp_column: Annotated[str, typer.Option(help="default: timestamp, date, time…")] = "",
    key_column: Annotated[str, typer.Option(help="column holding the key (default: Name…)")] = "",
    key: Annotated[str, typer.Option(help="one fixed key for every row")] = "",
    key_prefix: Annotated[str, typer.Option(help="put in front of every key, e.g. market.")] = "",
    speed: Annotated[
        float, typer.Option(help="1 = original pace, N = N times faster, 0 = as fast as possible")
    ] = 0.0,
    restart: Annotated[
        bool, typer.Option(help="ignore saved checkpoints, start from the top")
    ] = False,
    checkpoint: Annotated[
        bool, typer.Option(help="save progress in Redis so a rerun resumes")
    ] = True,
    checkpoint_every: Annotated[int, typer.Option(help="records between checkpoints")] = 1000,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    kafka_topic: KafkaTopic = "",
) -> None:
    """Replay market bars, NAB series or sensor tables into Kafka, resumably.

    Example: vigil connect replay vigil/demo_data/stocks_close.csv --columns close
    --key-column Name --key-prefix market. --speed 0
    """
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from vigil.connectors.checkpoint import CheckpointStore
    from vigil.connectors.file_formats import ColumnChoice, TableError
    from vigil.connectors.producer import RecordProducer
    from vigil.connectors.replay import FileReplay

    settings = _settings()
    topic = kafka_topic or settings.topics.readings
    choice = ColumnChoice(
        timestamp=timestamp_column or None,
        values=tuple(c.strip() for c in columns.split(",") if c.strip()),
        key_column=key_column or None,
        key=key or None,
        key_prefix=key_prefix,
    )
    holder: dict[str, FileReplay] = {}

    async def main() -> None:
        await _prepare_topics(settings, topic)
        redis = Redis.from_url(settings.redis) if checkpoint else None
        try:
            if redis is not None:
                try:
                    await redis.ping()
                except (RedisError, OSError) as exc:
                    raise _fail(
                        f"cannot reach Redis at {settings.redis} for checkpoints ({exc}); "
                        "use --no-checkpoint to replay without resuming",
                        1,
                    ) from None
            store = CheckpointStore(redis, settings.app_id) if redis is not None else None
            async with RecordProducer(settings) as producer:
                job = FileReplay(
                    paths,
                    producer,
                    store,
                    columns=choice,
                    speed=speed,
                    restart=restart,
                    topic=topic,
                    checkpoint_every=checkpoint_every,
                    progress=progress,
                )
                holder["job"] = job
                await job.run()
        finally:
            if redis is not None:
                await redis.aclose()

    try:
        _run(main)
    except (TableError, ValueError) as exc:
        raise _fail(str(exc)) from None
    finally:
        if "job" in holder and holder["job"].summary is not None:
            _print_replay_summary(holder["job"])


def _print_replay_summary(job: Any) -> None:
    summary = job.summary
    for f in summary.files:
        resumed = f" (resumed after line {f.resumed_after})" if f.resumed_after else ""
        typer.echo(
            f"{f.path.name:40} {f.readings:8} readings {f.dead_letters:6} dead letters{resumed}"
        )
    rate = summary.readings / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    typer.echo(
        f"total: {summary.readings} readings, {summary.dead_letters} dead letters in "
        f"{summary.elapsed_s:.1f} s ({rate:.0f}/s)"
        + (" — stopped early" if summary.stopped_early else "")
    )
    for problem in summary.problems:
        typer.secho(problem, fg=typer.colors.YELLOW, err=True)


@app.command()
def mqtt(
    topic: Annotated[
        list[str],
        typer.Option("--topic", help="MQTT topic pattern, repeatable: sensors/+/temperature"),
    ],
    host: Annotated[str, typer.Option(help="MQTT broker host")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="MQTT broker port")] = 1883,
    key_template: Annotated[
        str,
        typer.Option(
            help="Kafka key: {1} = first wildcard segment, {0} = topic; default: topic with / → ."
        ),
    ] = "",
    qos: Annotated[int, typer.Option(help="subscription QoS (1 = at least once)")] = 1,
    client_id: Annotated[
        str,
        typer.Option(help="fixed id = persistent session: the broker keeps messages while down"),
    ] = "",
    protocol: Annotated[str, typer.Option(help="MQTT version: 5 or 3.1.1")] = "5",
    receive_maximum: Annotated[
        int, typer.Option(help="MQTT 5: unacknowledged messages the broker may send at once")
    ] = 1000,
    username: Annotated[str, typer.Option(help="MQTT user name")] = "",
    password: Annotated[str, typer.Option(envvar="VIGIL_MQTT_PASSWORD", help="MQTT password")] = "",
    kafka_topic: KafkaTopic = "",
) -> None:
    """Bridge MQTT sensor topics into Kafka until Ctrl-C / SIGTERM.

    Example: vigil connect mqtt --topic 'sensors/+/temperature' --key-template 'room.{1}'
    """
    from vigil.connectors.mqtt_bridge import MqttBridge
    from vigil.connectors.producer import RecordProducer

    versions = {"5": 5, "3.1.1": 4, "311": 4}
    if protocol not in versions:
        raise _fail(f"--protocol must be 5 or 3.1.1, got {protocol!r}")
    settings = _settings()
    target = kafka_topic or settings.topics.readings
    holder: dict[str, MqttBridge] = {}

    async def main() -> None:
        await _prepare_topics(settings, target)
        async with RecordProducer(settings) as producer:
            bridge = MqttBridge(
                producer,
                host=host,
                port=port,
                patterns=topic,
                key_template=key_template or None,
                qos=qos,
                client_id=client_id or None,
                protocol=versions[protocol],
                receive_maximum=receive_maximum,
                username=username or None,
                password=password or None,
                topic=target,
            )
            holder["bridge"] = bridge
            typer.echo(f"bridging mqtt://{host}:{port} {topic} → {target}", err=True)
            await bridge.run()

    try:
        _run(main, on_term=lambda: holder["bridge"].stop() if "bridge" in holder else None)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    finally:
        if "bridge" in holder:
            s = holder["bridge"].stats
            typer.echo(
                f"{s.readings} readings, {s.dead_letters} dead letters, {s.connects} connects"
            )


@app.command()
def websocket(
    url: Annotated[str, typer.Argument(help="ws:// or wss:// URL of the feed")],
    symbol_field: Annotated[str, typer.Option(help="dotted path of the symbol")] = "symbol",
    price_field: Annotated[str, typer.Option(help="dotted path of the trade price")] = "price",
    bid_field: Annotated[str, typer.Option(help="bid path (with --ask-field: value = mid)")] = "",
    ask_field: Annotated[str, typer.Option(help="ask path")] = "",
    timestamp_field: Annotated[
        str, typer.Option(help="dotted path of the event time")
    ] = "timestamp",
    receive_time: Annotated[
        bool, typer.Option(help="stamp readings on receipt instead of --timestamp-field")
    ] = False,
    items_field: Annotated[
        str, typer.Option(help="path of a list of trades inside a message")
    ] = "",
    only: Annotated[
        list[str] | None,
        typer.Option(help="field=value a message must have, repeatable: type=trade"),
    ] = None,
    subscribe: Annotated[str, typer.Option(help="message sent on every connect (JSON text)")] = "",
    key_prefix: Annotated[str, typer.Option(help="put in front of every symbol")] = "",
    initial_backoff: Annotated[float, typer.Option(help="first reconnect wait, seconds")] = 0.5,
    max_backoff: Annotated[float, typer.Option(help="longest reconnect wait, seconds")] = 30.0,
    kafka_topic: KafkaTopic = "",
) -> None:
    """Read a JSON trade/quote feed over WebSocket into Kafka, reconnecting when it drops.

    Example: vigil connect websocket wss://example.com/feed --symbol-field s --price-field p
    --timestamp-field T --subscribe '{"op": "subscribe", "args": ["trades"]}'
    """
    from vigil.connectors.producer import RecordProducer
    from vigil.connectors.websocket_feed import Backoff, QuoteFields, WebSocketFeed

    settings = _settings()
    target = kafka_topic or settings.topics.readings
    filters: dict[str, str] = {}
    for item in only or []:
        name, sep, want = item.partition("=")
        if not sep or not name:
            raise _fail(f"--only expects field=value, got {item!r}")
        filters[name] = want
    try:
        fields = QuoteFields(
            symbol=symbol_field,
            price=price_field,
            bid=bid_field or None,
            ask=ask_field or None,
            timestamp=None if receive_time else timestamp_field,
            items=items_field or None,
            only=filters,
            key_prefix=key_prefix,
        )
        backoff = Backoff(initial=initial_backoff, cap=max_backoff)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if subscribe:
        try:
            json.loads(subscribe)
        except json.JSONDecodeError:
            typer.secho("note: --subscribe is not JSON; sending it as plain text", err=True)
    holder: dict[str, WebSocketFeed] = {}

    async def main() -> None:
        await _prepare_topics(settings, target)
        async with RecordProducer(settings) as producer:
            feed = WebSocketFeed(
                producer,
                url,
                fields=fields,
                subscribe=subscribe or None,
                backoff=backoff,
                topic=target,
            )
            holder["feed"] = feed
            typer.echo(f"reading {url} → {target}", err=True)
            await feed.run()

    try:
        _run(main, on_term=lambda: holder["feed"].stop() if "feed" in holder else None)
    finally:
        if "feed" in holder:
            s = holder["feed"].stats
            typer.echo(
                f"{s.readings} readings, {s.dead_letters} dead letters, {s.ignored} ignored, "
                f"{s.connections} connections"
            )


@app.command()
def synthetic(
    keys: Annotated[int, typer.Option(help="number of series")] = 5,
    points: Annotated[int, typer.Option(help="points per series")] = 2000,
    seed: Annotated[int, typer.Option(help="same seed → same series and labels")] = 0,
    speed: Annotated[
        float, typer.Option(help="1 = one step per --interval, N = N times faster, 0 = no waiting")
    ] = 0.0,
    interval: Annotated[float, typer.Option(help="seconds between points")] = 60.0,
    start: Annotated[float, typer.Option(help="first timestamp, epoch seconds")] = 1_700_000_000.0,
    anomalies_per_key: Annotated[int, typer.Option(help="anomalies injected per series")] = 4,
    kinds: Annotated[
        str, typer.Option(help="comma-separated: spike, level_shift, drift, dropout")
    ] = "spike,level_shift,drift,dropout",
    key_prefix: Annotated[
        str, typer.Option(help="keys are <prefix>000, <prefix>001…")
    ] = "synthetic.",
    labels_out: Annotated[
        Path | None, typer.Option(help="write the injected anomalies here")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    kafka_topic: KafkaTopic = "",
) -> None:
    """Send seeded synthetic series with labelled anomalies.

    Example: vigil connect synthetic --keys 5 --points 2000 --seed 7 --labels-out labels.json
    """
    from vigil.connectors.producer import RecordProducer
    from vigil.connectors.synthetic import SyntheticSeries, send_synthetic

    settings = _settings()
    target = kafka_topic or settings.topics.readings
    try:
        series = SyntheticSeries(
            keys,
            points,
            seed,
            interval_s=interval,
            start_ts=start,
            anomalies_per_key=anomalies_per_key,
            kinds=[k.strip() for k in kinds.split(",") if k.strip()],
            key_prefix=key_prefix,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if labels_out is not None:
        series.write_labels(labels_out)
        typer.echo(f"{len(series.labels)} labels → {labels_out}", err=True)

    async def main() -> int:
        await _prepare_topics(settings, target)
        async with RecordProducer(settings) as producer:
            return await send_synthetic(
                series, producer, speed=speed, topic=target, progress=progress
            )

    sent = _run(main)
    typer.echo(f"{sent} readings for {len(series.keys)} keys → {target}")
