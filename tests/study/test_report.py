"""summary.html (mhsa.study.report): every table on one page, in the paper's order, with its downloads."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from mhsa.study.build import build_study, load_study_config, table_number
from mhsa.study.report import summary_page, write_summary_page
from mhsa.study.tables import build_all

ROOT = Path(__file__).resolve().parents[2]


def test_summary_page_shows_every_table_in_the_papers_order(tmp_path):
    study = build_study(load_study_config(ROOT / "config.yaml"), "demo")
    build_all(study, tmp_path / "runs", tmp_path / "tables")  # no cell finished: every own cell n/a
    page = write_summary_page(study, tmp_path / "tables").read_text()
    captions = re.findall(r"<caption>Table ([IVX]+):", page)
    assert captions == ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII"]
    assert [f"#table-{t}" for t in captions] == re.findall(r'<a href="(#table-[IVX]+)">', page)
    assert page.count('class="banner"') == 1 and "SYNTHETIC DATA" in page  # said once, at the top
    assert page.count("<body") == 1 and page.count("</html>") == 1


def test_downloads_are_the_table_files_themselves(tmp_path):
    study = build_study(load_study_config(ROOT / "config.yaml"), "ci")
    build_all(study, tmp_path / "runs", tmp_path)
    page = summary_page(study, tmp_path)
    links = dict(re.findall(r'<a download="([^"]+)" href="data:[^;]+;charset=utf-8;base64,([^"]+)"', page))
    want = {f"table_{table_number(t)}.{e}" for t in study.table_ids() for e in ("csv", "md", "tex")}
    assert set(links) == want
    for name, data in links.items():
        assert base64.b64decode(data) == (tmp_path / name).read_bytes(), name


def test_a_table_not_written_yet_is_named_not_dropped(tmp_path):
    study = build_study(load_study_config(ROOT / "config.yaml"), "ci")
    page = summary_page(study, tmp_path)
    assert "Table II: Comparison on Occluded-DukeMTMC (not written yet)" in page
