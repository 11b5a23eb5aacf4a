"""`vigil.topics.ensure_topics` against the real broker: partitions and replication factor come
from the settings (VIGIL_TOPICS__PARTITIONS, VIGIL_TOPICS__REPLICATION_FACTOR)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from vigil.settings import VigilSettings, load_settings
from vigil.topics import TopicCreationError, ensure_topics, topic_names

pytestmark = pytest.mark.services


async def describe(settings: VigilSettings, names: list[str]) -> dict[str, list[int]]:
    """Replica count of each partition, by topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        found = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: [len(p["replicas"]) for p in t["partitions"]] for t in found}


def test_topics_get_the_configured_partitions_and_replicas(settings: VigilSettings) -> None:
    created = asyncio.run(ensure_topics(settings))
    assert sorted(created) == sorted(topic_names(settings))
    replicas = asyncio.run(describe(settings, created))
    assert all(r == [1] * settings.topics.partitions for r in replicas.values()), replicas
    assert asyncio.run(ensure_topics(settings)) == []  # idempotent


def test_a_replication_factor_the_cluster_cannot_meet_is_refused(settings: VigilSettings) -> None:
    """The setting reaches the broker: the local one has one node, so 2 replicas are refused."""
    wanting_two = settings.model_copy(
        update={"topics": settings.topics.model_copy(update={"replication_factor": 2})}
    )
    with pytest.raises(TopicCreationError, match="VIGIL_TOPICS__REPLICATION_FACTOR=2") as refused:
        asyncio.run(ensure_topics(wanting_two, [settings.topics.readings]))
    assert f"refused to create topic {settings.topics.readings}" in str(refused.value)


def test_replication_factor_is_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TOPICS__REPLICATION_FACTOR", "3")
    assert load_settings().topics.replication_factor == 3
    monkeypatch.delenv("VIGIL_TOPICS__REPLICATION_FACTOR")
    assert load_settings().topics.replication_factor == 1
