"""The Dagster UI as a user drives it: `minigpt ui` (dagster dev, its daemon, the instance config it writes) on a
small recipe set, and headless Chromium clicking through the lineage page and the asset pages.

Checked: an idle UI launches no run; "Materialize all -> All -> Launch backfill" succeeds with one run per asset
partition at most; nothing runs after it; the mixture's composition plot, the loss curve and the comparison report
show in the asset pages; editing one mixture's seed launches that mixture's partition and nothing else; an invalid
edit is one line in the recipe sensor's tick and launches nothing; a backfill of one mixture from the launch
dialog trains and scores that mixture only.
"""

from __future__ import annotations

import shutil
import socket
import time

import dagster as dg
import pytest

from minigpt_assets.defs import ui as U
from minigpt_assets.settings import Settings
from minigpt_assets_tests.conftest import add_second_mixture, add_tiny_training, make_tiny_recipes, write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DATA_PARTITIONS = 3 + 1 + 3 + 1 + 3 + 1 + 2 + 1  # tiny_recipes: one materialization per asset partition
LOCATION = "minigpt_assets.definitions"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium): the UI is not tested in a real browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]'): the UI is not tested in a real browser")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b.new_page(viewport={"width": 1600, "height": 1100})
        b.close()


def _open(page, url: str) -> None:
    page.goto(url, wait_until="networkidle")
    skip = page.get_by_role("button", name="Skip")  # the community newsletter prompt of a fresh instance
    if skip.count():
        skip.click()


def _materialize_all(page, url: str, keep: str | None = None, selection: str | None = None) -> None:
    """The lineage page (filtered by an asset selection typed in its search box, e.g. `key:mixture+`),
    "Materialize all", then All partitions of the selection's root asset or only `keep`, then "Launch backfill"."""
    from urllib.parse import quote

    _open(page, f"{url}/asset-groups" + (f"~{quote(selection)}/" if selection else ""))
    page.get_by_role("button", name="Materialize all").first.click()
    launch = page.locator("[role=dialog]", has=page.get_by_role("button", name="Launch backfill"))
    confirm = page.get_by_role("button", name="Confirm")  # "upstream assets not materialized yet": go on
    confirm.or_(launch).first.wait_for()
    if confirm.count():
        confirm.click()
    # the dialog first renders before the assets' partitions have loaded (a two-dimension selector that cannot
    # launch), then the root asset's own selector with its Custom choice
    launch.get_by_role("button", name="Custom", exact=True).wait_for()
    if keep is None:
        launch.get_by_role("button", name="All", exact=True).click()
    else:
        launch.get_by_role("button", name="Custom", exact=True).click()  # every partition, as removable tags
        tags = launch.locator("[data-tooltip]:has([aria-label='close'])")
        while (other := launch.locator(f"[data-tooltip]:has([aria-label='close']):not([data-tooltip='{keep}'])")).count():
            other.first.get_by_label("close").click()
        assert [t.get_attribute("data-tooltip") for t in tags.all()] == [keep]
    launch.get_by_role("button", name="Launch backfill").click()


def _wait_for_backfill(url: str, instance: dg.DagsterInstance, known: set[str], timeout: float) -> str:
    deadline = time.time() + 60
    while time.time() < deadline:
        new = [b.backfill_id for b in instance.get_backfills() if b.backfill_id not in known]
        if new:
            return U.wait_backfill(url, new[0], timeout)
        time.sleep(1)
    raise AssertionError("the UI launched no backfill")


def _show_markdown_image(page, url: str, asset: str, partition: str | None, key: str) -> int:
    """Open an asset page, click the metadata entry's [Show Markdown], return the embedded PNG's width."""
    _open(page, f"{url}/assets/{asset}" + (f"?partition={partition}" if partition else ""))
    row = page.locator("tr", has=page.get_by_text(key, exact=True))
    row.get_by_text("[Show Markdown]").click()
    img = page.locator("[role=dialog] img").first
    img.wait_for()
    assert (img.get_attribute("src") or "").startswith("data:image/png;base64,")
    width = img.evaluate("e => e.naturalWidth")
    page.get_by_role("button", name="Close").click()
    return width


def _sensor_skip_reasons(url: str) -> list[str]:
    q = """{ sensorOrError(sensorSelector: {repositoryLocationName: "%s", repositoryName: "__repository__",
             sensorName: "minigpt_recipes"}) { ... on Sensor { sensorState { ticks(limit: 3) { skipReason } } } } }"""
    ticks = U.graphql(url, q % LOCATION)["sensorOrError"]["sensorState"]["ticks"]
    return [t["skipReason"] or "" for t in ticks]


def test_ui_backfill_idle_and_edits(browser, tmp_path):
    recipes = make_tiny_recipes(tmp_path)
    s = Settings(home=tmp_path / "home", recipes=recipes, workers=1)
    with U.UIServer(s, port=_free_port(), log=tmp_path / "dagster-dev.log") as ui:
        instance = dg.DagsterInstance.get()
        time.sleep(35)  # the recipe sensor (10 s) and the automation sensor (30 s) have ticked: nothing to run
        assert sum(U.run_counts(instance).values()) == 0

        t0 = time.time()
        _materialize_all(browser, ui.url)
        assert _wait_for_backfill(ui.url, instance, set(), timeout=900) == "COMPLETED_SUCCESS"
        counts = U.run_counts(instance)
        done = U.materialized_since(instance, t0)
        assert sorted(done) == sorted(set(done)) and len(done) == DATA_PARTITIONS  # each partition once
        assert counts["backfill"] <= DATA_PARTITIONS and counts["automation"] == 0

        assert _show_markdown_image(browser, ui.url, "mixture", "mix", "composition") > 100

        time.sleep(35)  # an automation tick after the backfill: nothing is stale, nothing runs
        assert U.run_counts(instance) == counts

        mx = recipes / "mixtures/mix.yaml"
        valid = mx.read_text()
        t1 = time.time()
        mx.write_text(valid + "seed: 7\n")  # edit one mixture: that mixture's partition, nothing else
        deadline = time.time() + 120
        while U.run_counts(instance)["automation"] == 0 and time.time() < deadline:
            time.sleep(2)
        U.wait_quiet(instance, quiet=5, timeout=120)
        assert U.materialized_since(instance, t1) == [("mixture", "mix")]

        mx.write_text(valid + "seed: seven\n")  # an invalid edit: one line in the sensor's tick, nothing runs
        before = U.run_counts(instance)
        deadline = time.time() + 60
        while not any("mixtures/mix.yaml: seed:" in r for r in _sensor_skip_reasons(ui.url)) \
                and time.time() < deadline:
            time.sleep(2)
        reason = next(r for r in _sensor_skip_reasons(ui.url) if "mixtures/mix.yaml" in r)
        assert "\n" not in reason and "last valid versions kept" in reason
        time.sleep(35)
        assert U.run_counts(instance) == before


@pytest.mark.slow
def test_ui_full_chain_and_one_mixture_backfill(browser, tmp_path):
    """Training, evaluation and the comparison from "Materialize all", their plots in the asset pages, then a
    backfill of one new mixture from the mixture asset's launch dialog (about 10 minutes on 2 cores)."""
    recipes = add_tiny_training(make_tiny_recipes(tmp_path))
    write(recipes / "evals/bpb.yaml", "kind: bits_per_byte\nmax_documents: 5\n")
    s = Settings(home=tmp_path / "home", recipes=recipes, workers=1)
    with U.UIServer(s, port=_free_port(), log=tmp_path / "dagster-dev.log") as ui:
        instance = dg.DagsterInstance.get()
        _materialize_all(browser, ui.url)
        assert _wait_for_backfill(ui.url, instance, set(), timeout=1500) == "COMPLETED_SUCCESS"
        assert _show_markdown_image(browser, ui.url, "pretrained_model", "exp|mix", "loss_curve") > 100
        assert _show_markdown_image(browser, ui.url, "experiment_comparison", None, "report") > 100
        assert U.run_counts(instance)["automation"] == 0

    # a second mixture, added while the UI is down (new partitions need a reload), then backfilled with what it
    # feeds: the lineage filtered to `key:mixture+`, the mixture's partition chosen in the launch dialog
    add_second_mixture(recipes)
    with U.UIServer(s, port=_free_port(), log=tmp_path / "dagster-dev-2.log") as ui:
        instance = dg.DagsterInstance.get()
        known = {b.backfill_id for b in instance.get_backfills()}
        t0 = time.time()
        _materialize_all(browser, ui.url, keep="mix2", selection="key:mixture+")
        assert _wait_for_backfill(ui.url, instance, known, timeout=1500) == "COMPLETED_SUCCESS"
        done = set(U.materialized_since(instance, t0))
        assert {("mixture", "mix2"), ("pretrained_model", "exp|mix2"), ("benchmark_scores", "exp|mix2")} <= done
        assert not {p for _, p in done if p and "mix2" not in p} - {None}
