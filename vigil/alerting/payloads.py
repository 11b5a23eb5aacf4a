"""What goes to an endpoint: its stable id and safe label, which alerts it wants, and the body.

Pure functions; ``json`` bodies are Vigil's own documented payload, ``slack`` bodies an incoming-
webhook message (``text`` for notifications, ``blocks`` for the message).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from vigil.alerting.routing import Notification, alert_identity
from vigil.records import Alert
from vigil.settings import WebhookEndpoint

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def endpoint_id(endpoint: WebhookEndpoint) -> str:
    """Stable id of an endpoint for Redis keys: the URL and format it is posted in."""
    return hashlib.sha256(f"{endpoint.url}|{endpoint.format}".encode()).hexdigest()[:16]


def endpoint_label(endpoint: WebhookEndpoint) -> str:
    """Name in metrics and dead letters: ``name`` if set, else the URL without credentials, query
    or token-like path segments (Slack-style URLs carry their secret in the path)."""
    if endpoint.name:
        return endpoint.name
    parts = urlsplit(endpoint.url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    segments = parts.path.split("/")
    kept = [s if len(s) < 16 else "…" for s in segments]
    label = f"{parts.scheme}://{netloc}{'/'.join(kept)}"
    if kept != segments or parts.query or parts.username or parts.password:
        label += "#" + hashlib.sha256(endpoint.url.encode()).hexdigest()[:8]
    return label


def endpoint_wants(endpoint: WebhookEndpoint, alert: Alert) -> bool:
    return SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[endpoint.min_severity] and (
        fnmatch.fnmatchcase(alert.key, endpoint.key_pattern)
    )


def render_json(notification: Notification, alerts: Sequence[Alert]) -> dict[str, Any]:
    status = "firing" if any(a.status == "firing" for a in alerts) else "resolved"
    return {
        "version": 1,
        "notification_id": notification.notification_id,
        "group_key": notification.group_key,
        "status": status,
        "alerts": [
            a.model_dump(mode="json") | {"idempotency_key": alert_identity(a)} for a in alerts
        ],
    }


_SLACK_MAX_ALERTS = 20
_SEVERITY_ICON = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def render_slack(notification: Notification, alerts: Sequence[Alert]) -> dict[str, Any]:
    """Slack incoming-webhook payload: ``text`` for notifications, ``blocks`` for the message."""
    firing = [a for a in alerts if a.status == "firing"]
    resolved = [a for a in alerts if a.status == "resolved"]
    parts = [f"{len(firing)} firing"] if firing else []
    parts += [f"{len(resolved)} resolved"] if resolved else []
    counts = ", ".join(parts)
    title = f"Vigil: {counts} ({notification.group_key})"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}}
    ]
    for alert in alerts[:_SLACK_MAX_ALERTS]:
        icon = (
            ":white_check_mark:" if alert.status == "resolved" else _SEVERITY_ICON[alert.severity]
        )
        last = f"{alert.recent_values[-1]:.6g}" if alert.recent_values else "n/a"
        expected = f"{alert.forecast[0]:.6g}" if alert.forecast else "n/a"
        text = (
            f"{icon} *{alert.key}* ({alert.group}) {alert.status.upper()} {alert.severity}\n"
            f"score {alert.score:.3f} · last {last} · forecast {expected} · model "
            f"{alert.provenance.model_version}"
        )
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    if len(alerts) > _SLACK_MAX_ALERTS:
        more = f"…and {len(alerts) - _SLACK_MAX_ALERTS} more"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return {"text": title, "blocks": blocks}


def render_body(
    endpoint: WebhookEndpoint, notification: Notification, alerts: Sequence[Alert]
) -> bytes:
    render = render_slack if endpoint.format == "slack" else render_json
    return json.dumps(render(notification, alerts), separators=(",", ":")).encode()
