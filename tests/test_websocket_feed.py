"""WebSocket market feed: message parsing and back-off (pure), then a real local WebSocket server
that drops the connection and comes back."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.connector_fixtures import by_key, read_topic
from vigil.connectors.producer import RecordProducer
from vigil.connectors.websocket_feed import (
    Backoff,
    MessageError,
    QuoteFields,
    WebSocketFeed,
    parse_message,
)
from vigil.settings import VigilSettings
from vigil.topics import ensure_topics

# ---- pure parsing -----------------------------------------------------------------------------


def ok(results: list) -> list[tuple[str, float, float]]:
    return [(r[0], r[1].ts, r[1].value) for r in results if not isinstance(r, MessageError)]


def test_trades_quotes_and_nested_fields() -> None:
    trade = QuoteFields(symbol="s", price="p", timestamp="T")
    assert ok(parse_message('{"s": "BTCUSD", "p": "42000.5", "T": 1700000000123}', trade, 0.0)) == [
        ("BTCUSD", 1700000000.123, 42000.5)
    ]
    quote = QuoteFields(symbol="sym", bid="bid", ask="ask", timestamp=None, key_prefix="fx.")
    assert ok(parse_message('{"sym": "EURUSD", "bid": 1.1, "ask": 1.3}', quote, 9.0)) == [
        ("fx.EURUSD", 9.0, pytest.approx(1.2))
    ]
    nested = QuoteFields(symbol="s", price="p", timestamp="t", items="data", only={"type": "trade"})
    message = {"type": "trade", "data": [{"s": "A", "p": 1, "t": 5}, {"s": "B", "p": 2, "t": 6}]}
    assert ok(parse_message(json.dumps(message), nested, 0.0)) == [("A", 5.0, 1.0), ("B", 6.0, 2.0)]
    assert parse_message('{"type": "ping"}', nested, 0.0) == []  # filtered out, not an error
    text_ms = '{"s": "ETH", "p": "2000", "T": "1700000000500"}'
    assert ok(parse_message(text_ms, trade, 0.0)) == [("ETH", 1700000000.5, 2000.0)]
    iso = '{"s": "ETH", "p": 1, "T": "2024-01-01T00:00:00Z"}'
    assert ok(parse_message(iso, trade, 0.0)) == [("ETH", 1704067200.0, 1.0)]
    deep = QuoteFields(symbol="d.sym", price="d.px.last", timestamp="d.ts")
    assert ok(parse_message('{"d": {"sym": "X", "px": {"last": 3}, "ts": 7}}', deep, 0.0)) == [
        ("X", 7.0, 3.0)
    ]


def test_bad_messages_give_reasons() -> None:
    fields = QuoteFields(bid="b", ask="a")
    cases = {
        "not json": "message is not JSON",
        '{"price": 1, "timestamp": 1}': "no 'symbol' field",
        '{"symbol": "X", "b": 2, "a": 1, "timestamp": 1}': "crossed quote",
        '{"symbol": "X", "b": "cheap", "a": 1, "timestamp": 1}': "b 'cheap' is not a number",
        '{"symbol": "X", "b": 1, "a": 2}': "no 'timestamp' field",
        '{"symbol": "X", "b": 1, "a": 2, "timestamp": "later"}': "timestamp",
        "[3]": "expected a JSON object, got int",
    }
    for raw, reason in cases.items():
        [result] = parse_message(raw, fields, 0.0)
        assert isinstance(result, MessageError) and reason in str(result), raw
    mixed = parse_message('[{"symbol": "A", "b": 1, "a": 1, "timestamp": 1}, {"b": 1}]', fields, 0)
    assert isinstance(mixed[1], MessageError) and ok(mixed) == [("A", 1.0, 1.0)]
    with pytest.raises(ValueError, match="both bid and ask"):
        QuoteFields(bid="b")


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, cap=4.0, factor=2.0, jitter=0.5, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= delay <= base
    assert len(set(delays)) == len(delays)  # jittered: no two feeds retry in lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    exact = Backoff(initial=1.0, cap=10.0, jitter=0.0)
    assert [exact.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


# ---- a real server that drops the feed and comes back -----------------------------------------


def trade(i: int) -> str:
    symbol = "AAPL" if i % 2 else "MSFT"
    return json.dumps(
        {"type": "trade", "symbol": symbol, "price": 100 + i, "timestamp": 1_700_000_000 + i}
    )


async def test_feed_reconnects_and_loses_nothing_after_the_drop(settings: VigilSettings) -> None:
    await ensure_topics(settings)
    subscribes: list[str] = []
    first_done = asyncio.Event()

    async def first_server(ws: ServerConnection) -> None:
        subscribes.append(str(await ws.recv()))
        for i in range(6):
            await ws.send(trade(i))
        await ws.send('{"type": "trade", "symbol": "AAPL", "price": "n/a", "timestamp": 1}')
        await ws.send('{"type": "heartbeat"}')  # not a trade: ignored, not a dead letter
        first_done.set()
        await ws.wait_closed()

    async def second_server(ws: ServerConnection) -> None:
        subscribes.append(str(await ws.recv()))
        for i in range(6, 12):
            await ws.send(trade(i))
        await ws.wait_closed()

    server = await serve(first_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with RecordProducer(settings) as producer:
        feed = WebSocketFeed(
            producer,
            f"ws://127.0.0.1:{port}",
            fields=QuoteFields(only={"type": "trade"}),
            subscribe={"op": "subscribe", "channel": "trades"},
            backoff=Backoff(initial=0.05, cap=0.2),
        )
        task = asyncio.create_task(feed.run())
        try:
            async with asyncio.timeout(10):
                await first_done.wait()
            server.close()  # the feed's connection drops; nothing listens for a while
            await server.wait_closed()
            await asyncio.sleep(0.6)
            server = await serve(second_server, "127.0.0.1", port)
            records = await read_topic(settings, settings.topics.readings, expect=12)
            letters = await read_topic(settings, settings.topics.dead_letters, expect=1)
        finally:
            feed.stop()
            stats = await task
            server.close()
            await server.wait_closed()
    prices = {key: [r["value"] for r in v] for key, v in by_key(records).items()}
    assert prices == {
        "MSFT": [100.0, 102.0, 104.0, 106.0, 108.0, 110.0],
        "AAPL": [101.0, 103.0, 105.0, 107.0, 109.0, 111.0],
    }
    assert subscribes == ['{"op": "subscribe", "channel": "trades"}'] * 2  # re-sent on reconnect
    assert (stats.connections, stats.readings, stats.dead_letters, stats.ignored) == (2, 12, 1, 1)
    assert stats.failed_attempts >= 2  # refused while the server was away, retried with back-off
    [letter] = [r.json() for r in letters]
    assert letter["reason"] == f"websocket ws://127.0.0.1:{port}: price 'n/a' is not a number"
    assert json.loads(letter["original"])["price"] == "n/a"
