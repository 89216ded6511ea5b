"""index.html: deterministic, self-contained, and checked in a real browser (headless Chromium).

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` package. Where they are missing the tests are skipped, unless ``METABENCH_REQUIRE_BROWSER`` is
set (``.ci/run`` sets it), which makes a missing browser a failure: in CI they always run.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from metabench.report.html import average_ranks, pareto, plotly_script
from metabench.report.leaderboard import write_leaderboard
from metabench.report.summary import protocol_tables, summarize
from tests.helpers import make_record

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = {"nmi": 0.41, "nmi_ci95": 0.02, "ari": 0.2, "ari_ci95": 0.01, "cluster_acc": 0.5,
           "cluster_acc_ci95": 0.02, "cluster_tasks": 50}


def rec(alg, gen, acc, seed=0, dataset="omniglot", ways=5, shots=1, rate=10.0, nmi=False):
    r = make_record(f"{dataset}-{alg}-{gen}-{ways}w{shots}s-{seed}", alg, seed, acc, 0.01, ways=ways, shots=shots,
                rate=rate or 1.0)
    r["config"].update(dataset=dataset, task_generator=gen)
    if rate is None:
        r["speed"]["meta_train_tasks_per_s"] = None
    if nmi:
        r["evaluations"][0]["metrics"].update(CLUSTER)
    return r


def records() -> list[dict]:
    """Three dataset/protocol tables; generators with and without NMI and throughput; a failed run."""
    recs = [rec("protonet", "oracle", 0.97, 0), rec("protonet", "oracle", 0.975, 1, rate=12.0),
            rec("maml", "oracle", 0.96, rate=2.0), rec("protonet", "cactus@pca", 0.70, nmi=True, rate=40.0),
            rec("maml", "umtra", 0.75, nmi=True, rate=3.0), rec("embed_knn", "unlabeled", 0.60, rate=None),
            rec("protonet", "oracle", 0.99, shots=5),
            rec("protonet", "oracle", 0.95, dataset="mnist", ways=10),
            rec("protonet", "umtra", 0.80, dataset="mnist", ways=10, nmi=True)]
    failed = copy.deepcopy(recs[2])
    failed.update(run_id="zz-failed", status="failed", error="PluginError: maml: <b>boom</b>\nmore",
                  failed_plugin="algorithm:maml", evaluations=[])
    return recs + [failed]


# expected plot traces per table: accuracy = generators; speed = generators with throughput + frontier;
# nmi = generators with NMI (no figure when none)
EXPECTED_TRACES = {"fig-acc-omniglot-5-1-15": 4, "fig-speed-omniglot-5-1-15": 4, "fig-nmi-omniglot-5-1-15": 2,
                   "fig-acc-omniglot-5-5-15": 1, "fig-speed-omniglot-5-5-15": 2,
                   "fig-acc-mnist-10-1-15": 2, "fig-speed-mnist-10-1-15": 3, "fig-nmi-mnist-10-1-15": 1,
                   "fig-rank": 1}
EXPECTED_RANKS = [["protonet", "oracle", "1.00", "3"], ["maml", "oracle", "2.00", "1"],
                  ["protonet", "umtra", "2.00", "1"], ["maml", "umtra", "3.00", "1"],
                  ["protonet", "cactus@pca", "4.00", "1"], ["embed_knn", "unlabeled", "5.00", "1"]]


def test_pareto_frontier():
    assert pareto([(1, 90), (2, 80), (3, 85), (4, 70)]) == [0, 2, 3]
    assert pareto([(1, 50), (2, 60), (4, 70), (0.5, 40)]) == [2]
    assert pareto([(1, 50), (1, 50)]) == [0, 1]


def test_average_rank_over_datasets_and_protocols():
    ranks = average_ranks(protocol_tables(summarize(records())))
    got = [[a, g, f"{r:.2f}", str(n)] for a, g, r, n in ranks.itertuples(index=False)]
    assert got == EXPECTED_RANKS


def test_page_is_deterministic_and_fetches_nothing(tmp_path):
    recs = records()
    write_leaderboard(recs, tmp_path / "a")
    write_leaderboard(list(reversed(recs)), tmp_path / "b")
    a, b = (tmp_path / "a" / "index.html").read_bytes(), (tmp_path / "b" / "index.html").read_bytes()
    assert a == b
    page = a.decode()
    # the one resource is the vendored plotly.js beside the page, whose hash the page names
    srcs = re.findall(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*"([^"]*)\"""", page)
    name, _, sha = plotly_script()
    assert srcs == [name] and "/" not in name and f'<meta name="plotly-sha256" content="{sha}">' in page
    vendored = tmp_path / "a" / name
    assert hashlib.sha256(vendored.read_bytes()).hexdigest() == sha and len(page) < 200_000
    stamp = vendored.stat().st_mtime_ns
    write_leaderboard(recs, tmp_path / "a")
    assert vendored.stat().st_mtime_ns == stamp, "an unchanged plotly.js is not rewritten"
    assert page.count("Plotly.newPlot(") == 1 and "&lt;b&gt;boom&lt;/b&gt;" in page  # error text is escaped
    assert all(f'id="{fid}"' in page for fid in EXPECTED_TRACES)
    assert 'id="fig-nmi-omniglot-5-5-15"' not in page


# ----------------------------------------------------------------------------------------------- browser

def _browser_or_skip():
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if not (chromium and driver):
        msg = ("headless browser test needs chromium, chromedriver and selenium "
               "(apt-get install chromium chromium-driver; pip install selenium)")
        if os.environ.get("METABENCH_REQUIRE_BROWSER"):
            pytest.fail(msg + "; METABENCH_REQUIRE_BROWSER is set")
        pytest.skip(msg)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="metabench-chromium-")
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    # collect uncaught errors and rejected promises from the first script on
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__errors = [];"
        "addEventListener('error', e => __errors.push(String(e.message || e)));"
        "addEventListener('unhandledrejection', e => __errors.push('rejection: ' + String(e.reason)));")})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> dict:
    """Load ``path``, wait for every plot, and return what rendered plus every error and fetch."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop anything logged before
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && Array.from(document.querySelectorAll('div.plot'))"
        ".every(e => e._fullLayout && e.querySelector('svg.main-svg'));"))
    info = driver.execute_script("""
        const cells = tr => Array.from(tr.cells).map(c => c.textContent.trim());
        return {
          errors: window.__errors,
          resources: performance.getEntriesByType('resource').map(e => e.name),
          load_ms: performance.getEntriesByType('navigation').map(e => e.loadEventEnd - e.startTime)[0],
          sections: Array.from(document.querySelectorAll('section.paper, section.protocol')).map(s => ({
              title: s.querySelector('h2').textContent.trim(),
              rows: Array.from(s.querySelectorAll('table tr')).map(cells)})),
          plots: Object.fromEntries(Array.from(document.querySelectorAll('div.plot')).map(
              e => [e.id, {data: e.data.length, full: e._fullData.length,
                           drawn: e.querySelectorAll('g.trace').length}])),
          rank: Array.from(document.querySelectorAll('#table-rank tbody tr')).map(cells),
        };""")
    info["log"] = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    return info


def markdown_tables(md: str) -> list[tuple[str, list[list[str]]]]:
    """(heading, rows incl. header) of each dataset/protocol table of README.md."""
    out, title, rows = [], None, []
    for line in md.splitlines() + [""]:
        if line.startswith("## "):
            title, rows = line[3:].strip(), []
        elif line.startswith("|") and title:
            if not re.fullmatch(r"\|[-|: ]+\|", line):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows and title:
            if title != "Failed runs":
                out.append((title, rows))
            title, rows = None, []
    return out


def assert_same_tables_as_markdown(info: dict, md: str) -> None:
    assert [(s["title"], s["rows"]) for s in info["sections"]] == markdown_tables(md)


def assert_clean(info: dict) -> None:
    assert info["errors"] == [], f"JavaScript errors: {info['errors']}"
    assert info["log"] == [], f"console errors: {info['log']}"
    # the vendored plotly.js beside the page is its one script (Chromium does not list file: loads in the
    # resource timeline; the plots rendering shows it loaded): nothing else, nothing from the network
    assert all(r.startswith("file://") and r.rsplit("/", 1)[-1] == plotly_script()[0] for r in info["resources"]), \
        f"the page fetched {info['resources']}"


def test_page_renders_in_headless_chromium(browser, tmp_path):
    out = tmp_path / "lb"
    write_leaderboard(records(), out)
    info = open_page(browser, out / "index.html")
    assert_clean(info)
    assert_same_tables_as_markdown(info, (out / "README.md").read_text())
    # paper tables (mnist, omniglot), then per protocol: mnist 10w, omniglot 5w1s, 5w5s
    assert [len(s["rows"]) - 1 for s in info["sections"]] == [2, 5, 2, 5, 1]
    assert info["sections"][1]["rows"][0][3:] == ["5-way 1-shot", "5-way 5-shot"]
    assert {k: v["data"] for k, v in info["plots"].items()} == EXPECTED_TRACES
    assert all(v["full"] == v["data"] == v["drawn"] for v in info["plots"].values()), info["plots"]
    assert info["rank"] == EXPECTED_RANKS
    # sorting: click the accuracy header of the omniglot 5-way 1-shot table, ascending then descending
    table = browser.find_element("id", "table-omniglot-5-1-15")
    header = [th for th in table.find_elements("tag name", "th") if th.text.startswith("Accuracy")][0]
    first = lambda: table.find_elements("css selector", "tbody tr")[0].text.split()  # noqa: E731
    assert first()[:2] == ["protonet", "oracle"]
    header.click()
    assert first()[:2] == ["embed_knn", "unlabeled"] and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert first()[:2] == ["protonet", "oracle"] and header.get_attribute("aria-sort") == "descending"
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "index.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
    if os.environ.get("METABENCH_SCREENSHOT_DIR"):
        Path(os.environ["METABENCH_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["METABENCH_SCREENSHOT_DIR"]) / "leaderboard.png")


def test_committed_leaderboard_page_matches_its_markdown(browser, tmp_path):
    page, md = ROOT / "leaderboards" / "index.html", ROOT / "leaderboards" / "README.md"
    if not page.exists():
        pytest.skip("no committed leaderboards/index.html yet (run `metabench leaderboard`)")
    info = open_page(browser, page)
    assert_clean(info)
    assert_same_tables_as_markdown(info, md.read_text())
    assert all(v["full"] == v["data"] == v["drawn"] > 0 for v in info["plots"].values()), info["plots"]
    assert info["load_ms"] > 0  # the page's load time (navigation start to load event), printed with -s
    print(f"leaderboards/index.html: loaded in {info['load_ms']:.0f} ms, {len(info['plots'])} plots")
    assert browser.save_screenshot(str(tmp_path / "committed.png"))
