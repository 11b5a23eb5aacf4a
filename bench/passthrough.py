"""The bare Faust passthrough the pipeline benchmark compares Vigil with.

Same broker, same app options as :class:`vigil.stream.topology.VigilStream` (raw serializers,
acks=all, commit cadence, stream buffer) and the same ``take_events`` batching; the agent forwards
each raw event to the output topic and waits for delivery, nothing else. Its rate is what Faust and
the Kafka client cost per event on this machine — the ceiling Vigil's own work is measured against.

Run a worker with ``python -m vigil.bench.passthrough``: it forwards ``VIGIL_TOPICS.readings`` to
``VIGIL_TOPICS.predictions``, as consumer group ``VIGIL_APP_ID``, web server on ``VIGIL_WEB_PORT``
(``/ready`` answers 200 once partitions are assigned).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from faust.web import Request, Response, View

from vigil.settings import VigilSettings, load_settings
from vigil.stream.topology import faust_app_options


def build_passthrough_app(settings: VigilSettings) -> faust.App:
    batch = settings.batch
    app = faust.App(settings.app_id, **faust_app_options(settings))  # the same Faust set-up
    source = app.topic(settings.topics.readings)
    sink = app.topic(settings.topics.predictions)

    async def forward(stream: faust.StreamT[Any]) -> None:
        batches = cast(faust.Stream[Any], stream).take_events(
            batch.max_size, within=batch.max_wait_ms / 1000
        )
        async for events in batches:
            sends: list[Any] = []
            for event in events:
                message = event.message
                sends.append(await sink.send(key=message.key, value=message.value))
            await asyncio.gather(*sends)

    app.agent(source, name="bench.passthrough")(forward)

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            assigned = bool(app.consumer.assignment())
            return self.json({"ready": assigned}, status=200 if assigned else 503)

    return app


def main() -> None:
    from faust import Worker

    app = build_passthrough_app(load_settings())
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
