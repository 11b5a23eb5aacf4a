"""Creates Vigil's topics with the configured partition count (idempotent)."""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

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
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was faster
                response = await admin.create_topics(
                    [
                        NewTopic(
                            n,
                            num_partitions=settings.topics.partitions,
                            replication_factor=settings.topics.replication_factor,
                        )
                        for n in missing
                    ]
                )
                _raise_topic_errors(response)
        return missing
    finally:
        await admin.close()


def _raise_topic_errors(response: Any) -> None:
    """aiokafka returns per-topic errors instead of raising: a replication factor above the
    broker count or a missing Create ACL must not pass for success."""
    for topic, code, *detail in response.topic_errors:
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        error = for_code(code)
        message = detail[0] if detail and detail[0] else error.__name__
        raise error(f"creating topic {topic}: {message}")
