"""The operators' web view, end to end: a real worker fed by the synthetic connector through the
real Kafka, state in the real Redis, and Debian's chromium driven by Playwright for the pages.

One worker serves the whole module (it is the expensive part). Its JSON API is checked with
plain HTTP; the pages are checked in the browser: the chart's forecast band is drawn, a new
prediction appears without a reload, alerts show, a silence made on the page lands in Redis.

Screenshots of every page go to the test's temporary folder, and to ``UI_SCREENSHOTS``
when set (``UI_SCREENSHOTS=docs/img`` refreshes the README's pictures).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.kafka_io import produce, reading
from tests.worker_process import WorkerProcess
from vigil.bench.worker_subprocess import free_port, worker_env
from vigil.settings import (
    BatchConfig,
    DetectorConfig,
    ModelConfig,
    ModelGroup,
    TopicNames,
    TrainingConfig,
    VigilSettings,
    WebhookEndpoint,
)
from vigil.stream.topology import faust_app_options
from vigil.topics import ensure_topics
from vigil.ui.security import guard

pytestmark = pytest.mark.services

TOKEN = "ui-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = 5
POINTS = 700
INTERVAL_S = 60.0
START_TS = 1_700_000_000.0
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class UiWorker:
    settings: VigilSettings
    worker: Any  # tests.worker_process.WorkerProcess
    redis: Any  # redis.Redis, bytes replies
    keys: list[str]

    @property
    def url(self) -> str:
        return self.worker.url

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=10)


def _wait(what: str, check: Any, timeout_s: float = 180.0, worker: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        if worker is not None:
            worker.check_alive()
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ui(services: VigilSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorker]:
    run = os.urandom(5).hex()
    topics = TopicNames(
        readings=f"ui-{run}.readings", predictions=f"ui-{run}.predictions",
        alerts=f"ui-{run}.alerts", dead_letters=f"ui-{run}.dead-letters",
        model_versions=f"ui-{run}.model-versions", drift=f"ui-{run}.drift",
        partitions=services.topics.partitions,
    )  # fmt: skip
    unreachable = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: deliveries wait
    settings = services.model_copy(update={
        "app_id": f"vigil-ui-{run}", "topics": topics,
        "groups": [ModelGroup(
            name="default",
            model=ModelConfig(hidden_size=8, num_layers=1, window=16, horizon=1),
            training=TrainingConfig(enabled=False),  # the registry test moves the live pointer
            detector=DetectorConfig(warmup_events=40, cooldown_events=5),
        )],
        "batch": BatchConfig(max_size=64, max_wait_ms=5),
        "webhooks": [WebhookEndpoint.model_validate({
            "url": unreachable, "min_severity": "info", "max_attempts": 100, "backoff_base_s": 30,
        })],
    })  # fmt: skip
    asyncio.run(ensure_topics(settings))
    log_dir = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VIGIL_WEB_TOKEN", TOKEN)  # worker_env passes the environment on
        worker = WorkerProcess(settings, log_dir).start()
    client: Any = redis.Redis.from_url(settings.redis)
    try:
        worker.wait_ready()
        connector = subprocess.run(
            [sys.executable, "-m", "vigil.cli", "connect", "synthetic", "--keys", str(KEYS),
             "--points", str(POINTS), "--seed", "7", "--speed", "0", "--no-progress",
             "--interval", str(INTERVAL_S), "--start", str(START_TS)],
            env=worker_env(settings, worker.web_port), capture_output=True, timeout=300,
        )  # fmt: skip
        assert connector.returncode == 0, connector.stderr.decode()
        hash_name = f"vigil:{settings.app_id}:predictions"
        keys = _wait("a prediction for every key", lambda: (
            sorted(k.decode() for k in client.hkeys(hash_name))
            if client.hlen(hash_name) == KEYS else None
        ), worker=worker)  # fmt: skip
        end_ms = int((START_TS + (POINTS - 5) * INTERVAL_S) * 1000)

        def caught_up() -> bool:  # every key's history reached the end of the replay
            for key in keys:
                last = client.xrevrange(f"vigil:{settings.app_id}:ui:history:{key}", count=1)
                if not last or int(last[0][0].split(b"-")[0]) < end_ms:
                    return False
            return True

        _wait("the history of every key", caught_up, worker=worker)
        _wait("an alert in the alert log", lambda: client.xlen(
            f"vigil:{settings.app_id}:alerts") > 0, worker=worker)  # fmt: skip
        yield UiWorker(settings, worker, client, keys)
    finally:
        worker.stop()
        client.close()


def send_reading(ui: UiWorker, key: str, ts: float, value: float) -> None:
    """One reading into the readings topic, from a thread of its own (Playwright's sync API
    keeps an event loop running in this one)."""
    records: list[tuple[bytes | None, bytes]] = [(key.encode(), reading(ts, value))]
    with ThreadPoolExecutor(1) as pool:
        pool.submit(
            asyncio.run, produce(ui.settings, ui.settings.topics.readings, records)
        ).result()


def last_point(ui: UiWorker, key: str) -> dict:
    history = ui.get(f"/api/keys/{key}/history", limit="1").json()
    return history["points"][-1]


# ---- the JSON API -------------------------------------------------------------------------------
def test_keys_are_paged_server_side_and_searchable(ui: UiWorker) -> None:
    seen: list[str] = []
    cursor, pages = "0", 0
    while True:
        page = ui.get("/api/keys", cursor=cursor, limit="2").json()
        assert page["total"] == KEYS
        seen += [row["key"] for row in page["keys"]]
        pages += 1
        cursor = str(page["next_cursor"])
        if cursor == "0":
            break
    assert sorted(seen) == ui.keys  # every key once over the pages
    row = ui.get("/api/keys", q=ui.keys[3][-3:]).json()["keys"]
    assert [r["key"] for r in row] == [ui.keys[3]]
    first = row[0]
    assert first["group"] == "default"
    assert isinstance(first["last_value"], float) and 0.0 <= first["last_score"] <= 1.0
    assert first["model_version"].startswith("default-")
    assert first["last_event_time"] >= START_TS
    assert ui.get("/api/keys", q="no-such-key-*[").json()["keys"] == []  # globs are escaped


def test_history_has_forecast_intervals_and_a_time_range(ui: UiWorker) -> None:
    key = ui.keys[0]
    data = ui.get(f"/api/keys/{key}/history").json()
    points = data["points"]
    assert len(points) >= 200 and data["group"] == "default"
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)
    banded = [p for p in points if p["f"] is not None]
    assert banded and all(p["l"] <= p["f"] <= p["u"] for p in banded)
    assert data["latest"]["key"] == key
    newest = points[-1]["t"]
    recent = ui.get(f"/api/keys/{key}/history", since=str(newest - 10 * INTERVAL_S)).json()
    assert [p["t"] for p in recent["points"]] == [p["t"] for p in points if p["t"] >= newest - 600]
    assert len(ui.get(f"/api/keys/{key}/history", limit="7").json()["points"]) == 7


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/keys", {"limit": "abc"}),
        ("/api/keys", {"limit": "0"}),
        ("/api/keys", {"cursor": "-1"}),
        ("/api/keys", {"q": "x" * 500}),
        ("/api/keys/k/history", {"since": "yesterday"}),
        ("/api/keys/k/history", {"until": "nan"}),
        ("/api/keys/k/history", {"since": "10", "until": "5"}),
        ("/api/keys/k/history", {"limit": "100000"}),
        ("/api/keys/k/events", {"after": "not-an-id"}),
        ("/api/alerts", {"since": "later"}),
        ("/api/alerts", {"limit": "-5"}),
        ("/api/silences", {"state": "sleeping"}),
    ],
)
def test_bad_parameters_answer_400(ui: UiWorker, path: str, params: dict[str, str]) -> None:
    response = ui.get(path, **params)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}


async def test_server_sent_events_carry_each_new_prediction(ui: UiWorker) -> None:
    key = ui.keys[1]
    last = last_point(ui, key)
    new_ts = last["t"] + INTERVAL_S
    url = f"{ui.url}/api/keys/{key}/events"
    timeout = httpx.Timeout(10, read=120)
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream("GET", url, params={"after": last["id"]}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        records: list[tuple[bytes | None, bytes]] = [(key.encode(), reading(new_ts, 1.0))]
        await produce(ui.settings, ui.settings.topics.readings, records)
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event == "point":
                point = json.loads(line[len("data: ") :])
                assert point["t"] > last["t"]
                if point["t"] == new_ts:
                    break
    assert point["t"] == new_ts and point["y"] == 1.0


def test_writes_need_the_token_and_json(ui: UiWorker) -> None:
    body = {"matchers": {"key": "nothing-*"}, "duration": "1h", "comment": "api test"}
    url = ui.url + "/api/silences"
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and "Bearer" in missing.json()["error"]
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    as_form = httpx.post(url, data={"comment": "x"}, headers=AUTH)
    assert as_form.status_code == 415
    # alerting's own /silences is guarded the same way
    assert httpx.post(ui.url + "/silences", json=body).status_code == 401
    everything = {"matchers": {"key": "*"}, "duration": "1h", "comment": "all"}
    refused = httpx.post(url, json=everything, headers=AUTH)
    assert refused.status_code == 400 and "everything" in refused.json()["error"]
    no_comment = httpx.post(url, json={**body, "comment": ""}, headers=AUTH)
    assert no_comment.status_code == 400
    created = httpx.post(url, json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    silence_id = created.json()["silence"]["id"]
    stored = json.loads(ui.redis.hget(f"vigil:{ui.settings.app_id}:silences", silence_id))
    assert stored["comment"] == "api test" and stored["created_by"] == "web"
    assert httpx.delete(f"{url}/{silence_id}").status_code == 401
    expired = httpx.delete(
        f"{url}/{silence_id}", headers=AUTH | {"Content-Type": "application/json"}
    )
    assert expired.status_code == 200 and expired.json()["silence"]["state"] == "expired"
    assert httpx.delete(f"{url}/nope", headers=AUTH | {"Content-Type": "application/json"}
                        ).status_code == 404  # fmt: skip


async def test_without_a_token_the_server_is_read_only() -> None:
    async def created(request: web.Request) -> web.Response:
        return web.json_response({}, status=201)

    async def listed(request: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    app = web.Application(middlewares=[guard(None)])
    app.router.add_post("/api/silences", created)
    app.router.add_get("/api/keys", listed)
    async with TestClient(TestServer(app)) as client:
        refused = await client.post("/api/silences", json={}, headers=AUTH)
        assert refused.status == 403
        assert "VIGIL_WEB_TOKEN" in (await refused.json())["error"]
        assert (await client.get("/api/keys")).status == 200


def test_the_server_binds_the_configured_host_and_hides_faust_pages(ui: UiWorker) -> None:
    options = faust_app_options(ui.settings.model_copy(update={"web_host": "127.0.0.9"}))
    assert options["web_bind"] == "127.0.0.9"
    assert VigilSettings.model_fields["web_host"].default == "127.0.0.1"
    assert ui.get("/router/").status_code == 404
    assert ui.get("/table/").status_code == 404
    home = httpx.get(ui.url + "/", follow_redirects=False)
    assert home.status_code == 302 and home.headers["location"] == "/ui"


def test_alerts_webhooks_and_session(ui: UiWorker) -> None:
    alerts = ui.get("/api/alerts", since="0").json()
    assert alerts["alerts"] and {a["key"] for a in alerts["alerts"]} <= set(ui.keys)
    hooks = ui.get("/api/webhooks").json()["webhooks"]
    assert len(hooks) == 1
    _wait("a delivery waiting for the unreachable webhook",
          lambda: ui.get("/api/webhooks").json()["webhooks"][0]["pending"] > 0)  # fmt: skip
    assert ui.get("/api/session").json() == {
        "writes_enabled": True,
        "authorized": False,
        "app_id": ui.settings.app_id,
    }
    assert httpx.get(ui.url + "/api/session", headers=AUTH).json()["authorized"] is True


def test_models_promote_and_rollback_like_the_cli(ui: UiWorker) -> None:
    from vigil.models.forecaster import build_forecaster
    from vigil.models.registry import ModelRegistry

    registry = ModelRegistry(ui.redis, ui.settings.app_id)
    config = ui.settings.groups[0].model
    before = registry.live("default")
    metrics = {"candidate_loss": 0.5, "live_loss": 0.7}
    model = build_forecaster(config, seed=3)
    version = registry.register("default", model, config, metrics, note="ui test")
    overview = ui.get("/api/models").json()["groups"]
    group = next(g for g in overview if g["group"] == "default")
    assert group["live"] == before
    assert version in [v["version"] for v in group["versions"]]
    headers = AUTH | {"Content-Type": "application/json"}
    promote = f"{ui.url}/api/models/default/promote"
    assert httpx.post(promote, json={"version": version}).status_code == 401
    done = httpx.post(promote, json={"version": version, "reason": "ui test"}, headers=headers)
    assert done.status_code == 200, done.text
    assert done.json()["changed"] is True and registry.live("default") == version
    assert registry.events("default", 1)[0]["reason"] == "ui test"
    unknown = httpx.post(promote, json={"version": "default-999999-deadbeef"}, headers=headers)
    assert unknown.status_code == 404
    assert httpx.post(promote, json={"version": "x"}, headers=headers).status_code == 400
    bad_group = httpx.post(f"{ui.url}/api/models/Bad!/rollback", json={}, headers=headers)
    assert bad_group.status_code == 400
    back = httpx.post(f"{ui.url}/api/models/default/rollback", json={}, headers=headers)
    assert back.status_code == 200, back.text
    assert back.json()["live"] == before and registry.live("default") == before


async def test_ten_thousand_keys_page_in_small_steps(services: VigilSettings) -> None:
    """The index never loads the whole hash: HSCAN pages of about ``limit`` keys cover 10,000
    keys exactly once, and a search finds one key among them."""
    from redis.asyncio import Redis

    from vigil.stream.state_store import StateStore
    from vigil.ui.api import key_rows, scan_keys

    app_id = f"vigil-ui-many-{os.urandom(4).hex()}"
    client: Any = Redis.from_url(services.redis)
    store = StateStore(client, app_id)

    def prediction(i: int) -> str:
        return json.dumps({
            "key": f"sensor-{i:05d}", "group": "default", "observed": float(i), "score": 0.5,
            "timestamp": START_TS + i, "provenance": {"model_version": "default-000001-x"},
        })  # fmt: skip

    many = {f"sensor-{i:05d}": prediction(i) for i in range(10_000)}
    ctx = SimpleNamespace(redis=client, store=store, keys=None)
    try:
        await client.hset(store.predictions_hash, mapping=many)
        seen: list[str] = []
        cursor, pages, biggest = 0, 0, 0
        while True:
            found, cursor = await scan_keys(ctx, "", cursor, 50)  # type: ignore[arg-type]
            seen += [key for key, _ in found]
            pages, biggest = pages + 1, max(biggest, len(found))
            if cursor == 0:
                break
        assert sorted(seen) == sorted(many)
        assert pages > 50 and biggest < 500  # pages of about 50, not one of 10,000
        hits, cursor = await scan_keys(ctx, "07321", 0, 50)  # type: ignore[arg-type]
        while cursor and not hits:  # a sparse match may take a few pages to show up
            hits, cursor = await scan_keys(ctx, "07321", cursor, 50)  # type: ignore[arg-type]
        rows = await key_rows(ctx, hits)  # type: ignore[arg-type]
        assert [(r["key"], r["last_value"]) for r in rows] == [("sensor-07321", 7321.0)]
    finally:
        await client.delete(store.predictions_hash)
        await client.aclose()


# ---- in the browser ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(ui: UiWorker) -> Iterator[object]:  # the worker first: it runs asyncio itself
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: deploy/local/bootstrap.sh installs chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, ui: UiWorker) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1240, "height": 820}, base_url=ui.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def console(message: Any) -> None:  # script errors, CSP violations, failed loads
        if message.type == "error" and "favicon" not in message.location.get("url", ""):
            errors.append(message.text)

    page.on("console", console)
    yield page
    context.close()
    assert not errors, errors


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wanted = os.environ.get("UI_SCREENSHOTS")
    if wanted:  # a 256-colour copy: a third of the size, the same picture for a README
        from PIL import Image

        Path(wanted).mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").quantize(256).save(Path(wanted) / name, optimize=True)


BAND_COLUMNS = """() => {
  const d = window.vigil.chart.data;
  let banded = 0;
  for (let i = 0; i < d[0].length; i++) {
    if (d[3][i] != null && d[4][i] != null && d[4][i] >= d[3][i] && d[2][i] != null) banded++;
  }
  return {banded, points: window.vigil.points.length, bands: window.vigil.chart.bands.length};
}"""

BAND_PIXELS = """() => {
  const canvas = document.querySelector('#chart canvas');
  const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let blue = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (px[i + 3] > 0 && px[i + 2] > px[i] + 25 && px[i + 2] > px[i + 1] + 10) blue++;
  }
  return blue;
}"""


def test_key_page_draws_the_band_and_updates_live(page: Any, ui: UiWorker, tmp_path: Path) -> None:
    key = ui.keys[2]
    page.goto(f"/ui/keys/{key}")
    page.wait_for_function(
        "() => window.vigil && window.vigil.chart && window.vigil.points.length > 100"
    )
    columns = page.evaluate(BAND_COLUMNS)
    assert columns["bands"] == 1 and columns["banded"] > 100
    assert page.evaluate(BAND_PIXELS) > 2000  # the band's fill and the forecast line, drawn
    page.wait_for_function("() => document.getElementById('live').textContent === 'live'")
    screenshot(page, "ui-key.png", tmp_path)
    page.evaluate("() => { window.notReloaded = true; }")
    before = page.evaluate("() => window.vigil.points.length")
    new_ts = last_point(ui, key)["t"] + INTERVAL_S
    send_reading(ui, key, new_ts, 2.5)
    page.wait_for_function(
        "ts => window.vigil.points.some(p => p.t === ts)", arg=new_ts, timeout=120_000
    )
    assert page.evaluate("() => window.notReloaded") is True
    assert page.evaluate("() => window.vigil.points.length") > before
    assert page.evaluate("ts => window.vigil.chart.data[0].includes(ts)", new_ts)
    assert page.locator("#last-value").inner_text() == "2.5"


def test_index_lists_and_searches_keys(page: Any, ui: UiWorker, tmp_path: Path) -> None:
    page.goto("/ui")
    page.wait_for_selector("#keys tbody tr[data-key]")
    assert page.locator("#keys tbody tr[data-key]").count() == KEYS
    screenshot(page, "ui-keys.png", tmp_path)
    page.fill("#search", ui.keys[4][-3:])
    page.wait_for_function(
        "() => document.querySelectorAll('#keys tbody tr[data-key]').length === 1"
    )
    page.click(f"#keys a[href='/ui/keys/{ui.keys[4]}']")
    page.wait_for_url(f"**/ui/keys/{ui.keys[4]}")


def test_alerts_page_shows_alerts_and_creates_a_silence(
    page: Any, ui: UiWorker, tmp_path: Path
) -> None:
    page.goto("/ui/alerts")
    page.wait_for_selector("#alerts tbody tr[data-alert]")
    logged = {a["alert_id"] for a in ui.get("/api/alerts", since="0").json()["alerts"]}
    shown = set(page.locator("#alerts tbody tr[data-alert]").evaluate_all(
        "rows => rows.map(r => r.dataset.alert)"))  # fmt: skip
    assert shown and shown <= logged
    assert page.locator("button[type=submit][data-write]").is_disabled()  # not signed in
    page.fill("#token", TOKEN)
    page.click("#signin")
    page.wait_for_function("() => document.getElementById('session').textContent === 'signed in'")
    form = page.locator("#silence-form")
    form.locator("input[name=key]").fill(ui.keys[0])
    form.locator("input[name=duration]").fill("2h")
    form.locator("input[name=comment]").fill("made in the browser")
    form.locator("button[type=submit]").click()
    page.wait_for_function(
        "() => /created silence/.test(document.getElementById('message').textContent)"
    )
    silence_id = page.locator("#message").inner_text().split()[-1]
    stored = json.loads(ui.redis.hget(f"vigil:{ui.settings.app_id}:silences", silence_id))
    assert stored["matchers"]["key"] == ui.keys[0] and stored["comment"] == "made in the browser"
    assert 7100 < stored["ends_at"] - stored["starts_at"] < 7300
    assert page.evaluate("() => sessionStorage.getItem('vigil.token')") == TOKEN
    page.evaluate("() => window.scrollTo(0, 0)")
    screenshot(page, "ui-alerts.png", tmp_path)
    page.click(f"button[data-expire='{silence_id}']")
    page.wait_for_function("() => /expired/.test(document.getElementById('message').textContent)")
    stored = json.loads(ui.redis.hget(f"vigil:{ui.settings.app_id}:silences", silence_id))
    assert stored["ends_at"] <= time.time()


def test_models_page_lists_versions(page: Any, ui: UiWorker, tmp_path: Path) -> None:
    page.goto("/ui/models")
    page.wait_for_selector("section[data-group=default] tr[data-version]")
    live = ui.get("/api/models").json()["groups"][0]["live"]
    assert page.locator("section[data-group=default] .live-version").inner_text() == live
    assert page.locator("[data-rollback=default]").is_disabled()  # read-only until signed in
    screenshot(page, "ui-models.png", tmp_path)


def test_the_demo_keeps_the_ui_up_unless_told_to_exit() -> None:
    from typer.testing import CliRunner

    from vigil.cli import app

    shown = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "--exit" in shown.output
