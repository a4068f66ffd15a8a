"""Read one :class:`~lorasum.config.SourceSpec` (a file, folder or hub data set) into records.

:func:`read_source` resolves the path against the data root, calls the format's reader
from :mod:`lorasum.data.sources`, and returns the records by split role together with
their provenance (path, sha256, count) and the reader's counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lorasum.config import SourceSpec
from lorasum.data.records import Record
from lorasum.data.sources import (
    load_financial_qa_10k,
    load_gsm8k,
    load_hf_dataset,
    load_mathqa,
    load_medquad_flat,
    load_medquad_xml,
    load_pubmedqa,
    load_pubmedqa_test_ids,
    load_tabular,
    load_tatqa,
)
from lorasum.data.sources._io import merge_stats
from lorasum.errors import ConfigError, DataError
from lorasum.storage import sha256_file

__all__ = ["HINT", "LoadedSource", "READERS", "resolve_path", "read_source"]

HINT = "set LORASUM_DATA_ROOT (or data.root) to the folder holding the data (gsm8k/, medquad/, tatqa/, pubmedqa/, ...)"


@dataclass
class LoadedSource:
    """What one source yields.

    Attributes:
        parts: ``(role, records)`` pairs; role ``train``, ``test`` or ``all`` (see SourceSpec.split).
        provenance: ``{"path", "sha256", "records", "format", "split"}`` per file or folder read.
        stats: the readers' counts (``records``, ``empty``, ``bad_rows``, ``files``, ...), summed.
    """

    parts: list[tuple[str, list[Record]]] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def resolve_path(path: str, root: Path | None) -> Path:
    """``path`` if absolute, else ``root / path``; it must exist.

    Raises:
        DataError: the data root is needed but missing or not a folder, or the path does not exist
            (the message says to set LORASUM_DATA_ROOT for a relative path).
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        if root is not None and os.path.lexists(root) and not root.is_dir():
            raise DataError(f"{root}: not a folder; the data folder must be a folder; {HINT}")
        if root is None or not root.is_dir():
            raise DataError(f"{root}: data folder not found; {HINT}")
        p = root / p
        if not p.exists():
            raise DataError(f"{p}: not found under data root {root}; {HINT}")
    elif not p.exists():
        raise DataError(f"{p}: not found")
    return p


def _shown(path: Path, root: Path | None) -> str:
    """``path`` relative to the data root when under it, else absolute (for provenance)."""
    try:
        return path.relative_to(root).as_posix() if root is not None else str(path)
    except ValueError:
        return str(path)


def _entry(spec: SourceSpec, shown: str, sha: str, n: int) -> dict:
    return {"path": shown, "sha256": sha, "records": n, "format": spec.format, "split": spec.split}


def _records_sha256(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.question, r.context, r.answer], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def _file_reader(load: Callable[..., object]) -> Callable[[SourceSpec, Path | None, str, bool], LoadedSource]:
    """A reader for formats that read one file with ``load(path, domain=, skip_bad_rows=, stats=, **extra)``."""

    def read(spec: SourceSpec, root: Path | None, domain: str, skip: bool) -> LoadedSource:
        path = resolve_path(spec.path, root)
        out = LoadedSource()
        records = list(load(path, domain=domain, skip_bad_rows=skip, stats=out.stats, **_extra(spec)))
        out.parts.append((spec.split, records))
        out.provenance.append(_entry(spec, _shown(path, root), sha256_file(path), len(records)))
        return out

    return read


def _extra(spec: SourceSpec) -> dict:
    """Format-specific keyword arguments of the file readers."""
    if spec.format == "gsm8k":
        return {"split": spec.id_prefix} if spec.id_prefix else {}
    if spec.format == "mathqa":
        return {"id_prefix": spec.id_prefix}
    if spec.format == "financial_qa_10k":
        return {"id_prefix": spec.id_prefix, **({"group_field": spec.group_field} if spec.group_field else {})}
    if spec.format == "tabular":
        return {"question_field": spec.question_field or "question", "answer_field": spec.answer_field or "answer",
                "context_field": spec.context_field, "group_field": spec.group_field, "id_prefix": spec.id_prefix}
    return {}


def _read_medquad(spec: SourceSpec, root: Path | None, domain: str, skip: bool) -> LoadedSource:
    """A folder of XML subsets (``N_Name/*.xml``), a folder of flat files, or one flat file (anything
    that is not a folder is read as a file, which refuses devices and pipes)."""
    folder = resolve_path(spec.path, root)
    if not folder.is_dir():
        return _file_reader(load_medquad_flat)(spec, root, domain, skip)
    out = LoadedSource()
    subsets = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.xml")))
    if subsets:
        for sub in subsets:
            sub_stats: dict = {}
            recs = list(load_medquad_xml(sub, domain=domain, skip_bad_rows=skip, stats=sub_stats))
            out.parts.append((spec.split, recs))
            out.provenance.append(_entry(spec, _shown(sub, root), sub_stats["tree_sha256"], len(recs)))
            merge_stats(out.stats, sub_stats)
        return out
    flats = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".json", ".jsonl", ".parquet"))
    if not flats:
        raise DataError(f"{folder}: no MedQuAD XML subset folders (N_Name/*.xml) or flat "
                        f".csv/.json/.jsonl/.parquet file; {HINT}")
    for path in flats:
        recs = list(load_medquad_flat(path, domain=domain, skip_bad_rows=skip, stats=out.stats))
        out.parts.append((spec.split, recs))
        out.provenance.append(_entry(spec, _shown(path, root), sha256_file(path), len(recs)))
    return out


def _read_pubmedqa(spec: SourceSpec, root: Path | None, domain: str, skip: bool) -> LoadedSource:
    """``ori_pqal.json``; with ``test_ids`` the listed PMIDs form the test part, the rest follow ``split``."""
    out = _file_reader(load_pubmedqa)(spec, root, domain, skip)
    if spec.test_ids is None:
        return out
    data = resolve_path(spec.path, root)
    truth = resolve_path(spec.test_ids, root)
    (_, records), = out.parts
    test_ids = load_pubmedqa_test_ids(truth)
    known = {r.id.split("/", 1)[1] for r in records}
    missing = sorted(test_ids - known)
    if missing and not skip:
        raise DataError(f"{truth}: {len(missing)} test id(s) not in {data.name}, e.g. {missing[0]}")
    out.parts = [("test", [r for r in records if r.id.split("/", 1)[1] in test_ids]),
                 (spec.split, [r for r in records if r.id.split("/", 1)[1] not in test_ids])]
    out.provenance.append(_entry(spec, _shown(truth, root), sha256_file(truth), len(test_ids)) | {"split": "test"})
    return out


def _read_hf(spec: SourceSpec, root: Path | None, domain: str, skip: bool) -> LoadedSource:
    out = LoadedSource()
    records = list(load_hf_dataset(
        spec.path, domain=domain, config=spec.hf_config, split=spec.hf_split, revision=spec.hf_revision,
        question_field=spec.question_field or "question", answer_field=spec.answer_field or "answer",
        context_field=spec.context_field, group_field=spec.group_field, id_prefix=spec.id_prefix,
        skip_bad_rows=skip, stats=out.stats,
    ))
    out.parts.append((spec.split, records))
    out.provenance.append(_entry(spec, f"hf:{spec.path}", _records_sha256(records), len(records))
                          | {"hf_config": spec.hf_config, "hf_split": spec.hf_split, "hf_revision": spec.hf_revision})
    return out


#: Reader per SourceSpec.format: ``(spec, data root, domain, skip_bad_rows) -> LoadedSource``.
READERS: dict[str, Callable[[SourceSpec, Path | None, str, bool], LoadedSource]] = {
    "gsm8k": _file_reader(load_gsm8k),
    "medquad": _read_medquad,
    "tatqa": _file_reader(load_tatqa),
    "pubmedqa": _read_pubmedqa,
    "mathqa": _file_reader(load_mathqa),
    "financial_qa_10k": _file_reader(load_financial_qa_10k),
    "tabular": _file_reader(load_tabular),
    "hf": _read_hf,
}


def read_source(spec: SourceSpec, root: Path | None, domain: str, *, skip_bad_rows: bool = False) -> LoadedSource:
    """Read one source of ``domain`` (see :data:`READERS`).

    Raises:
        DataError: from the reader (missing / malformed file, bad row unless ``skip_bad_rows``, ...).
        ConfigError: an unknown format (not reachable through a validated SourceSpec).
    """
    if spec.format not in READERS:  # pragma: no cover - SourceSpec validates the format
        raise ConfigError(f"unknown source format {spec.format!r}; known: {', '.join(READERS)}")
    return READERS[spec.format](spec, root, domain, skip_bad_rows)
