"""Creates Vigil's topics with the configured partition count (idempotent)."""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from vigil.connectors.producer import kafka_client_options
from vigil.local_kafka import LocalServiceError
from vigil.redaction import mask_credentials
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
                _raise_topic_errors(response, settings)
        return missing
    finally:
        await admin.close()


class TopicCreationError(LocalServiceError, KafkaError):
    """The broker refused to create a topic (one line for `vigil up`, connectors and workers)."""

    def __str__(self) -> str:  # KafkaError would put the class name in front
        return str(self.args[0]) if self.args else type(self).__name__


def _raise_topic_errors(response: Any, settings: VigilSettings) -> None:
    """aiokafka returns per-topic errors instead of raising: a replication factor above the
    broker count or a missing Create ACL must not pass for success."""
    for topic, code, *detail in response.topic_errors:
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        message = detail[0] if detail and detail[0] else for_code(code).__name__
        raise TopicCreationError(
            f"Kafka at {mask_credentials(settings.bootstrap)} refused to create topic {topic}:"
            f" {message} (VIGIL_TOPICS__PARTITIONS={settings.topics.partitions},"
            f" VIGIL_TOPICS__REPLICATION_FACTOR={settings.topics.replication_factor})"
        )
