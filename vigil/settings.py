"""One settings object for every part of Vigil, read from ``VIGIL_*`` variables and a TOML file.

Nested settings use ``__`` in variable names (``VIGIL_BATCH__MAX_SIZE=128``); lists and objects
(``VIGIL_GROUPS``, ``VIGIL_WEBHOOKS``) are JSON. A bad value stops start-up with a
:class:`ConfigError` that names the variable, so nobody has to guess which knob was wrong; so
does an unknown field inside a value (``"modle"``). An unknown ``VIGIL_*`` variable is only
warned about (other tools may share the prefix). Errors never echo a secret (vigil.redaction).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

# The models own their parameter schemas and ConfigError; re-exported so every other part
# keeps importing them from here (``as`` marks them as re-exports for mypy).
from vigil.models.config import BatchConfig as BatchConfig
from vigil.models.config import ConfigError as ConfigError
from vigil.models.config import ModelConfig as ModelConfig
from vigil.models.config import StrictModel as StrictModel
from vigil.models.config import TrainingConfig as TrainingConfig
from vigil.redaction import (
    mask_credentials,
    mask_webhook_url,
    scrub,
    url_secrets,
    userinfo_passwords,
)

ENV_PREFIX = "VIGIL_"
CONFIG_FILE_VARIABLE = "VIGIL_CONFIG"
# VIGIL_* variables that are not settings: read by the bootstrap, the tests or one tool each.
NON_SETTING_VARIABLES = frozenset(
    {
        CONFIG_FILE_VARIABLE,
        "VIGIL_BASE_VENV",  # deploy/local/bootstrap.sh: the shared dependencies venv
        "VIGIL_VENV",  # its older name
        "VIGIL_PYTHON",  # the interpreter bootstrap.sh builds venvs with
        "VIGIL_SHARED_DATA",  # tests: the shared data folder
        "VIGIL_KAFKA_HEAP",  # JVM heap of the local broker
        "VIGIL_DEMO_WEB_PORT",  # `vigil demo`'s web port
        "VIGIL_MQTT_PASSWORD",  # `vigil connect mqtt --password`
    }
)
SECRET_VARIABLES = ("VIGIL_KAFKA_SASL_PASSWORD", "VIGIL_WEBHOOK_SIGNING_KEY", "VIGIL_WEB_TOKEN")
log = logging.getLogger(__name__)


class ReferenceConfig(StrictModel):
    """Reference mode: a known-normal period per key, then scores of departures from it that a
    sustained fault cannot train away (``vigil.models.reference.ReferenceProfile``)."""

    mode: Literal["off", "first_events"] = Field(
        "off",
        description="off, or first_events: each key's first `events` events are its known-normal"
        " reference; later events are scored against it, jointly across channels",
    )
    events: int = Field(
        1000,
        ge=200,
        le=10_000,
        description="events in the reference period (their raw values are kept in the key's"
        " state until it ends: about 12 bytes per event and channel)",
    )
    window: int = Field(
        20, ge=2, le=1000, description="events the level, spread and error features average over"
    )
    order: int = Field(
        24, ge=1, le=64, description="lags of the per-channel autoregression fit on the reference"
    )
    smooth: int = Field(
        1, ge=1, le=1000, description="events the T² statistic is smoothed over (1: none)"
    )
    fusion: Literal["reference", "max"] = Field(
        "reference",
        description="the published score in reference mode: the reference part alone, or the max"
        " of it and the other detectors' fused score",
    )

    @model_validator(mode="after")
    def _long_enough(self) -> ReferenceConfig:
        # as vigil.models.reference.min_reference_events: each half fits, then calibrates
        if self.events < 2 * (2 * (self.order + 1) + self.window + self.smooth):
            raise ValueError(
                "reference.events must be at least 2 * (2 * (order + 1) + window + smooth)"
            )
        return self


class DetectorConfig(StrictModel):
    """Turns forecast residuals into a score in [0, 1] and incidents with hysteresis."""

    threshold: float = Field(0.99, gt=0, lt=1, description="score that opens an incident")
    clear_threshold: float = Field(0.9, gt=0, lt=1, description="score below which it closes")
    cooldown_events: int = Field(10, ge=0, description="events after an incident before another")
    warmup_events: int = Field(64, ge=0, description="events per new key with no alerts")
    short_window: int = Field(
        80,
        ge=1,
        description="events the likelihood averages evidence over (80 and 2000: chosen on NAB)",
    )
    long_window: int = Field(
        2000, ge=2, description="events of history that average is compared with"
    )
    surprisal_cap: float = Field(
        15.0,
        gt=0,
        le=700,
        description="the most evidence one residual brings to the likelihood (its surprisal"
        " -log p, in nats; 15 is about 5 sigmas): one wild error cannot swamp the average, so"
        " runs of moderately unusual errors stand out",
    )
    interval_alpha: float = Field(0.1, gt=0, lt=1, description="1 - nominal interval coverage")
    fusion: Literal["likelihood", "novelty", "max", "corroborated"] = Field(
        "likelihood",
        description="how the published score fuses the detectors' parts: one part alone, their"
        " max, or `corroborated` (the likelihood, capped just below `threshold` unless the"
        " novelty detector also sees a new context)",
    )
    novelty_bins: int = Field(8, ge=1, le=64, description="value bins of the novelty detector")
    novelty_orders: int = Field(
        2, ge=0, le=8, description="novelty contexts: the last 1 .. orders + 1 bins"
    )
    novelty_capacity: int = Field(
        4096, ge=64, le=1_000_000, description="contexts remembered per key (least recent go)"
    )
    novelty_rest_events: int = Field(
        150, ge=0, description="events the novelty part stays 0 after a high novelty"
    )
    range_tolerance: float | None = Field(
        0.05,
        ge=0,
        le=10,
        description="range break: a value beyond every value the key has shown by more than this"
        " share of that range scores 1.0 whatever the fusion rule (after `warmup_events`; NAB's"
        " HTM 'spatial anomaly'); null turns the part off",
    )
    reference: ReferenceConfig = Field(
        default_factory=ReferenceConfig,
        description="reference mode for sustained faults (off by default)",
    )

    @model_validator(mode="after")
    def _clear_below_open(self) -> DetectorConfig:
        if self.clear_threshold >= self.threshold:
            raise ValueError("clear_threshold must be below threshold")
        if self.short_window >= self.long_window:
            raise ValueError("short_window must be below long_window")
        return self


class ModelGroup(StrictModel):
    """A model config and the series it serves; groups run side by side in one deployment."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    key_patterns: list[str] = Field(default_factory=lambda: ["*"])
    topics: list[str] = Field(default_factory=list, description="empty = the readings topic")
    channels: list[str] = Field(
        default_factory=list, description="names of the values of a multivariate reading, in order"
    )
    inference: Literal["window", "stateful"] = Field(
        "window",
        description="window: one pass over the last `window` values per event; stateful: one"
        " LSTM step per event from the key's stored hidden state (re-warmed from the window"
        " after a model swap or a gap)",
    )
    gap_policy: Literal["carry_forward", "interpolate", "mask"] = Field(
        "carry_forward", description="how missing values are filled in windows (never NaN)"
    )
    max_abs_value: float = Field(
        1e12,
        gt=0,
        description="a reading whose magnitude exceeds this is dead-lettered as out_of_range"
        " (finite but absurd values would swamp the key's normaliser)",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)

    @model_validator(mode="after")
    def _channels_match_input(self) -> ModelGroup:
        if self.channels and len(self.channels) != self.model.input_size:
            raise ValueError(
                f"channels has {len(self.channels)} names"
                f" but model.input_size is {self.model.input_size}"
            )
        if not self.channels and self.model.input_size != 1:
            raise ValueError("a multivariate group (model.input_size > 1) needs channel names")
        return self

    def serves(self, key: str, topic: str | None = None) -> bool:
        if self.topics and topic is not None and topic not in self.topics:
            return False
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.key_patterns)


class TopicNames(StrictModel):
    readings: str = Field("vigil.readings", description="readings in (key = series id)")
    predictions: str = Field("vigil.predictions", description="one forecast per event")
    alerts: str = Field("vigil.alerts", description="one record per incident change")
    dead_letters: str = Field("vigil.dead-letters", description="rejected records with reasons")
    model_versions: str = Field("vigil.model-versions", description="live-version announcements")
    drift: str = Field("vigil.drift", description="regime changes in forecast residuals")
    partitions: int = Field(4, ge=1, le=1024, description="partitions of topics Vigil creates")
    replication_factor: int = Field(
        1,
        ge=1,
        le=32,
        description="replicas of topics Vigil (and Faust, for its internal topics) creates;"
        " 3 on a production cluster",
    )

    @classmethod
    def named(cls, prefix: str, partitions: int) -> TopicNames:
        """Every topic under ``prefix`` (``prefix.readings``, …): a test's or a benchmark's own."""
        return cls(
            readings=f"{prefix}.readings",
            predictions=f"{prefix}.predictions",
            alerts=f"{prefix}.alerts",
            dead_letters=f"{prefix}.dead-letters",
            model_versions=f"{prefix}.model-versions",
            drift=f"{prefix}.drift",
            partitions=partitions,
        )


class StreamConfig(StrictModel):
    """How the stream runs. Out-of-order events are put back in order within each batch (the
    batch is the reorder buffer, ``batch.max_wait_ms`` its hold time); an event older than its
    key's newest processed one goes to the dead-letter topic as ``late``."""

    alert_stream_maxlen: int = Field(10_000, ge=10, description="alerts kept in the Redis stream")
    session_timeout_s: float = Field(
        10.0, ge=6, le=300, description="how soon a dead worker's partitions move to the others"
    )
    max_future_s: float = Field(
        86_400.0,
        gt=0,
        description="a reading stamped more than this ahead of its Kafka timestamp is"
        " dead-lettered as future (it would make every later reading of its key late)",
    )
    idle_key_evict_s: float = Field(
        3_600.0,
        ge=0,
        description="a key unseen this long leaves worker memory (its state stays in Redis);"
        " 0 = never",
    )
    state_ttl_s: float = Field(
        30 * 86_400.0,
        ge=0,
        description="Redis keeps a key's state this long after its last event; 0 = forever",
    )
    dead_letter_max_bytes: int = Field(
        16_384,
        ge=0,
        le=262_144,
        description="bytes of a rejected record's value copied into its dead letter; the rest"
        " stays in the source topic at the offset the dead letter names",
    )


class WebhookEndpoint(StrictModel):
    url: str = Field(pattern=r"^https?://")
    min_severity: Literal["info", "warning", "critical"] = "warning"
    key_pattern: str = "*"
    format: Literal["json", "slack"] = "json"
    max_concurrency: int = Field(4, ge=1, le=256)
    max_attempts: int = Field(8, ge=1, le=100)
    timeout_s: float = Field(5.0, gt=0)
    retries_per_minute: int = Field(60, ge=1, description="retry budget; no retry storms")
    name: str | None = Field(
        None, description="label in metrics and dead letters; default: the URL minus secrets"
    )
    backoff_base_s: float = Field(0.5, gt=0, description="first retry waits up to this long")
    backoff_max_s: float = Field(60.0, gt=0, description="cap of the exponential back-off")
    failure_threshold: int = Field(5, ge=1, description="failures in a row that open the circuit")
    cooldown_s: float = Field(30.0, gt=0, description="open circuit waits this long, then probes")


class AlertMatcher(StrictModel):
    """Glob patterns on an alert's key, group and severity (silences and inhibition rules)."""

    key: str = "*"
    group: str = "*"
    severity: str = "*"


class InhibitRule(StrictModel):
    """While an alert matching ``source_match`` fires, alerts matching ``target_match`` (and
    equal to it on the ``equal`` fields) are not sent, e.g. a MARKET halt mutes every ticker."""

    source_match: AlertMatcher
    target_match: AlertMatcher = Field(default_factory=AlertMatcher)
    equal: list[Literal["key", "group", "severity"]] = Field(default_factory=list)


class AlertingConfig(StrictModel):
    """Alertmanager-style routing before webhooks: grouping, inhibition, delivery bookkeeping."""

    group_by: list[Literal["key", "group", "severity"]] = Field(
        default=["key"], description="fields whose values make alerts one notification"
    )
    group_wait_s: float = Field(2.0, ge=0, description="a new group waits this long for company")
    group_interval_s: float = Field(
        30.0, ge=0, description="later alerts of a notified group wait this long after it"
    )
    inhibit_rules: list[InhibitRule] = Field(default_factory=list)
    poll_interval_s: float = Field(
        0.25, gt=0, description="how often Redis is checked for due work"
    )
    retention_s: float = Field(
        7 * 86400.0, gt=0, description="how long delivered ids are remembered (dedup window)"
    )
    in_worker: bool = Field(
        True,
        description="the worker runs the alerts consumer itself; false when `vigil alerting run`"
        " runs it as its own process",
    )
    max_delivery_age_s: float | None = Field(
        None,
        gt=0,
        description="while an endpoint's circuit is open, a delivery pending longer than this is"
        " dead-lettered; unset = the endpoint's retry window (back-off ceilings plus timeouts)",
    )
    lease_margin_s: float = Field(
        30.0,
        gt=0,
        description="a delivery claimed by a process that died is retried after the endpoint's"
        " timeout_s plus this",
    )


class LocalServices(StrictModel):
    """Where `vigil up` puts the Kafka and Redis it starts when none is configured."""

    kafka_version: str = Field("4.1.1", description="Apache Kafka fetched from Maven Central")
    kafka_port: int = Field(19092, ge=1024, le=65535, description="local broker port")
    controller_port: int = Field(19093, ge=1024, le=65535, description="local KRaft controller")
    redis_port: int = Field(16379, ge=1024, le=65535, description="local redis-server port")
    home: Path = Field(Path(".vigil"), description="logs, data and jars of local services")


class VigilSettings(BaseSettings):
    """Everything Vigil reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port]; unset = the local broker `vigil up` starts"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how Vigil talks to Kafka; SASL_SSL for a secured cluster"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; needed when the protocol is SASL_*"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user, e.g. a KafkaUser")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password; from a Secret, never a ConfigMap"
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL)"
    )
    redis_url: str | None = Field(None, description="redis://…; unset = the local redis-server")
    app_id: str = Field(
        "vigil", pattern=r"^[A-Za-z0-9._-]+$", description="Faust app and consumer group"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch device; auto = CUDA when present, else CPU"
    )
    torch_threads: int = Field(
        1, ge=1, le=256, description="intra-op threads for torch; 1 leaves a core to the event loop"
    )
    web_port: int = Field(6066, ge=1, le=65535, description="worker web server: health, metrics")
    web_host: str = Field(
        "127.0.0.1", min_length=1, description="address the web server binds; 0.0.0.0 in containers"
    )
    web_token: SecretStr | None = Field(
        None, description="bearer token for the web UI's write actions; unset = read-only"
    )
    web_history: bool = Field(
        True,
        description="keep each key's chart history in Redis (a consumer of the output topics in"
        " the worker); off saves that work: charts then start from the page's first live point",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    topics: TopicNames = Field(default_factory=TopicNames)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    groups: list[ModelGroup] = Field(
        default_factory=lambda: [ModelGroup(name="default")],
        description="model groups; the first whose key_patterns match a key serves it",
    )
    webhooks: list[WebhookEndpoint] = Field(
        default_factory=list, description="alert receivers: JSON list of {url, min_severity, …}"
    )
    webhook_signing_key: SecretStr | None = Field(None, description="HMAC-SHA256 key for webhooks")
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    local: LocalServices = Field(default_factory=LocalServices)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _hosts_have_ports(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for host in value.split(","):
            name, _, port = host.strip().rpartition(":")
            if not name or not port.isdigit():
                raise ValueError("expected host:port[,host:port]")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("groups")
    @classmethod
    def _unique_group_names(cls, groups: list[ModelGroup]) -> list[ModelGroup]:
        names = [g.name for g in groups]
        if not groups:
            raise ValueError("at least one model group is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        return groups

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Variables win over the file, so one deployment file can be tuned per environment.
        return (init_settings, _KnownEnvSource(settings_cls), _TomlFileSource(settings_cls))

    # ---- derived values -------------------------------------------------------------------
    @property
    def local_kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.local.kafka_port}"

    @property
    def local_redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.local.redis_port}/0"

    @property
    def bootstrap(self) -> str:
        """The broker Vigil talks to: the configured one or the local one."""
        return self.kafka_bootstrap or self.local_kafka_bootstrap

    @property
    def redis(self) -> str:
        return self.redis_url or self.local_redis_url

    def group_for(self, key: str, topic: str | None = None) -> ModelGroup | None:
        """The first group that serves this key on this topic (groups without topics: readings)."""
        topic = topic or self.topics.readings
        for group in self.groups:
            if not group.topics and topic != self.topics.readings:
                continue
            if group.serves(key, topic):
                return group
        return None

    def input_topics(self) -> list[str]:
        topics = [self.topics.readings]
        for group in self.groups:
            topics.extend(t for t in group.topics if t not in topics)
        return topics


@functools.cache
def setting_variables(
    model: type[BaseModel] = VigilSettings, prefix: str = ENV_PREFIX
) -> frozenset[str]:
    """Every variable that sets something: a field, and each field of a nested config."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        names.add(variable)
        kinds = [field.annotation]
        if get_origin(field.annotation) in (Union, UnionType):  # Optional[Config]
            kinds += get_args(field.annotation)
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                names |= setting_variables(kind, variable + "__")
    return frozenset(names)


_warned: set[str] = set()


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``VIGIL_*`` variables that are neither a setting nor a known tool variable (typos)."""
    known = setting_variables() | NON_SETTING_VARIABLES
    environ = os.environ if environ is None else environ
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )


def _warn_unknown(names: list[str]) -> None:
    """Warn once per process and name: another tool may share the prefix, so not an error."""
    known = sorted(setting_variables())
    for name in names:
        if name in _warned:
            continue
        _warned.add(name)
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning("ignoring %s: Vigil has no such setting%s", name, hint)


class _KnownEnvSource(EnvSettingsSource):
    """The environment minus unknown ``VIGIL_*`` names, which are warned about instead: left in,
    ``VIGIL_TOPICS__PARTITONS`` would be an extra field of ``topics`` (an error)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        unknown = unknown_variables()
        _warn_unknown(unknown)
        dropped = {name.lower() for name in unknown}
        return {k: v for k, v in super()._load_env_vars().items() if k.lower() not in dropped}


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the optional file named by ``VIGIL_CONFIG``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_VARIABLE)
        if not path:
            return {}
        try:
            with open(path, "rb") as handle:
                return tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"{CONFIG_FILE_VARIABLE}: no such file {path!r}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{CONFIG_FILE_VARIABLE}: {path!r} is not valid TOML: {exc}") from exc


def variable_name(location: tuple[str | int, ...]) -> str:
    """Turn a pydantic error location into the variable a user sets, e.g. VIGIL_BATCH__MAX_SIZE."""
    head: list[str] = []
    tail: list[str] = []
    for part in location:
        if isinstance(part, int) or tail:
            tail.append(str(part))
        else:
            head.append(part)
    name = ENV_PREFIX + "__".join(head).upper()
    return name + (f" (item {'.'.join(tail)})" if tail else "")


def _shown_input(location: tuple[str | int, ...], value: Any) -> str:
    """The rejected value for the message, with its secrets masked (never a password)."""
    if isinstance(value, dict) or (location and location[0] in _SECRET_FIELDS):
        return ""
    if isinstance(value, str) and location[:1] == ("webhooks",):
        return f" (got {mask_webhook_url(value)!r})"
    return f" (got {mask_credentials(repr(value))})"


_SECRET_FIELDS = {"kafka_sasl_password", "webhook_signing_key", "web_token"}


def raw_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Secret strings in the environment, parsed or not: a bad value must not echo them."""
    environ = os.environ if environ is None else environ
    found = [environ[name] for name in SECRET_VARIABLES if environ.get(name)]
    for name in ("VIGIL_REDIS_URL", "VIGIL_KAFKA_BOOTSTRAP"):
        found += url_secrets(environ.get(name, ""))
    for url in re.findall(r"[a-z]+://[^\s\"']+", environ.get("VIGIL_WEBHOOKS", "")):
        found += url_secrets(url)
    return found


def settings_secrets(settings: VigilSettings) -> list[str]:
    """Every raw secret string held by ``settings`` (for :func:`~vigil.redaction.scrub`)."""
    found: list[str] = []
    for secret in (settings.kafka_sasl_password, settings.webhook_signing_key, settings.web_token):
        if secret is not None:
            found.append(secret.get_secret_value())
    for value in (settings.redis_url, settings.kafka_bootstrap):
        if value:
            found += userinfo_passwords(value)
    for endpoint in settings.webhooks:
        found += url_secrets(endpoint.url)
    return found


def public_settings(settings: VigilSettings) -> dict[str, Any]:
    """The settings as JSON-ready data with every secret masked (``vigil settings``)."""
    data = settings.model_dump(mode="json")  # SecretStr fields dump as "**********"
    for name in ("redis_url", "kafka_bootstrap"):
        if data.get(name):
            data[name] = mask_credentials(data[name])
    for endpoint in data.get("webhooks", []):
        endpoint["url"] = mask_webhook_url(endpoint["url"])
    return data


def load_settings(**overrides: Any) -> VigilSettings:
    """Read settings or raise ConfigError naming every bad variable (secrets masked)."""
    try:
        return VigilSettings(**overrides)
    except ValidationError as exc:
        problems = [
            f"{variable_name(err['loc'])}: {err['msg']}" + _shown_input(err["loc"], err["input"])
            for err in exc.errors()
        ]
        message = "invalid Vigil configuration:\n  " + "\n  ".join(problems)
    except ConfigError as exc:
        message = str(exc)
    except (ValueError, SettingsError) as exc:  # JSON in a complex variable that does not parse
        field = re.search(r'field "(\w+)"', str(exc))
        where = f"{ENV_PREFIX}{field.group(1).upper()}: " if field else ""
        message = f"invalid Vigil configuration:\n  {where}not valid JSON ({exc})"
    raise ConfigError(scrub(message, raw_secrets()))


def settings_or_exit() -> VigilSettings:
    """Load settings for a command; on a bad value print which variable and exit with code 2.

    Lives here, not in ``vigil.cli``, so sub-CLIs need not import the top-level app (a cycle)."""
    import typer

    try:
        return load_settings()
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
