"""Creates Vigil's topics with the configured partition count (idempotent)."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from vigil.connectors.producer import kafka_client_options
from vigil.settings import VigilSettings


def topic_names(settings: VigilSettings) -> list[str]:
    t = settings.topics
    names = [t.readings, t.predictions, t.alerts, t.dead_letters, t.model_versions, t.drift]
    for group in settings.groups:
        names.extend(group.topics)
    return list(dict.fromkeys(names))


async def ensure_topics(settings: VigilSettings, names: list[str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    wanted = names or topic_names(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was faster
                await admin.create_topics(
                    [
                        NewTopic(n, num_partitions=settings.topics.partitions, replication_factor=1)
                        for n in missing
                    ]
                )
        return missing
    finally:
        await admin.close()
