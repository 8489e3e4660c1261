"""The tables as one page: `results/tables/summary.html`, every table of the study in the paper's order
(I, II, ..., XIII) with its csv, md and tex as download links, composed from the `table_<N>.html` files
that mhsa.study.tables writes.

Snakemake's report previews HTML and images only (a Markdown, CSV or LaTeX entry is a download
button), so the report shows each table's `.html` and this page (docs/workflow.md, "The report"). The
downloads are data: links inside the page, so they work wherever the page is opened: from the tables
folder, or embedded in the self-contained report.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from mhsa.io import atomic_write_text
from mhsa.study.build import Study, table_number
from mhsa.study.tables import TABLE_FORMATS

SUMMARY_HTML = "summary.html"
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S)
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)
_BANNER = re.compile(r'<p class="banner">.*?</p>\s*', re.S)
# the page's own additions to the tables' style
_PAGE_STYLE = ("body{font-family:sans-serif;margin:16px}section{margin:28px 0}nav li{margin:2px 0}"
               ".downloads{font-size:13px;color:#333}.downloads a{margin-left:6px}")


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "text/plain"
    return f"data:{mime};charset=utf-8;base64,{base64.b64encode(path.read_bytes()).decode()}"


def _downloads(tables_dir: Path, n: int) -> str:
    links = [f'<a download="table_{n}.{ext}" href="{_data_uri(tables_dir / f"table_{n}.{ext}")}">{ext}</a>'
             for ext in TABLE_FORMATS if ext != "html" and (tables_dir / f"table_{n}.{ext}").is_file()]
    return f'<p class="downloads">Download:{"".join(links)}</p>' if links else ""


def summary_page(study: Study, tables_dir: str | Path) -> str:
    """The page: the banner of the tables (synthetic data), an index, then each table with its downloads."""
    tables_dir = Path(tables_dir)
    style, banner, index, sections = "", "", [], []
    for tid in study.table_ids():
        n = table_number(tid)
        path = tables_dir / f"table_{n}.html"
        title = html.escape(str(study.config["tables"][tid].get("title", "")))
        if not path.is_file():
            index.append(f"<li>Table {tid}: {title} (not written yet)</li>")
            continue
        page = path.read_text(encoding="utf-8")
        style = style or (_STYLE.search(page).group(1) if _STYLE.search(page) else "")
        body = _BODY.search(page).group(1) if _BODY.search(page) else page
        found = _BANNER.search(body)
        banner = banner or (found.group(0) if found else "")
        index.append(f'<li><a href="#table-{tid}">Table {tid}</a>: {title}</li>')
        sections.append(f'<section id="table-{tid}">\n{_BANNER.sub("", body).strip()}\n'
                        f"{_downloads(tables_dir, n)}\n</section>")
    preset = html.escape(str(study.config.get("preset", "")))
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
        f"<title>MHSA-Net reproduction: tables (preset {preset})</title>",
        f"<style>{style}{_PAGE_STYLE}</style></head><body>",
        f"<h1>MHSA-Net reproduction: tables (preset {preset})</h1>", banner.strip(),
        "<nav><ul>", *index, "</ul></nav>", *sections, "</body></html>", "",
    ])


def write_summary_page(study: Study, tables_dir: str | Path) -> Path:
    """`<tables_dir>/summary.html` (atomically), after mhsa.study.tables.build_all wrote the tables."""
    return atomic_write_text(Path(tables_dir) / SUMMARY_HTML, summary_page(study, tables_dir))
