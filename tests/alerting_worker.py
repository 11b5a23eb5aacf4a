"""Settings for a worker whose alerts go to one real webhook receiver (alerting tests)."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from vigil.settings import (
    AlertingConfig,
    BatchConfig,
    DetectorConfig,
    ModelConfig,
    ModelGroup,
    TrainingConfig,
    VigilSettings,
    WebhookEndpoint,
)


def alerting_worker_settings(
    settings: VigilSettings, receiver_url: str, signing_key: str, **update: Any
) -> VigilSettings:
    """A small untrained group named ``sensors`` that alerts after 20 events, every alert to
    ``receiver_url``, signed with ``signing_key``, grouped within a fraction of a second."""
    return settings.model_copy(
        update={
            "groups": [
                ModelGroup(
                    name="sensors",
                    model=ModelConfig(hidden_size=8, num_layers=1, window=8, horizon=1),
                    training=TrainingConfig(enabled=False),
                    detector=DetectorConfig(warmup_events=20, cooldown_events=5),
                )
            ],
            "batch": BatchConfig(max_size=64, max_wait_ms=5),
            "webhooks": [WebhookEndpoint(url=receiver_url, min_severity="info")],
            "webhook_signing_key": SecretStr(signing_key),
            "alerting": AlertingConfig(group_wait_s=0.2, group_interval_s=0.5),
        }
        | update
    )
