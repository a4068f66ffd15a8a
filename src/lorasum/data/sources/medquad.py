"""MedQuAD (Ben Abacha & Demner-Fushman 2019, github.com/abachaa/MedQuAD).

Two published forms are read:

* the XML tree: folders ``N_Name/`` of XML files, one document per file,
  ``Document[@id,@source,@url]/QAPairs/QAPair/{Question,Answer}``;
* the flat mirror (CSV / JSON list / JSON Lines) with columns ``Question``, ``Answer``,
  ``qtype`` and optionally a focus (``Focus`` / ``question_focus``) or a document id
  (``document_id`` / ``Document``); column names are matched case-insensitively.

Whitespace in questions and answers is collapsed to single spaces (the answers have
runs of spaces, newlines and ``"    - "`` bullets). Pairs with an empty answer are
dropped and counted (GARD has 5).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import defusedxml
from defusedxml import ElementTree as DET

from lorasum.data.records import Record
from lorasum.data.sources._io import bump, iter_rows, read_bytes, skip_or_raise
from lorasum.errors import DataError

__all__ = ["load_medquad", "load_medquad_xml", "load_medquad_flat"]


def _collapse(text: str | None) -> str:
    return " ".join(text.split()) if text else ""


def _element_text(elem: Any) -> str:
    return _collapse("".join(elem.itertext())) if elem is not None else ""


class _MalformedXml(DataError):
    """A file that is not well-formed XML (skippable with ``skip_bad_rows``; unsafe XML is not)."""


def _parse(path: Path, data: bytes) -> Any:
    try:
        return DET.fromstring(data)
    except DET.ParseError as e:
        raise _MalformedXml(f"{path}: XML parse error ({e})") from None
    except defusedxml.DefusedXmlException as e:
        raise DataError(f"{path}: unsafe XML refused ({type(e).__name__})") from None


def _file_records(path: Path, rel: str, root: Any, domain: str, stats: MutableMapping | None) -> list[Record]:
    pairs = root.findall("QAPairs/QAPair")
    if not pairs:
        bump(stats, "files_without_pairs")
        if stats is not None:
            stats.setdefault("skipped_files", []).append(rel)
        return []
    doc_id = root.get("id") or root.get("fid") or path.stem
    subset = path.parent.name
    out = []
    for i, pair in enumerate(pairs):
        bump(stats, "pairs")
        question = _element_text(pair.find("Question"))
        answer = _element_text(pair.find("Answer"))
        if not answer:
            bump(stats, "empty_answers")
            continue
        if not question:
            bump(stats, "empty_questions")
            continue
        pid = pair.get("pid") or str(i)
        out.append(
            Record(
                id=f"medquad/{subset}/{path.stem}-{pid}", domain=domain, question=question, answer=answer,
                context="", group=f"medquad/{subset}/{doc_id}", source=f"{rel}:{pid}",
            )
        )
    return out


def load_medquad_xml(
    folder: str | os.PathLike,
    *,
    domain: str = "medicine",
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield the answered QA pairs of a MedQuAD XML folder (one subset, or the whole tree).

    Files are found recursively (``**/*.xml``) and read in sorted order. Ids are
    ``"medquad/<subset>/<file stem>-<pid>"``; the group is ``"medquad/<subset>/<document id>"``
    so that a document never straddles splits (document ids repeat across subsets).

    Args:
        folder: a subset folder such as ``medquad/1_CancerGov_QA`` or the tree above it.
        domain: the records' domain.
        skip_bad_rows: a file that does not parse is skipped and counted in ``stats["bad_rows"]``
            instead of raising (unsafe XML, e.g. an entity-expansion bomb, is always refused).
        stats: if given, receives counts ``files``, ``pairs``, ``empty_answers``,
            ``empty_questions``, ``files_without_pairs``, the list ``skipped_files`` (paths
            relative to ``folder``'s parent) and ``tree_sha256`` (sha256 over the sorted lines
            ``"<relative path> <file sha256>\\n"``).

    Any root element with ``QAPairs/QAPair`` children is read (one CDC file's root is
    ``DiseaseFile[@fid]``). Files without them (4 NINDS files in a lower-case
    ``doc/qaPairs/pair`` schema, 6 NIDDK files with an empty ``QAPairs``) are skipped and
    counted, which matches the 16,407 answered pairs of the upstream count and of the
    HF mirror used by arXiv 2508.11985.

    Raises:
        DataError: the folder is missing or holds no XML file, a file does not parse
            (message names the file, line and column), unsafe XML (defusedxml refuses DTD
            entities), or no file holds any answered pair (naming a file without ``QAPairs``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: MedQuAD folder not found")
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise DataError(f"{folder}: no MedQuAD XML files (*.xml) in this folder")
    digest = hashlib.sha256()
    local: dict[str, Any] = {}
    n_records = 0
    for path in files:
        data = read_bytes(path)
        rel = path.relative_to(folder.parent).as_posix()
        digest.update(f"{rel} {hashlib.sha256(data).hexdigest()}\n".encode())
        bump(local, "files")
        try:
            root = _parse(path, data)
        except _MalformedXml as e:
            skip_or_raise(e, skip_bad_rows, local)
            continue
        for record in _file_records(path, rel, root, domain, local):
            n_records += 1
            yield record
    if n_records == 0:
        example = f", e.g. {local['skipped_files'][0]} has none" if local.get("skipped_files") else ""
        raise DataError(
            f"{folder}: no answered QAPairs/QAPair in {len(files)} XML files{example} (not MedQuAD XML?)"
        )
    local["tree_sha256"] = digest.hexdigest()
    if stats is not None:
        for key, value in local.items():
            if isinstance(value, int):
                bump(stats, key, value)
            elif isinstance(value, list):
                stats.setdefault(key, []).extend(value)
            else:
                stats[key] = value


_ALIASES = {
    "question": ("question",),
    "answer": ("answer",),
    "qtype": ("qtype", "question_type"),
    "focus": ("focus", "question_focus"),
    "document": ("document_id", "document", "doc_id"),
}


def _pick(row: dict, name: str, where: str, *, required: bool = False) -> str:
    lower = {str(k).lower(): k for k in row}
    for alias in _ALIASES[name]:
        if alias in lower:
            value = row[lower[alias]]
            if value is None:
                return ""
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise DataError(f"{where}: field '{lower[alias]}' must be a string, got {type(value).__name__}")
            return str(value)
    if required:
        raise DataError(f"{where}: missing field '{name.capitalize()}'")
    return ""


def load_medquad_flat(
    path: str | os.PathLike,
    *,
    domain: str = "medicine",
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield the answered pairs of a flat MedQuAD mirror (``.csv``, ``.json`` list, ``.jsonl``).

    Ids are ``"medquad/<file stem>/<row index>"``; the group is ``"medquad/focus/<focus,
    case-folded>"`` when a focus column is present and non-empty, else
    ``"medquad/doc/<document id>"`` when a document column is, else the id. With
    ``skip_bad_rows`` malformed rows are counted in ``stats["bad_rows"]`` instead of raising.

    Raises:
        DataError: unreadable / malformed file, unknown extension, a missing ``Question`` or
            ``Answer`` column, a non-string value, or no answered row at all.
    """
    path = Path(path)
    n_records = 0
    for index, (where, row) in enumerate(iter_rows(path, skip_bad_rows=skip_bad_rows, stats=stats)):
        try:
            question = _collapse(_pick(row, "question", where, required=True))
            answer = _collapse(_pick(row, "answer", where, required=True))
            focus = _collapse(_pick(row, "focus", where)).casefold()
            document = _collapse(_pick(row, "document", where))
        except DataError as e:
            skip_or_raise(e, skip_bad_rows, stats)
            continue
        bump(stats, "pairs")
        if not answer:
            bump(stats, "empty_answers")
            continue
        if not question:
            bump(stats, "empty_questions")
            continue
        rid = f"medquad/{path.stem}/{index}"
        group = f"medquad/focus/{focus}" if focus else f"medquad/doc/{document}" if document else rid
        n_records += 1
        yield Record(
            id=rid, domain=domain, question=question, answer=answer, context="", group=group,
            source=f"{path.name}:{where.rsplit(':', 1)[-1].strip()}",
        )
    if n_records == 0:
        raise DataError(f"{path}: no rows with a non-empty Answer")


def load_medquad(
    path: str | os.PathLike,
    *,
    domain: str = "medicine",
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Dispatch: a folder is read as the XML tree (:func:`load_medquad_xml`), a file as the
    flat mirror (:func:`load_medquad_flat`). Raises what those raise."""
    path = Path(path)
    if path.is_dir():
        return load_medquad_xml(path, domain=domain, skip_bad_rows=skip_bad_rows, stats=stats)
    return load_medquad_flat(path, domain=domain, skip_bad_rows=skip_bad_rows, stats=stats)
