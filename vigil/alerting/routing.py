"""Which alerts of a notification go out: grouping keys, inhibition, and the routing decision.

* **Grouping** — alerts with the same group key (``alerting.group_by``, default the series key)
  that arrive within ``group_wait_s`` go out as ONE notification (see :mod:`.grouping`).
* **Inhibition** — while an alert matching a rule's ``source_match`` fires, alerts matching its
  ``target_match`` (equal on the ``equal`` fields) are not sent: a MARKET halt mutes the tickers.
* **Silences** — matchers with a time range, created by people (see :mod:`.silences`).

A "resolved" goes out exactly when its "firing" went out: if the firing was silenced or
inhibited the receiver never opened the incident, so it is not told it closed; and a resolve of
an incident it was told about is never muted, or the incident would stay open there forever.
Pure functions only; the Redis stores live in their own modules.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from vigil.records import Alert
from vigil.settings import AlertMatcher, InhibitRule

GroupField = Literal["key", "group", "severity"]


class Mute(Protocol):
    """What :func:`route` needs of a silence (:class:`~.silences.Silence` is one); a protocol
    so routing does not import the silence store, which imports :func:`matches` from here."""

    @property
    def id(self) -> str: ...

    def mutes(self, alert: Alert, now: float) -> bool: ...


def alert_identity(alert: Alert) -> str:
    """``<alert_id>:<status>``: the unit of deduplication and the Idempotency-Key of one alert."""
    return f"{alert.alert_id}:{alert.status}"


def matches(matcher: AlertMatcher, alert: Alert) -> bool:
    return (
        fnmatch.fnmatchcase(alert.key, matcher.key)
        and fnmatch.fnmatchcase(alert.group, matcher.group)
        and fnmatch.fnmatchcase(alert.severity, matcher.severity)
    )


def group_key(alert: Alert, by: Sequence[GroupField]) -> str:
    """``key=AAPL`` or ``group=stocks,severity=critical``: which notification an alert joins."""
    if not by:
        return "all"
    return ",".join(f"{name}={getattr(alert, name)}" for name in by)


def inhibiting_alert(
    target: Alert, firing: Iterable[Alert], rules: Sequence[InhibitRule]
) -> Alert | None:
    """The firing alert that mutes ``target`` under some rule, if any (never ``target`` itself)."""
    sources = [a for a in firing if a.status == "firing" and a.alert_id != target.alert_id]
    for rule in rules:
        if not matches(rule.target_match, target):
            continue
        for source in sources:
            if matches(rule.source_match, source) and all(
                getattr(source, name) == getattr(target, name) for name in rule.equal
            ):
                return source
    return None


@dataclass
class Notification:
    """Alerts of one group that go out together; its id is stable across retries and restarts."""

    notification_id: str
    group_key: str
    alerts: list[Alert]

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"


@dataclass
class RoutingDecision:
    send: list[Alert] = field(default_factory=list)
    suppressed: list[tuple[Alert, str]] = field(default_factory=list)  # (alert, why)


def route(
    alerts: Sequence[Alert], *, now: float, silences: Sequence[Mute], firing: Sequence[Alert],
    rules: Sequence[InhibitRule], firing_suppressed: set[str],
) -> RoutingDecision:  # fmt: skip
    """Which alerts of a notification go out. ``firing_suppressed``: ids whose firing was muted."""
    decision = RoutingDecision()
    muted_here: set[str] = set()  # a firing muted in this very notification mutes its resolve too
    for alert in alerts:
        if alert.status == "resolved":
            if alert.alert_id in firing_suppressed or alert.alert_id in muted_here:
                decision.suppressed.append((alert, "its firing notification was suppressed"))
            else:
                decision.send.append(alert)
            continue
        silence = next((s for s in silences if s.mutes(alert, now)), None)
        if silence is not None:
            decision.suppressed.append((alert, f"silenced by {silence.id}"))
            muted_here.add(alert.alert_id)
            continue
        source = inhibiting_alert(alert, firing, rules)
        if source is not None:
            decision.suppressed.append((alert, f"inhibited by {source.alert_id} ({source.key})"))
            muted_here.add(alert.alert_id)
            continue
        decision.send.append(alert)
    return decision
