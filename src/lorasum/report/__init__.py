"""Experiment report: Markdown and self-contained HTML, a flat CSV and PNG figures from ``results.json``.

Usage::

    results = load_results("runs/quickstart/results.json")
    paths = write_report(results, "runs/quickstart/report")
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from lorasum.errors import UserError
from lorasum.report.plots import PLOT_FILES, all_plots
from lorasum.report.render import build_blocks, to_html, to_markdown
from lorasum.report.schema import MalformedResults, check_results
from lorasum.report.tables import RESULT_COLUMNS, results_rows
from lorasum.storage import atomic_write_bytes, atomic_write_text, make_folders, read_regular_file

__all__ = ["SCHEMA_VERSIONS", "REPORT_FILES", "load_results", "write_report", "results_csv", "check_report_dir"]

SCHEMA_VERSIONS = (1, 2)
REPORT_FILES = ("report.md", "report.html", "results.csv", *PLOT_FILES)
_REQUIRED = ("config", "evaluations", "combinations")


def load_results(path: str | os.PathLike) -> dict:
    """Read ``results.json`` and check its schema version and top-level keys.

    Schema 1 (no ``compositions``, ``geometry`` or per-row provenance) and 2 are read; the report
    leaves out what a version lacks.

    Raises:
        UserError: the file is missing, is not a regular file (a folder, device or pipe is refused
            before reading), is not JSON, is nested too deeply to read, is not an object, has an
            unknown ``schema_version`` (known: ``SCHEMA_VERSIONS``), lacks a required key, or a field
            that the report reads is of the wrong kind (:func:`lorasum.report.schema.check_results`:
            ``<file>: malformed: <JSON path>: <what>``); the message names the file.
    """
    path = Path(path)
    data = read_regular_file(path, error=UserError, what="results file")
    try:
        results = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read (more than about {sys.getrecursionlimit()} "
                        "levels of lists or objects)") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise UserError(f"{path}: cannot read the JSON ({str(e).split(';')[0]})") from None
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a JSON object at the top level, got {type(results).__name__}")
    version = results.get("schema_version")
    if version not in SCHEMA_VERSIONS:
        known = ", ".join(map(str, SCHEMA_VERSIONS))
        raise UserError(f"{path}: unknown schema_version {version!r} (this lorasum reads {known})")
    missing = [k for k in _REQUIRED if not isinstance(results.get(k), dict if k == "config" else list)]
    if missing:
        raise UserError(f"{path}: missing or malformed key(s): {', '.join(missing)}")
    try:
        check_results(results)
    except MalformedResults as e:
        raise UserError(f"{path}: malformed: {e}") from None
    return results


def check_report_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse a report folder that cannot be one: ``out_dir`` exists and is not a folder (a file, a
    broken symlink, a device). Nothing is changed; a missing ``out_dir`` is fine (it is created).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UserError: ``out_dir`` is not a folder; the message names it and says what it is.
    """
    out = Path(out_dir)
    if os.path.lexists(out) and not out.is_dir():
        what = ("a broken symlink" if out.is_symlink() and not out.exists() else
                "a file" if out.is_file() else "not a folder")
        raise UserError(f"{out}: exists and is {what}; the report is written into a folder of that name "
                        "(move or remove it)")
    return out


def results_csv(results: dict) -> str:
    """CSV text with one flat row per evaluation (columns ``RESULT_COLUMNS``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(results_rows(results))
    return buf.getvalue()


def write_report(results: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.csv`` and the PNG figures into ``out_dir``.

    Each file is written atomically (:mod:`lorasum.storage`); existing report files are
    replaced. ``out_dir`` is created if needed.

    Returns:
        file name → path of each written file: ``REPORT_FILES``, then the per-layer cosine heatmaps
        (``layer_cosines*.png``) when the results hold per-module geometry (schema 2).

    Raises:
        UserError: ``out_dir`` (or a folder above it) exists and is not a folder, or the file system
            refuses the writes (no permission, no space, read-only); the message names the path.
    """
    out = Path(out_dir)
    check_report_dir(out)
    try:
        make_folders(out)
    except OSError as e:
        raise UserError(f"{out}: cannot create the report folder: {e.strerror or e}") from None
    images = all_plots(results)
    blocks = build_blocks(results, images)
    title = f"lorasum report: {(results.get('config') or {}).get('name', 'experiment')}"
    paths = {name: atomic_write_bytes(out / name, png) for name, png in images.items()}
    paths["results.csv"] = atomic_write_text(out / "results.csv", results_csv(results))
    paths["report.md"] = atomic_write_text(out / "report.md", to_markdown(blocks))
    paths["report.html"] = atomic_write_text(out / "report.html", to_html(blocks, images, title))
    return {name: paths[name] for name in REPORT_FILES} | {n: p for n, p in paths.items() if n not in REPORT_FILES}
