"""Settings: every bad value stops start-up with the variable's name; README documents them all."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vigil.cli import app
from vigil.settings import ConfigError, VigilSettings, load_settings
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
