"""ModelRegistry against the real local Redis: versions, promote, rollback, pruning, loading,
the live-model watcher (hot-swap) and the `vigil models` commands."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import torch
from torch import nn
from typer.testing import CliRunner

from vigil.models.cli import app as models_app
from vigil.models.forecaster import build_forecaster
from vigil.models.registry import (
    LiveModelWatcher,
    ModelRegistry,
    RegistryError,
    UnknownVersionError,
    group_of,
)
from vigil.records import ModelAnnouncement
from vigil.settings import ModelConfig

pytestmark = pytest.mark.services

CONFIG = ModelConfig.model_validate(
    {"input_size": 2, "hidden_size": 8, "num_layers": 1, "window": 6, "horizon": 2}
)


@pytest.fixture
def app_id(run_id: str) -> str:
    return f"vigil-test-{run_id}"


@pytest.fixture
def registry(redis_client: redis.Redis, app_id: str) -> Iterator[ModelRegistry]:
    yield ModelRegistry(redis_client, app_id)
    keys = list(redis_client.scan_iter(match=f"vigil:{app_id}:*", count=500))
    if keys:
        redis_client.delete(*keys)


def _model(seed: int) -> nn.Module:
    return build_forecaster(CONFIG, seed=seed)


def _register(registry: ModelRegistry, seed: int, group: str = "default", **kw: Any) -> str:
    return registry.register(group, _model(seed), CONFIG, {"candidate_loss": 0.1 * seed}, **kw)


def test_register_list_and_get(registry: ModelRegistry) -> None:
    first = _register(registry, 1, note="bootstrap")
    second = registry.register(
        "default", _model(2), CONFIG, {"candidate_loss": float("nan"), "steps": 20}, parent=first
    )
    assert first.startswith("default-000001-") and second.startswith("default-000002-")
    assert group_of(second) == "default"
    assert [v.version for v in registry.list_versions("default")] == [first, second]
    info = registry.get("default", second)
    assert info.parent == first and info.note == "" and info.seq == 2
    assert info.config == CONFIG
    assert info.metrics == {"candidate_loss": None, "steps": 20}  # NaN stored as null
    assert info.size_bytes > 0 and len(info.weights_sha256) == 64
    assert second.endswith(info.weights_sha256[:8])
    assert registry.get("default", first).note == "bootstrap"
    assert registry.live("default") is None
    assert registry.groups() == ["default"]
    with pytest.raises(UnknownVersionError, match="unknown version"):
        registry.get("default", "default-000099-deadbeef")
    with pytest.raises(RegistryError, match="invalid group"):
        registry.live("Not A Group")


def test_promote_and_rollback(registry: ModelRegistry) -> None:
    v1, v2, v3 = (_register(registry, seed) for seed in (1, 2, 3))
    with pytest.raises(RegistryError, match="nothing is live"):
        registry.rollback("default")
    assert registry.promote("default", v1, reason="first")
    assert registry.promote("default", v2)
    assert registry.promote("default", v2) is False  # already live: nothing moves
    assert registry.promote("default", v3)
    assert registry.live("default") == v3
    assert registry.history("default") == [v3, v2, v1]
    assert registry.rollback("default", reason="bad alerts") == v2
    assert registry.live("default") == v2
    assert registry.rollback("default") == v1
    with pytest.raises(RegistryError, match=f"no earlier live version.*live: {v1}"):
        registry.rollback("default")
    assert registry.live("default") == v1
    actions = [(e["action"], e["version"]) for e in registry.events("default")]
    assert actions == [
        ("rollback", v1),
        ("rollback", v2),
        ("promote", v3),
        ("promote", v2),
        ("promote", v1),
    ]
    with pytest.raises(UnknownVersionError):
        registry.promote("default", "default-000042-00000000")
    assert registry.live("default") == v1


def test_groups_are_independent(registry: ModelRegistry) -> None:
    a = _register(registry, 1, group="sensors")
    b = _register(registry, 2, group="market")
    registry.promote("sensors", a)
    assert registry.live("market") is None
    assert b.startswith("market-000001-")
    assert registry.groups() == ["market", "sensors"]
    with pytest.raises(UnknownVersionError):
        registry.promote("market", a)  # a version belongs to its own group


def test_load_model_gives_identical_outputs(registry: ModelRegistry) -> None:
    original = _model(7).eval()
    version = registry.register("default", original, CONFIG, {})
    loaded = registry.load_model("default", version, device="cpu")
    assert not loaded.training
    x = torch.randn(5, CONFIG.window, CONFIG.input_size)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


def test_corrupt_weights_are_refused(registry: ModelRegistry, redis_client: redis.Redis) -> None:
    version = _register(registry, 1)
    key = f"vigil:{registry.app_id}:models:default:v:{version}"
    redis_client.hset(key, "weights", b"not torch")
    with pytest.raises(RegistryError, match="corrupt"):
        registry.load_model("default", version)


def test_old_versions_are_pruned_but_never_live_or_history(
    redis_client: redis.Redis, app_id: str, registry: ModelRegistry
) -> None:
    small = ModelRegistry(redis_client, app_id, keep_versions=3)
    v1 = _register(small, 1)
    small.promote("default", v1)
    v2 = _register(small, 2)
    small.promote("default", v2)
    later = [_register(small, seed) for seed in range(3, 9)]
    kept = [v.version for v in small.list_versions("default")]
    assert kept == [v1, v2, *later[-3:]]
    with pytest.raises(UnknownVersionError):
        small.load_model("default", later[0])
    assert small.rollback("default") == v1  # the predecessor survived pruning


def test_promotion_is_announced_on_the_channel(registry: ModelRegistry) -> None:
    version = _register(registry, 1)
    pubsub = registry.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(registry.channel("default"))
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    registry.promote("default", version, reason="better holdout loss")
    message = pubsub.get_message(timeout=5.0)
    pubsub.close()
    assert message is not None
    announcement = ModelAnnouncement.model_validate_json(message["data"])
    assert (announcement.group, announcement.version) == ("default", version)
    assert announcement.reason == "better holdout loss"


def test_watcher_hot_swaps_on_promotion_and_rollback(registry: ModelRegistry) -> None:
    v1, v2 = _register(registry, 1), _register(registry, 2)
    registry.promote("default", v1)
    swaps: list[tuple[str, nn.Module]] = []
    changed = threading.Event()

    def on_change(version: str, model: nn.Module) -> None:
        swaps.append((version, model))
        changed.set()

    # A long poll interval: within the test's wait only the pub/sub message can wake it.
    watcher = LiveModelWatcher(registry, "default", on_change, poll_interval_s=60, known_version=v1)
    watcher.start()
    try:
        assert watcher.wait_subscribed(5)
        registry.promote("default", v2)
        assert changed.wait(5), "watcher did not see the promotion"
        changed.clear()
        registry.rollback("default")
        assert changed.wait(5), "watcher did not see the rollback"
    finally:
        watcher.stop()
    assert [v for v, _ in swaps] == [v2, v1]
    assert watcher.current == v1
    x = torch.randn(3, CONFIG.window, CONFIG.input_size)
    with torch.no_grad():
        assert torch.equal(swaps[0][1](x), _model(2).eval()(x))


def test_watcher_check_polls_and_acknowledge_skips_own_promotion(registry: ModelRegistry) -> None:
    v1, v2 = _register(registry, 1), _register(registry, 2)
    seen: list[str] = []
    watcher = LiveModelWatcher(registry, "default", lambda v, _: seen.append(v))
    assert watcher.check() is False  # nothing live yet
    registry.promote("default", v1)
    assert watcher.check() is True
    watcher.acknowledge(v2)  # this worker promoted v2 itself and already serves it
    registry.promote("default", v2)
    assert watcher.check() is False
    assert seen == [v1]


# ---- the `vigil models` commands ---------------------------------------------------------
@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, app_id: str, services: Any) -> CliRunner:
    monkeypatch.setenv("VIGIL_APP_ID", app_id)
    return CliRunner()


def test_cli_list_promote_rollback(cli: CliRunner, registry: ModelRegistry) -> None:
    empty = cli.invoke(models_app, ["list"])
    assert empty.exit_code == 0 and "no versions registered" in empty.output
    v1 = _register(registry, 1, note="first")
    v2 = _register(registry, 2, parent=v1)

    promoted = cli.invoke(models_app, ["promote", v1])
    assert promoted.exit_code == 0, promoted.output
    assert f"promoted {v1} (group default)" in promoted.output
    again = cli.invoke(models_app, ["promote", v1, "--group", "default"])
    assert again.exit_code == 0 and "already live" in again.output
    assert cli.invoke(models_app, ["promote", v2]).exit_code == 0
    assert registry.live("default") == v2

    table = cli.invoke(models_app, ["list", "--group", "default"])
    assert table.exit_code == 0
    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in table.output.splitlines()[1:]
    }
    assert lines[v2].startswith("* ") and not lines[v1].startswith("*")
    assert "first" in lines[v1] and v1 in lines[v2]  # note, parent

    listed = json.loads(cli.invoke(models_app, ["list", "--json"]).output)
    assert [(row["version"], row["live"]) for row in listed] == [(v1, False), (v2, True)]

    back = cli.invoke(models_app, ["rollback"])
    assert back.exit_code == 0, back.output
    assert f"rolled back group default: {v2} -> {v1}" in back.output
    assert registry.live("default") == v1


def test_cli_errors_exit_1(cli: CliRunner, registry: ModelRegistry) -> None:
    unknown = cli.invoke(models_app, ["promote", "default-000123-abcdef12"])
    assert unknown.exit_code == 1
    assert "unknown version 'default-000123-abcdef12' in group 'default'" in unknown.output
    garbage = cli.invoke(models_app, ["promote", "latest"])
    assert garbage.exit_code == 1 and "not a version id" in garbage.output
    nothing = cli.invoke(models_app, ["rollback", "--group", "default"])
    assert nothing.exit_code == 1 and "nothing is live" in nothing.output
    v1 = _register(registry, 1)
    registry.promote("default", v1)
    single = cli.invoke(models_app, ["rollback"])
    assert single.exit_code == 1 and "no earlier live version" in single.output
    assert registry.live("default") == v1
