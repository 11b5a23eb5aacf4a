"""The model registry: every trained version of every model group, in Redis, with a live pointer.

Layout (``P = vigil:{app_id}:models``; one group's keys share the ``P:{group}:`` prefix)::

    vigil:{app_id}:model-groups   set     names of groups that have versions
    P:{group}:seq                 string  INCR counter behind version ids
    P:{group}:versions            zset    version id -> sequence number (oldest first)
    P:{group}:v:{version}         hash    weights (torch state_dict bytes), sha256, config (JSON
                                          ModelConfig), metrics (JSON), created, parent, note, seq
    P:{group}:live                string  the version serving inference
    P:{group}:history             list    live versions, newest first (head = live): rollback path
    P:{group}:log                 list    JSON promote/rollback events, newest first (capped)
    P:{group}:live-changed        pub/sub channel: a ModelAnnouncement on every promote/rollback

Version ids are ``{group}-{seq:06d}-{sha256(weights)[:8]}``: they sort by age, name their group,
and say which weights they hold. A promote or rollback moves the pointer, the history and the
log and publishes the announcement in one MULTI/EXEC transaction (with WATCH, retried on a
conflict), so two operators racing cannot leave the pointer and the history disagreeing.

Workers learn of a new live version without a restart through :class:`LiveModelWatcher`: it
listens on the channel for a fast reaction and also polls the cheap ``live`` key, because
pub/sub drops messages while a subscriber is disconnected.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import torch
from torch import nn

from vigil.models.config import ModelConfig
from vigil.records import ModelAnnouncement

log = logging.getLogger(__name__)

GROUP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DEFAULT_KEEP_VERSIONS = 50
LOG_LENGTH = 200

ModelBuilder = Callable[[ModelConfig], nn.Module]
T = TypeVar("T")


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says why."""


class UnknownVersionError(RegistryError, LookupError):
    """No such version in the group (never registered, or pruned)."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, without its weights (``load_model`` reads those)."""

    group: str
    version: str
    seq: int
    created: float
    parent: str | None
    note: str
    config: ModelConfig
    metrics: dict[str, Any]
    weights_sha256: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "version": self.version,
            "seq": self.seq,
            "created": self.created,
            "parent": self.parent,
            "note": self.note,
            "config": self.config.model_dump(),
            "metrics": self.metrics,
            "weights_sha256": self.weights_sha256,
            "size_bytes": self.size_bytes,
        }


def group_of(version: str) -> str:
    """The group a version id names (``default-000003-1a2b3c4d`` -> ``default``)."""
    parts = version.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not GROUP_NAME.match(parts[0]):
        raise UnknownVersionError(f"{version!r} is not a version id (<group>-<number>-<hash>)")
    return parts[0]


def stored_model_config(raw: str | bytes) -> ModelConfig:
    """A version's stored ``ModelConfig``. Versions stored before the calendar inputs existed
    have no ``calendar`` field and no such inputs: they read as ``off``, whatever the default."""
    data = json.loads(raw)
    if isinstance(data, dict):
        data.setdefault("calendar", "off")
        data.setdefault("season_lag", "off")  # likewise the seasonal-lag inputs
    return ModelConfig.model_validate(data)


def _default_builder(config: ModelConfig) -> nn.Module:
    from vigil.models.forecaster import build_forecaster  # heavy module, only needed to load

    return build_forecaster(config)


class ModelRegistry:
    """Versions, live pointers and rollback history of model groups, stored in Redis.

    The client must return bytes (``decode_responses=False``): weights are binary.
    ``builder`` rebuilds a network from its config (default: ``build_forecaster``).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        app_id: str,
        *,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        builder: ModelBuilder | None = None,
    ) -> None:
        if redis_client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("ModelRegistry needs a Redis client with decode_responses=False")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
        self.redis = redis_client
        self.app_id = app_id
        self.keep_versions = keep_versions
        self._builder = builder or _default_builder
        self._groups_key = f"vigil:{app_id}:model-groups"

    # ---- key names ------------------------------------------------------------------------
    def _key(self, group: str, *parts: str) -> str:
        if not GROUP_NAME.match(group):
            raise RegistryError(f"invalid group name {group!r} (expected {GROUP_NAME.pattern})")
        return ":".join((f"vigil:{self.app_id}:models", group, *parts))

    def channel(self, group: str) -> str:
        """The pub/sub channel announcing live-version changes of ``group``."""
        return self._key(group, "live-changed")

    # ---- writing --------------------------------------------------------------------------
    def register(
        self,
        group: str,
        model: nn.Module,
        config: ModelConfig,
        metrics: dict[str, Any],
        parent: str | None = None,
        note: str = "",
    ) -> str:
        """Store a version (not live yet; see ``promote``) and return its id."""
        weights = _state_dict_bytes(model)
        digest = hashlib.sha256(weights).hexdigest()
        seq = int(self.redis.incr(self._key(group, "seq")))
        version = f"{group}-{seq:06d}-{digest[:8]}"
        fields: dict[Any, Any] = {
            "weights": weights,
            "sha256": digest,
            "config": config.model_dump_json(),
            "metrics": json.dumps(_json_safe(metrics)),
            "created": repr(time.time()),
            "parent": parent or "",
            "note": note,
            "seq": seq,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(group, "v", version), mapping=fields)
        pipe.zadd(self._key(group, "versions"), {version: seq})
        pipe.sadd(self._groups_key, group)
        pipe.execute()
        self._prune(group)
        return version

    def promote(self, group: str, version: str, reason: str = "") -> bool:
        """Make ``version`` live (atomically, announced on the channel); False if it already was."""
        live_key, history_key = self._key(group, "live"), self._key(group, "history")
        version_key = self._key(group, "v", version)

        def move(pipe: Any) -> bool:
            if not pipe.exists(version_key):
                raise UnknownVersionError(f"unknown version {version!r} in group {group!r}")
            current = _text(pipe.get(live_key))
            if current == version:
                return False
            pipe.multi()
            pipe.set(live_key, version)
            pipe.lpush(history_key, version)
            pipe.ltrim(history_key, 0, self.keep_versions - 1)
            self._announce(pipe, group, "promote", version, current or None, reason)
            return True

        return self._transaction(move, live_key, history_key, version_key)

    def rollback(self, group: str, reason: str = "") -> str:
        """Return to the version that was live before the current one; its id is returned."""
        live_key, history_key = self._key(group, "live"), self._key(group, "history")

        def back(pipe: Any) -> str:
            history = [_text(v) for v in pipe.lrange(history_key, 0, 1)]
            if len(history) < 2:
                raise RegistryError(
                    f"group {group!r} has no earlier live version to roll back to"
                    + (f" (live: {history[0]})" if history else " (nothing is live)")
                )
            current, previous = history
            pipe.multi()
            pipe.lpop(history_key)
            pipe.set(live_key, previous)
            self._announce(pipe, group, "rollback", previous, current, reason)
            return str(previous)

        return self._transaction(back, live_key, history_key)

    def _announce(
        self, pipe: Any, group: str, action: str, version: str, before: str | None, reason: str
    ) -> None:
        now = time.time()
        event = {"action": action, "version": version, "from": before, "reason": reason, "at": now}
        pipe.lpush(self._key(group, "log"), json.dumps(event))
        pipe.ltrim(self._key(group, "log"), 0, LOG_LENGTH - 1)
        why = reason or (f"{action} from {before}" if before else action)
        announcement = ModelAnnouncement(group=group, version=version, at=now, reason=why)
        pipe.publish(self.channel(group), announcement.model_dump_json())

    def _prune(self, group: str) -> None:
        """Drop the oldest versions beyond ``keep_versions``, never live or in the history."""
        versions_key = self._key(group, "versions")
        live_key, history_key = self._key(group, "live"), self._key(group, "history")

        def prune(pipe: Any) -> None:
            old = [_text(v) for v in pipe.zrange(versions_key, 0, -(self.keep_versions + 1))]
            if not old:
                return
            keep = {_text(v) for v in pipe.lrange(history_key, 0, -1)}
            keep.add(_text(pipe.get(live_key)))
            doomed = [v for v in old if v not in keep]
            pipe.multi()
            for version in doomed:
                pipe.delete(self._key(group, "v", version))
            if doomed:
                pipe.zrem(versions_key, *doomed)

        self._transaction(prune, live_key, history_key)

    def _transaction(self, body: Callable[[Any], T], *watched: str) -> T:
        """Optimistic transaction: WATCH ``watched``, run ``body`` (reads, then ``multi()`` and
        queued writes), EXEC; start over if a watched key changed in between."""
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    value = body(pipe)
                    pipe.execute()
                    return value
                except redis.WatchError:
                    continue

    # ---- reading --------------------------------------------------------------------------
    def groups(self) -> list[str]:
        return sorted(_text(g) for g in self.redis.smembers(self._groups_key))

    def live(self, group: str) -> str | None:
        """The live version id (one GET; cheap enough to poll)."""
        value = self.redis.get(self._key(group, "live"))
        return _text(value) if value is not None else None

    def history(self, group: str) -> list[str]:
        """Live versions, newest first; ``history[1]`` is where ``rollback`` goes."""
        return [_text(v) for v in self.redis.lrange(self._key(group, "history"), 0, -1)]

    def events(self, group: str, limit: int = 20) -> list[dict[str, Any]]:
        """Recent promote/rollback events, newest first."""
        raw = self.redis.lrange(self._key(group, "log"), 0, limit - 1)
        return [json.loads(item) for item in raw]

    def list_versions(self, group: str) -> list[VersionInfo]:
        """Every kept version of ``group``, oldest first."""
        ids = [_text(v) for v in self.redis.zrange(self._key(group, "versions"), 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for version in ids:
            key = self._key(group, "v", version)
            pipe.hmget(key, _INFO_FIELDS)
            pipe.hstrlen(key, "weights")
        replies = pipe.execute()
        infos = []
        for i, version in enumerate(ids):
            values, size = replies[2 * i], replies[2 * i + 1]
            if values[0] is not None:  # pruned between the two reads
                infos.append(_info(group, version, values, size))
        return infos

    def get(self, group: str, version: str) -> VersionInfo:
        key = self._key(group, "v", version)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(key, _INFO_FIELDS)
        pipe.hstrlen(key, "weights")
        values, size = pipe.execute()
        if values[0] is None:
            raise UnknownVersionError(f"unknown version {version!r} in group {group!r}")
        return _info(group, version, values, size)

    def load_model(
        self, group: str, version: str, device: torch.device | str | None = None
    ) -> nn.Module:
        """Rebuild a version's network from its config and weights, in eval mode on ``device``."""
        key = self._key(group, "v", version)
        config_raw, weights, digest = self.redis.hmget(key, ["config", "weights", "sha256"])
        if config_raw is None or not isinstance(weights, bytes):
            raise UnknownVersionError(f"unknown version {version!r} in group {group!r}")
        if hashlib.sha256(weights).hexdigest() != _text(digest):
            raise RegistryError(f"weights of {version!r} do not match their sha256: corrupt entry")
        config = stored_model_config(config_raw)
        model = self._builder(config)
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        if device is not None:
            model.to(device)
        model.eval()
        return model


class LiveModelWatcher:
    """Keeps a worker on the live version of one group: calls ``on_change(version, model)``
    whenever the live pointer moves (promotion elsewhere, a rollback from the CLI).

    Runs on its own daemon thread, not as an asyncio task: loading a model deserialises weights
    with torch, which must stay off the event loop, and the redis client here is the blocking
    one. ``on_change`` is therefore called on the watcher thread; a worker hands the model to its
    inference thread (or loop) from there. A Redis outage is logged and retried; an
    ``on_change`` that raises is retried at the next poll.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        group: str,
        on_change: Callable[[str, nn.Module], None],
        *,
        poll_interval_s: float = 2.0,
        known_version: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.registry = registry
        self.group = group
        self.on_change = on_change
        self.poll_interval_s = poll_interval_s
        self.device = device
        self._current = known_version
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    @property
    def current(self) -> str | None:
        """The version this worker was last told about."""
        with self._lock:
            return self._current

    def acknowledge(self, version: str) -> None:
        """Tell the watcher this worker already serves ``version`` (e.g. it promoted it itself),
        so the announcement of that version does not reload the same weights."""
        with self._lock:
            self._current = version

    def check(self) -> bool:
        """Poll once: if the live pointer moved, load that version and call ``on_change``."""
        version = self.registry.live(self.group)
        if version is None or version == self.current:
            return False
        model = self.registry.load_model(self.group, version, self.device)
        self.on_change(version, model)
        with self._lock:
            self._current = version
        log.info("group %s: now serving model %s", self.group, version)
        return True

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"vigil-model-watcher-{self.group}", daemon=True
        )
        self._thread.start()

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Block until the channel subscription is active (tests and start-up ordering)."""
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        pubsub: Any = None
        next_poll = 0.0
        lost_since: float | None = None  # one log line per outage, not one per retry
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.registry.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.registry.channel(self.group))
                    self._subscribed.set()
                    next_poll = 0.0  # catch up on anything missed while unsubscribed
                    if lost_since is not None:
                        log.warning("group %s: model watcher has Redis again after %.1f s",
                                    self.group, time.monotonic() - lost_since)  # fmt: skip
                        lost_since = None
                message = pubsub.get_message(timeout=0.25)
                if message is not None or time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_interval_s
                    self.check()
            except redis.RedisError as exc:
                if lost_since is None:
                    lost_since = time.monotonic()
                    log.warning("group %s: model watcher lost Redis (%s); retrying",
                                self.group, exc)  # fmt: skip
                _close(pubsub)
                pubsub = None
                self._subscribed.clear()
                self._stop.wait(self.poll_interval_s)
            except Exception:
                log.exception("group %s: switching to the live model failed", self.group)
                self._stop.wait(self.poll_interval_s)
        _close(pubsub)


_INFO_FIELDS = ["seq", "created", "parent", "note", "config", "metrics", "sha256"]


def _info(group: str, version: str, values: list[Any], size: int) -> VersionInfo:
    seq, created, parent, note, config, metrics, digest = values
    return VersionInfo(
        group=group,
        version=version,
        seq=int(seq),
        created=float(created),
        parent=_text(parent) or None,
        note=_text(note),
        config=stored_model_config(config),
        metrics=json.loads(metrics),
        weights_sha256=_text(digest),
        size_bytes=int(size),
    )


def _state_dict_bytes(model: nn.Module) -> bytes:
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    """Metrics as strict JSON: NaN/Inf become null, tensors and numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _close(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(redis.RedisError):
            pubsub.close()
