"""What a researcher sees after a run, in headless Chromium (README, "Browsing runs in MLflow";
docs/workflow.md, "Where to look" and "The report").

Run by `.ci/browser` (root: it installs Debian's chromium), which `.ci/run` calls:
`python -m pytest -m browser tests/browser`; marker `browser`, not in the default test run.

1. The `ci` preset end to end on a copy of the workflow with the README's command and its default
   MLflow store (sqlite under results/ci); its closing lines are read as a user reads them.
2. The `mlflow ui` command those lines print, started as printed (on another port when 5000 is taken:
   the command's port and the URL's change together), and the URL they print: the runs table in
   Model-training mode with the study run, whose + shows every cell run; a cell run's charts with
   the Train section (the loss curves) first.
3. The report command they print, and the report: every Tables entry previews its table, in the
   paper's order; Summary shows them all; Fig. 7 opens at its top; a Downloads entry downloads its file.

Screenshots, logs and timings: $MHSA_BROWSER_OUT (default results/browser-test/).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from browser import Page  # tests/browser/conftest.py puts this folder on sys.path

from mhsa.study.build import build_study, load_study_config, table_number

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("MHSA_BROWSER_OUT", REPO / "results" / "browser-test"))
TIMES: dict = {}
PRINTED_PORT = 5000


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.fail("the browser test needs Debian's chromium: run it with .ci/browser (installs it with apt)")
    return binary


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


@pytest.fixture(scope="module")
def ci(tmp_path_factory, copy_workflow):
    """The ci preset as the README runs it, its closing lines and its study."""
    OUT.mkdir(parents=True, exist_ok=True)
    wd = copy_workflow(tmp_path_factory.mktemp("browser"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "tables", "--cores", "2", "--resources", "gpu=2",
                           "--config", "preset=ci"], cwd=wd, env=env, capture_output=True, text=True, timeout=1800)
    TIMES["ci_run_s"] = round(time.monotonic() - t0, 1)
    (OUT / "snakemake.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    closing = proc.stderr[proc.stderr.rindex("Where to look:"):]
    mlflow_cmd = re.search(r"MLflow   (mlflow ui .+)", closing).group(1).strip()
    url = re.search(r"then open (http\S+)", closing).group(1)
    report_cmd, report = re.search(r"report   (snakemake --report \S+ .+?)   then open (\S+)", closing).groups()
    study = build_study(load_study_config(wd / "config.yaml"), "ci")
    return SimpleNamespace(wd=wd, env=env, closing=closing, mlflow_cmd=mlflow_cmd, url=url, study=study,
                           report_cmd=report_cmd, report=wd / report, results=wd / "results" / "ci")


@pytest.fixture(scope="module")
def mlflow_ui(ci):
    """The printed `mlflow ui` command, running; yields the printed URL (with the port it got)."""
    assert f"--port {PRINTED_PORT}" in ci.mlflow_cmd and ci.url.startswith(f"http://127.0.0.1:{PRINTED_PORT}/")
    port = _free_port(PRINTED_PORT)  # another engineer's UI may hold 5000 on a shared machine
    argv = shlex.split(ci.mlflow_cmd.replace(f"--port {PRINTED_PORT}", f"--port {port}"))
    argv[0] = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    url = ci.url.replace(f":{PRINTED_PORT}/", f":{port}/")
    log = open(OUT / "mlflow-ui.log", "w")
    t0 = time.monotonic()
    # its own session: `mlflow ui` starts a server and job runners, all stopped together below
    proc = subprocess.Popen(argv, cwd=ci.wd, env=ci.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                break
            except OSError as err:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (OUT / "mlflow-ui.log").read_text()[-2000:]
                    raise RuntimeError(f"mlflow ui did not start: {log_text}") from err
                time.sleep(1)
        TIMES["mlflow_ui_start_s"] = round(time.monotonic() - t0, 1)
        yield url
    finally:
        _stop_session(proc)
        log.close()


def _stop_session(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the process group the test started (the UI, its job runner and queue consumers), then
    SIGKILL to whatever of it is left after `grace` seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def page():
    with Page(_chromium(), OUT) as p:
        yield p
    (OUT / "timings.json").write_text(json.dumps(TIMES, indent=1))


# ---------------------------------------------------------------------------------- MLflow
def test_the_printed_url_opens_the_runs_table_with_the_study_and_every_cell(ci, mlflow_ui, page):
    t0 = time.monotonic()
    page.open(mlflow_ui)
    page.wait_for("document.querySelectorAll('.ag-row').length > 0", 300, "the runs table")
    rows = page.js("[...document.querySelectorAll('.ag-row')].map(r => r.innerText)")
    assert any("study ci" in r for r in rows), rows
    assert "matching runs" in page.text()  # the runs table, not the GenAI mode's traces overview
    page.js("[...document.querySelectorAll('button[aria-label=Close]')].forEach(b => b.click())")  # assistant
    page.js("[...document.querySelectorAll('.ag-row')].find(r => r.innerText.includes('study ci'))"
            ".querySelector('button[data-component-id*=runnamecellrenderer]').click()")  # its +
    cells = sorted(ci.study.cells)
    page.wait_for(f"(t => {json.dumps(cells)}.every(c => t.includes(c)))(document.body.innerText)", 120,
                  "every cell run under the study run")
    assert f"{len(cells) + 1} matching runs" in page.text()
    page.screenshot("mlflow-runs.png")
    TIMES["runs_table_s"] = round(time.monotonic() - t0, 1)


def test_a_cell_runs_charts_open_on_the_loss_curves(ci, mlflow_ui, page):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ci.results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mhsa-ci")
    cell = next(c for c in ci.study.cells if "acm" in c and c.startswith("occluded_duke") and c.endswith("0.001__s0"))
    (run,) = client.search_runs([exp.experiment_id], f"tags.cell = '{cell}'")
    assert run.data.params["amp"] == "off" and "headline/rank1" in run.data.metrics
    base = mlflow_ui.split("/#/")[0]
    page.open(f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/model-metrics"
              "?workflowType=machine_learning")
    page.wait_for_text("Add chart", 300)
    sections = page.wait_for(
        "(() => { const s = [...document.querySelectorAll('*')].filter(e => e.children.length === 0 && "
        "/^\\(\\d+\\)$/.test(e.textContent.trim())).map(e => e.parentElement.innerText.trim()); "
        "return s.length > 2 ? s : null; })()", 120, "the chart sections")
    assert sections[0].startswith("Train"), sections  # the loss curves first
    assert any(s.startswith("headline") for s in sections) and any(s.startswith("diag") for s in sections)
    time.sleep(2)  # the charts draw after their sections
    page.screenshot("mlflow-child-charts.png")


# ---------------------------------------------------------------------------------- the report
def _open_category(page: Page, name: str) -> None:
    page.js("[...document.querySelectorAll('a')].find(a => a.innerText.trim() === 'Results')?.click()")
    page.wait_for(f"[...document.querySelectorAll('a')].some(a => a.innerText.trim() === {json.dumps(name)})", 60)
    page.js(f"[...document.querySelectorAll('a')].find(a => a.innerText.trim() === {json.dumps(name)}).click()")
    page.wait_for("document.querySelectorAll('tbody tr').length > 0", 60, f"the entries of {name}")


def _entries(page: Page) -> list[list[str]]:
    return page.js("[...document.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')]"
                   ".map(td => td.innerText.trim()))")


def _view(page: Page, row: int) -> None:
    page.js(f"document.querySelectorAll('tbody tr')[{row}].querySelector('a[iconname=eye]').click()")


@pytest.fixture(scope="module")
def report(ci, page):
    argv = shlex.split(ci.report_cmd)
    assert argv[:2] == ["snakemake", "--report"]
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", *argv], cwd=ci.wd, env=ci.env, check=True, capture_output=True,
                   timeout=600)
    TIMES["report_s"] = round(time.monotonic() - t0, 1)
    shutil.copy2(ci.report, OUT / "report.html")
    page.report_events = len(page.browser.events)  # the report's console errors are counted from here
    page.open(ci.report.resolve().as_uri())
    page.wait_for_text("Tables", 120)
    return ci.report


def test_report_carries_no_study_dump(report):
    """Each entry repeats its job's params: a few paths, not the study (it reaches the tables job as a file)."""
    text = report.read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", text, re.S).group(1))
    assert results and all(len(r["job_properties"]["params"]) < 2000 for r in results.values())


def test_every_table_previews_in_the_papers_order(ci, report, page):
    _open_category(page, "Tables")
    entries = _entries(page)
    tables = ci.study.table_ids()
    assert [e[:2] for e in entries] == [[f"{table_number(t):02d}", t] for t in tables]
    for i, t in enumerate(tables):
        _view(page, i)
        caption = page.wait_for(
            f"(() => {{ const f = document.querySelector('iframe'); return f && f.src.includes("
            f"'table_{table_number(t)}.html') ? f.src : null; }})()", 60, f"Table {t}'s preview")
        assert caption
        time.sleep(1)
        got = page.frame_js("data:text/html", "document.querySelector('caption').innerText + '|' + "
                                              "document.querySelectorAll('tbody tr').length")
        title, rows = got.split("|")
        assert title.startswith(f"Table {t}:") and int(rows) > 0, got
        if i == 0:
            page.screenshot("report-table.png")


def test_summary_shows_every_table(ci, report, page):
    _open_category(page, "Summary")
    _view(page, 0)
    page.wait_for("document.querySelector('iframe')?.src.includes('summary.html')", 60, "the summary's preview")
    time.sleep(1)
    captions = page.frame_js("data:text/html", "[...document.querySelectorAll('caption')].map(c => c.innerText)")
    assert [c.split(":")[0] for c in captions] == [f"Table {t}" for t in ci.study.table_ids()]
    page.screenshot("report-summary.png")


def test_fig_7_opens_at_its_top(report, page):
    _open_category(page, "Figures")
    names = [e[0] for e in _entries(page)]
    _view(page, names.index("fig_7_attention_occluded_duke"))
    box = page.wait_for("(() => { const i = [...document.querySelectorAll('img')].find(i => "
                        "i.src.startsWith('data:image/png') && i.naturalWidth > 0); if (!i) return null; "
                        "const r = i.getBoundingClientRect(); return [r.top, r.bottom, window.innerHeight]; })()",
                        60, "Fig. 7")
    top, bottom, height = box
    assert 0 <= top and bottom <= height, box  # the title and column labels are on screen
    page.screenshot("report-fig7.png")


def test_a_download_entry_downloads_its_file(ci, report, page, tmp_path):
    page.allow_downloads(tmp_path)
    _open_category(page, "Downloads")
    entries = _entries(page)
    row = next(i for i, e in enumerate(entries) if e[1] == ci.study.table_ids()[0] and "csv" in e)
    _view(page, row)
    done = page.wait_download(60)
    name = f"table_{table_number(ci.study.table_ids()[0])}.csv"
    assert (tmp_path / done.get("suggestedFilename", name)).read_bytes() == (ci.results / "tables" / name).read_bytes()
    assert page.errors(since=page.report_events) == []  # the report logged no error in any of these tests
