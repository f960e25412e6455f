"""The dashboard in headless Chromium: a spike shows in the alert feed and the fleet view.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` package, which
drives it; no browser is downloaded. With ``MQTT_ANOMALY_SCREENSHOT`` set, the fleet
screenshot is also copied to ``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mqtt_anomaly.store import open_store

from .helpers import eventually
from .mosquitto import Mosquitto
from .test_service import publisher
from .test_web import SPIKE, Served, feed, web_settings

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = os.environ.get("MQTT_ANOMALY_CHROMIUM", "/usr/bin/chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[object]:
    """A fresh headless Chromium profile; yields its browser context."""
    async with playwright_api.async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            await context.close()


async def test_spike_shows_in_feed_and_fleet(
    mosquitto: Mosquitto, tmp_path: Path, browser: object
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    settings = web_settings(mosquitto, tmp_path, url)
    with open_store(url, settings.store) as store:
        async with Served(settings, store) as srv:
            page = await browser.new_page()  # type: ignore[attr-defined]
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(srv.base + "/")
            await page.wait_for_selector("#live.on", timeout=10_000)

            await feed(mosquitto.url, "SENSOR-01", [24.5 + 0.1 * (i % 3) for i in range(40)])
            await feed(mosquitto.url, "SENSOR-02", [22.9] * 10)
            await page.wait_for_selector('tr[data-sensor="SENSOR-01"][data-health="ok"]')
            await page.wait_for_selector('tr[data-sensor="SENSOR-02"][data-health="ok"]')

            await feed(mosquitto.url, "SENSOR-01", [SPIKE], start_seq=40)
            item = await page.wait_for_selector(
                '#alerts li[data-sensor="SENSOR-01"][data-detector="threshold"]'
                '[data-state="raised"]',
                timeout=10_000,
            )
            assert item is not None
            assert "98.2" in (await item.text_content() or "")
            await page.wait_for_selector('tr[data-sensor="SENSOR-01"][data-health="anomalous"]')
            # the page catches up: last value, and anomalous sensors sort first
            await page.wait_for_function(
                """() => {
                    const first = document.querySelector('#sensors tbody tr');
                    return first && first.dataset.sensor === 'SENSOR-01'
                        && first.querySelector('td.num').textContent === '98.20';
                }""",
                timeout=10_000,
            )

            # acknowledge from the feed: the service knows, the feed shows it
            mine = '#alerts li[data-sensor="SENSOR-01"][data-detector="threshold"][data-active="1"]'
            await page.click(mine + " button.ack")
            await page.wait_for_selector(mine + " .acked")
            desk = srv.service.listeners[-1].__self__.desk  # type: ignore[attr-defined]
            assert desk.active[("SENSOR-01", "threshold")].acknowledged_at is not None

            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("MQTT_ANOMALY_SCREENSHOT"):
                DOCS.mkdir(exist_ok=True)
                shutil.copyfile(shot, DOCS / "dashboard.png")

            # the sensor view: history, band, the alert marked, live readings
            await page.click('tr[data-sensor="SENSOR-01"]')
            await page.wait_for_selector('#sensor-health[data-health="anomalous"]')
            await page.wait_for_function(
                "() => +document.querySelector('#chart').dataset.points >= 41"
                " && +document.querySelector('#chart').dataset.marks >= 1",
                timeout=10_000,
            )
            await feed(mosquitto.url, "SENSOR-01", [24.6] * 3, start_seq=41)
            await page.wait_for_function(
                "() => +document.querySelector('#chart').dataset.points >= 44", timeout=10_000
            )
            await page.screenshot(path=str(tmp_path / "sensor.png"))

            # thousands of sensors: one page is rendered, the rest is paginated
            await page.click("text=← fleet")
            async with publisher(mosquitto.url, "pub-fleet") as pub:
                for i in range(2000):
                    sid = f"FLEET-{i:04d}"
                    pub.publish(f"factory/{sid}/temperature", b"21.5")
            await page.wait_for_function(
                "() => document.querySelector('#page-info').textContent.endsWith('of 2002')",
                timeout=20_000,
            )
            assert await page.locator("#sensors tbody tr").count() == 100
            await page.fill("#q", "fleet-1999")
            await page.wait_for_selector('tr[data-sensor="FLEET-1999"]')
            assert await page.locator("#sensors tbody tr").count() == 1
            assert errors == []


async def test_asset_view_shows_contribution_bars_and_sensors_together(
    mosquitto: Mosquitto, tmp_path: Path, browser: object
) -> None:
    import json

    from .test_assets import NAMES, K, service_settings, stationary

    settings = service_settings(mosquitto, tmp_path, "detector-dash-assets")
    url = settings.store.url
    t0 = time.time() - 200  # one row a second, the last ones now
    x = stationary(160, seed=31)
    x[120:, 2] += 1.5
    with open_store(url, settings.store) as store:
        async with Served(settings, store) as srv, publisher(mosquitto.url, "pub-dash") as pub:
            page = await browser.new_page()  # type: ignore[attr-defined]
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(srv.base + "/")
            await page.wait_for_selector("#live.on", timeout=10_000)
            for i in range(160):
                for j in range(K):
                    doc = {"v": x[i, j], "ts": t0 + i}
                    pub.publish(f"plant/PUMP-07/{NAMES[j]}", json.dumps(doc).encode())
            row = '#asset-table tr[data-asset="PUMP-07"][data-phase="monitoring"][data-alarm="1"]'
            await page.wait_for_selector(row, timeout=20_000)
            await page.click(row)
            await page.wait_for_selector('#asset-phase[data-phase="monitoring"]')
            await page.wait_for_function(
                """() => {
                    const bar = document.querySelector('#bars .bar[data-sensor="PUMP-07/s2"]');
                    return bar && +bar.dataset.share > 0.5
                        && document.querySelectorAll('#bars .bar').length === 6;
                }""",
                timeout=10_000,
            )
            await page.wait_for_function(
                "() => +document.querySelector('#asset-chart').dataset.series === 6"
                " && +document.querySelector('#asset-chart').dataset.points >= 6 * 150",
                timeout=10_000,
            )
            await page.screenshot(path=str(tmp_path / "asset.png"), full_page=True)
            assert (tmp_path / "asset.png").stat().st_size > 10_000
            assert errors == []


async def test_maintenance_panel_starts_and_removes_a_window(
    mosquitto: Mosquitto, tmp_path: Path, browser: object
) -> None:
    """The panel lists the windows, starts one, shows the suppressed alert with its reason,
    and removes the window again."""
    settings = web_settings(mosquitto, tmp_path)
    async with Served(settings) as srv:
        page = await browser.new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(srv.base + "/")
        await page.wait_for_selector("#live.on", timeout=10_000)
        assert await page.locator("#windows li").count() == 0

        await page.fill("#win-sensors", "SENSOR-01")
        await page.fill("#win-reason", "relining")
        await page.select_option("#win-minutes", "60")
        await page.click("#win-add")
        item = await page.wait_for_selector(
            '#windows li[data-source="api"][data-open="1"]', timeout=10_000
        )
        assert item is not None and "relining" in (await item.text_content() or "")
        (window,) = srv.service.maintenance.added.values()
        assert window.sensors == ("SENSOR-01",) and window.reason == "relining"
        assert window.end is not None and window.start is not None
        assert 3590 < (window.end - window.start).total_seconds() <= 3600

        await feed(mosquitto.url, "SENSOR-01", [24.5] * 5 + [SPIKE])
        await feed(mosquitto.url, "SENSOR-02", [24.5] * 5 + [SPIKE])
        shown = await page.wait_for_selector(
            '#alerts li.suppressed[data-sensor="SENSOR-01"][data-state="raised"]',
            timeout=10_000,
        )
        assert shown is not None
        assert "suppressed — maintenance: relining" in (await shown.text_content() or "")
        other = await page.wait_for_selector(
            '#alerts li[data-sensor="SENSOR-02"][data-state="raised"]', timeout=10_000
        )
        assert other is not None and await other.get_attribute("data-suppressed") is None

        # an invalid window is refused with the service's reason
        await page.fill("#win-sensors", "[")
        await page.evaluate(
            "() => { const o = document.querySelector('#win-minutes option');"
            " o.value = '0'; document.querySelector('#win-minutes').value = '0'; }"
        )
        await page.click("#win-add")
        await page.wait_for_function(
            "() => document.querySelector('#win-error').textContent.includes('end must be after')",
            timeout=10_000,
        )

        await page.click('#windows li[data-source="api"] button.remove')
        await page.wait_for_function(
            "() => document.querySelectorAll('#windows li').length === 0", timeout=10_000
        )
        assert srv.service.maintenance.added == {}
        assert errors == []


async def test_feedback_buttons_on_the_alert_list(
    mosquitto: Mosquitto, tmp_path: Path, browser: object
) -> None:
    """An operator marks a raised alert a false alarm from the feed: stored, shown, and kept
    across a reload of the page."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    settings = web_settings(mosquitto, tmp_path, url)
    with open_store(url, settings.store) as store:
        async with Served(settings, store) as srv:
            page = await browser.new_page()  # type: ignore[attr-defined]
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(srv.base + "/")
            await page.wait_for_selector("#live.on", timeout=10_000)
            await feed(mosquitto.url, "SENSOR-01", [24.5 + 0.1 * (i % 3) for i in range(40)])
            await feed(mosquitto.url, "SENSOR-01", [SPIKE], start_seq=40)
            item = (
                '#alerts li[data-sensor="SENSOR-01"][data-detector="threshold"]'
                '[data-state="raised"]'
            )
            await page.wait_for_selector(item + " button.fb-false", timeout=10_000)
            alert_id = await page.get_attribute(item, "data-id")
            assert alert_id and alert_id.startswith("SENSOR-01:threshold:raised:40@")
            # the live alert reaches the page before the store has written it
            await eventually(lambda: store.alert_by_id(alert_id) is not None)  # type: ignore[attr-defined]
            await page.click(item + " button.fb-false")
            await page.wait_for_selector(item + " .verdict", timeout=10_000)
            assert "false alarm" in (await page.text_content(item + " .verdict") or "")
            [fb] = store.feedback()  # type: ignore[attr-defined]
            assert (fb.alert_id, fb.verdict) == (alert_id, "false_alarm")
            await page.reload()
            await page.wait_for_selector(item + " .verdict", timeout=10_000)
            assert errors == []


async def test_shadow_panel_shows_the_agreement_not_the_alerts(
    mosquitto: Mosquitto, tmp_path: Path, browser: object
) -> None:
    """The candidate's alert is counted in the shadow panel and never reaches the alert feed;
    the configuration version is shown."""
    from mqtt_anomaly.config import ShadowSettings

    shadow = ShadowSettings(enabled=True, label="t50", detector={"threshold": 50.0})
    settings = web_settings(mosquitto, tmp_path).model_copy(update={"shadow": shadow})
    async with Served(settings) as srv:
        page = await browser.new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(srv.base + "/")
        await page.wait_for_selector("#live.on", timeout=10_000)
        version = srv.service.reloads.version
        await page.wait_for_function(
            f"() => document.querySelector('#config-version').textContent.includes('{version}')",
            timeout=10_000,
        )
        await feed(mosquitto.url, "SENSOR-01", [60.0] * 5)
        await page.wait_for_selector('tr[data-sensor="SENSOR-01"][data-health="ok"]')
        row = await page.wait_for_selector(
            '#shadow-table tr[data-sensor="SENSOR-01"][data-detector="threshold"]',
            timeout=15_000,
        )
        assert row is not None
        cells = [await c.text_content() for c in await row.query_selector_all("td")]
        assert cells == ["SENSOR-01", "threshold", "0", "0", "1"]
        assert "t50" in (await page.text_content("#shadow h2") or "")
        # not an operator's alert (a live silence alert may come meanwhile: 5 readings only)
        detectors = "els => els.map(e => e.dataset.detector)"
        shown = await page.eval_on_selector_all("#alerts li", detectors)
        assert set(shown) <= {"silence"}, shown
        assert not errors, errors


async def test_stale_models_show_in_a_banner(
    mosquitto: Mosquitto, tmp_path: Path, browser: object
) -> None:
    """A sensor whose scores drift from its reference: the banner names it; none before."""
    from .test_drift import fleet_values, web_drift_settings

    async with Served(web_drift_settings(mosquitto, tmp_path)) as srv:
        page = await browser.new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(srv.base + "/")
        await page.wait_for_selector("#live.on", timeout=10_000)
        values = fleet_values()
        await feed(mosquitto.url, "W-steady", values["W-steady"][:140])
        await page.wait_for_selector('tr[data-sensor="W-steady"]')
        assert await page.locator("#stale-banner").is_hidden()
        await feed(mosquitto.url, "W-steady", values["W-steady"][140:], start_seq=140)
        await feed(mosquitto.url, "W-square", values["W-square"])
        banner = await page.wait_for_selector("#stale-banner:visible", timeout=15_000)
        assert banner is not None
        text = await banner.text_content() or ""
        assert text.startswith("⚠ 1 sensor model look stale: W-square (drift, drift ")
        assert "W-steady" not in text
        assert errors == []


async def test_a_unit_from_mqtt5_user_properties_shows_after_the_value(
    mosquitto: Mosquitto, tmp_path: Path, browser: object
) -> None:
    from .helpers import reading_payload
    from .test_user_properties import V5Publisher, v5_settings

    async with Served(v5_settings(mosquitto, tmp_path)) as srv:
        page = await browser.new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(srv.base + "/")
        await page.wait_for_selector("#live.on", timeout=10_000)
        async with V5Publisher(mosquitto.port) as pub:
            pub.publish("factory/U-1/temperature", reading_payload("U-1", 2.5, 0), unit="bar")
            pub.publish("factory/U-2/temperature", reading_payload("U-2", 21.0, 0))
        await page.wait_for_function(
            """() => {
                const r = document.querySelector('tr[data-sensor="U-1"] td.num');
                return r && r.textContent === '2.50 bar';
            }""",
            timeout=10_000,
        )
        other = page.locator('tr[data-sensor="U-2"] td.num')
        assert await other.text_content() == "21.00"
        await page.click('tr[data-sensor="U-1"]')
        await page.wait_for_function(
            "() => document.querySelector('#sensor-value').textContent.startsWith('2.50 bar')",
            timeout=10_000,
        )
        assert errors == []
