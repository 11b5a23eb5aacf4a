"""Settings: every bad value stops start-up with the variable's name; README documents them all."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from vigil import settings as settings_module
from vigil.cli import app
from vigil.settings import (
    ConfigError,
    VigilSettings,
    load_settings,
    unknown_variables,
)
from vigil.settings_table import rows

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("VIGIL_BATCH__MAX_SIZE", "0", "VIGIL_BATCH__MAX_SIZE"),
        ("VIGIL_KAFKA_BOOTSTRAP", "localhost", "VIGIL_KAFKA_BOOTSTRAP"),
        ("VIGIL_REDIS_URL", "http://x", "VIGIL_REDIS_URL"),
        ("VIGIL_DEVICE", "tpu", "VIGIL_DEVICE"),
        ("VIGIL_GROUPS", '[{"name": "Bad Name"}]', "VIGIL_GROUPS (item 0.name)"),
        ("VIGIL_GROUPS", '[{"name": "a"}, {"name": "a"}]', "VIGIL_GROUPS"),
        ("VIGIL_GROUPS", '[{"name": "m", "model": {"input_size": 3}}]', "VIGIL_GROUPS (item 0)"),
        ("VIGIL_GROUPS", "not json", "VIGIL_GROUPS"),
        ("VIGIL_WEBHOOKS", '[{"url": "ftp://x"}]', "VIGIL_WEBHOOKS (item 0.url)"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert named in str(error.value)


def test_the_cli_refuses_to_start_on_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TOPICS__PARTITIONS", "-3")
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "VIGIL_TOPICS__PARTITIONS" in result.output


def test_a_toml_file_is_read_and_variables_win(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "vigil.toml"
    config.write_text('app_id = "from-file"\nweb_port = 7000\n[batch]\nmax_size = 32\n')
    monkeypatch.setenv("VIGIL_CONFIG", str(config))
    monkeypatch.setenv("VIGIL_WEB_PORT", "7100")
    settings = load_settings()
    assert (settings.app_id, settings.web_port, settings.batch.max_size) == ("from-file", 7100, 32)


def test_a_missing_or_broken_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="VIGIL_CONFIG"):
        load_settings()
    broken = tmp_path / "broken.toml"
    broken.write_text("app_id = ")
    monkeypatch.setenv("VIGIL_CONFIG", str(broken))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()


def test_groups_route_keys_and_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "VIGIL_GROUPS",
        '[{"name": "market", "key_patterns": ["market.*"]},'
        ' {"name": "plant", "topics": ["plant.readings"]},'
        ' {"name": "rest"}]',
    )
    settings = load_settings()
    assert settings.group_for("market.AAPL").name == "market"  # type: ignore[union-attr]
    assert settings.group_for("sensor-1").name == "rest"  # type: ignore[union-attr]
    assert settings.group_for("sensor-1", "plant.readings").name == "plant"  # type: ignore[union-attr]
    assert settings.group_for("x", "unknown.topic") is None
    assert settings.input_topics() == ["vigil.readings", "plant.readings"]


def test_readme_documents_every_variable() -> None:
    text = README.read_text()
    missing = [variable for variable, _, _ in rows() if f"`{variable}`" not in text]
    assert not missing, f"README.md lacks {missing}: regenerate with `vigil settings --table`"


@pytest.mark.services
def test_kafka_storage_formats_with_a_cluster_id_that_starts_with_a_dash(
    services: VigilSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random ids are URL-safe base64, so about one in 64 starts with "-"."""
    import vigil.local_kafka as local_kafka

    dashed = next(i for i in iter(local_kafka.kafka_uuid, None) if i.startswith("-"))
    monkeypatch.setattr(local_kafka, "kafka_uuid", lambda: dashed)
    fresh = services.model_copy(
        update={"local": services.local.model_copy(update={"home": tmp_path})}
    )
    broker = local_kafka.LocalKafka(fresh)
    broker.libs = local_kafka.LocalKafka(services).fetch()  # the jars the session already has
    broker._write_config()
    broker._format()
    assert f"cluster.id={dashed}" in (broker.data / "meta.properties").read_text()


# ---- unknown settings ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("VIGIL_GROUPS", '[{"name": "a", "modle": {"window": 8}}]', "VIGIL_GROUPS (item 0.modle)"),
        ("VIGIL_GROUPS", '[{"name": "a", "model": {"windw": 8}}]', "item 0.model.windw"),
        ("VIGIL_GROUPS", '[{"name": "a", "training": {"lr": 1}}]', "item 0.training.lr"),
        ("VIGIL_GROUPS", '[{"name": "a", "detector": {"treshold": 0.9}}]', "detector.treshold"),
        ("VIGIL_TOPICS", '{"partitons": 3}', "VIGIL_TOPICS__PARTITONS"),
        ("VIGIL_WEBHOOKS", '[{"url": "https://x", "min_severty": "info"}]', "item 0.min_severty"),
        ("VIGIL_ALERTING", '{"group_wiat_s": 1}', "VIGIL_ALERTING__GROUP_WIAT_S"),
    ],
)
def test_an_unknown_field_in_a_json_setting_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match="Extra inputs are not permitted") as error:
        load_settings()
    assert named in str(error.value)


def test_every_nested_config_forbids_unknown_fields() -> None:
    """A config class added later without ``StrictModel`` would silently drop typos again."""
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        seen.add(model)
        for field in model.model_fields.values():
            for kind in (field.annotation, *get_args(field.annotation)):
                if isinstance(kind, type) and issubclass(kind, BaseModel) and kind not in seen:
                    walk(kind)

    walk(VigilSettings)
    lax = [m.__name__ for m in seen if m.model_config.get("extra") != "forbid"]
    assert len(seen) > 8 and not lax, f"{lax} accept unknown fields"


def test_an_unknown_vigil_variable_is_warned_about_once_by_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())
    monkeypatch.setenv("VIGIL_TOPICS__PARTITONS", "3")
    monkeypatch.setenv("VIGIL_TOPICS__PARTITIONS", "5")
    for name in ("VIGIL_CONFIG", "VIGIL_BASE_VENV", "VIGIL_SHARED_DATA", "VIGIL_KAFKA_HEAP"):
        monkeypatch.setenv(name, os.environ.get(name, "x"))
    monkeypatch.delenv("VIGIL_CONFIG")  # a file that does not exist would be an error
    with caplog.at_level(logging.WARNING, logger="vigil.settings"):
        settings = load_settings()
        load_settings()
    assert settings.topics.partitions == 5  # a warning, not an error, and the typo is ignored
    warned = [r.getMessage() for r in caplog.records if r.name == "vigil.settings"]
    assert len(warned) == 1, warned
    assert "VIGIL_TOPICS__PARTITONS" in warned[0]
    assert "did you mean VIGIL_TOPICS__PARTITIONS" in warned[0]


def test_variables_read_outside_the_settings_are_not_warned_about() -> None:
    """Every VIGIL_* variable the repository reads by hand (bootstrap, tests, one-off tools) must
    be declared, or everyone who sets it gets an "unknown setting" warning."""
    root = README.parent
    reads = [
        r"environ(?:\.get)?\(\s*[\"'](VIGIL_\w+)",  # os.environ.get(…), environ(…)
        r"environ\[[\"'](VIGIL_\w+)",
        r"getenv\(\s*[\"'](VIGIL_\w+)",
        r"envvar=[\"'](VIGIL_\w+)",  # typer options
        r"\$\{?(VIGIL_\w+?)(?::-|\}|\b)",  # shell
    ]
    files = [*root.glob("deploy/**/*.sh"), root / ".ci" / "run"]
    for folder in ("vigil", "models", "stream", "connectors", "bench", "tests"):
        files += [p for p in (root / folder).rglob("*.py") if p.is_file()]
    read = {
        name
        for path in files
        for pattern in reads
        for name in re.findall(pattern, path.read_text())
    }
    assert {"VIGIL_BASE_VENV", "VIGIL_KAFKA_HEAP", "VIGIL_SHARED_DATA"} <= read  # the scan works
    assert not unknown_variables(dict.fromkeys(read, ""))
