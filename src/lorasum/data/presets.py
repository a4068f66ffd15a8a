"""Domain presets: which published files make each domain, and :func:`load_domain`.

=========  =====================================  ===============================================
domain     source                                 files (relative to the data root)
=========  =====================================  ===============================================
math       GSM8K (Cobbe et al. 2021)              gsm8k/grade_school_math/data/{train,test}.jsonl
medicine   MedQuAD (Ben Abacha & Demner-Fushman)  medquad/<N_Subset>/*.xml (or a flat medquad/*.csv|json|jsonl)
finance    TAT-QA (Zhu et al. 2021)               tatqa/dataset_raw/tatqa_dataset_{dev,test_gold}.json
pubmedqa   PubMedQA PQA-L (Jin et al. 2019)       pubmedqa/data/{ori_pqal.json,test_ground_truth.json}
=========  =====================================  ===============================================

GSM8K, TAT-QA (test_gold; the dev file is the training pool, since the train file is
not in the data copy) and PubMedQA (the 500 ids of test_ground_truth.json) have
official test splits; validation is carved from the rest. MedQuAD has none and is
split by document.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lorasum.data.clean import clean_records
from lorasum.data.records import Record
from lorasum.data.sources import load_gsm8k, load_medquad_flat, load_medquad_xml, load_pubmedqa, load_tatqa
from lorasum.data.sources.pubmedqa import load_pubmedqa_test_ids
from lorasum.data.split import check_leakage, carve_validation, split_records, subsample
from lorasum.errors import ConfigError, DataError
from lorasum.storage import sha256_file

__all__ = ["DomainData", "DOMAINS", "PRESETS", "Preset", "load_domain", "content_hash"]

_HINT = "set LORASUM_DATA_ROOT to the folder holding gsm8k/, medquad/, tatqa/ and pubmedqa/"


@dataclass(frozen=True)
class DomainData:
    """One domain's records, split, with provenance.

    Attributes:
        name: domain name (``"math"``, ...).
        train, validation, test: the records of each split (stable order).
        sources: ``[{"path": <relative to the data root>, "sha256": ..., "records": <loaded>}]``;
            for a MedQuAD XML subset the path is its folder and the sha256 is taken over the sorted
            lines ``"<relative path> <file sha256>\\n"``.
        content_hash: :func:`content_hash` of the three splits.
        report: counts (loaded, dropped, duplicates, sizes before and after subsampling, ...).
    """

    name: str
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    sources: list[dict]
    content_hash: str
    report: dict


@dataclass
class _Loaded:
    pool: list[Record]
    test: list[Record] | None
    sources: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """A domain preset: its name, a one-line description and its reader."""

    name: str
    description: str
    load: Callable[[Path], _Loaded]


def _need(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.exists():
        raise DataError(f"{path}: not found under data root {root}; {_HINT}")
    return path


def _file_source(root: Path, path: Path, records: int) -> dict:
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "records": records}


def _load_math(root: Path) -> _Loaded:
    base = "gsm8k/grade_school_math/data"
    parts = {}
    out = _Loaded(pool=[], test=None)
    for split in ("train", "test"):
        path = _need(root, f"{base}/{split}.jsonl")
        parts[split] = list(load_gsm8k(path, split=split))
        out.sources.append(_file_source(root, path, len(parts[split])))
    out.pool, out.test = parts["train"], parts["test"]
    out.stats["loaded"] = len(out.pool) + len(out.test)
    return out


def _load_medicine(root: Path) -> _Loaded:
    folder = _need(root, "medquad")
    subsets = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.xml")))
    out = _Loaded(pool=[], test=None)
    stats = out.stats
    if subsets:
        for sub in subsets:
            sub_stats: dict = {}
            recs = list(load_medquad_xml(sub, stats=sub_stats))
            out.pool += recs
            out.sources.append({"path": sub.relative_to(root).as_posix(), "sha256": sub_stats["tree_sha256"],
                                "records": len(recs)})
            for key in ("files", "pairs", "empty_answers", "empty_questions", "files_without_pairs"):
                stats[key] = stats.get(key, 0) + sub_stats.get(key, 0)
            stats.setdefault("skipped_files", []).extend(sub_stats.get("skipped_files", []))
    else:
        flats = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".json", ".jsonl"))
        if not flats:
            raise DataError(
                f"{folder}: no MedQuAD XML subset folders (N_Name/*.xml) or flat .csv/.json/.jsonl file; {_HINT}"
            )
        for path in flats:
            recs = list(load_medquad_flat(path, stats=stats))
            out.pool += recs
            out.sources.append(_file_source(root, path, len(recs)))
    stats["loaded"] = len(out.pool)
    return out


def _load_finance(root: Path) -> _Loaded:
    dev = _need(root, "tatqa/dataset_raw/tatqa_dataset_dev.json")
    test = _need(root, "tatqa/dataset_raw/tatqa_dataset_test_gold.json")
    pool, gold = list(load_tatqa(dev)), list(load_tatqa(test))
    sources = [_file_source(root, dev, len(pool)), _file_source(root, test, len(gold))]
    out = _Loaded(pool=pool, test=gold, sources=sources)
    out.stats["loaded"] = len(pool) + len(gold)
    return out


def _load_pubmedqa(root: Path) -> _Loaded:
    data = _need(root, "pubmedqa/data/ori_pqal.json")
    truth = _need(root, "pubmedqa/data/test_ground_truth.json")
    records = list(load_pubmedqa(data))
    test_ids = load_pubmedqa_test_ids(truth)
    known = {r.id.split("/", 1)[1] for r in records}
    missing = sorted(test_ids - known)
    if missing:
        raise DataError(f"{truth}: {len(missing)} test id(s) not in {data.name}, e.g. {missing[0]}")
    pool = [r for r in records if r.id.split("/", 1)[1] not in test_ids]
    test = [r for r in records if r.id.split("/", 1)[1] in test_ids]
    out = _Loaded(pool=pool, test=test,
                  sources=[_file_source(root, data, len(records)), _file_source(root, truth, len(test_ids))])
    out.stats["loaded"] = len(records)
    return out


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("math", "GSM8K grade-school math word problems (official train / test)", _load_math),
        Preset("medicine", "MedQuAD consumer-health QA from NIH sites (split by document)", _load_medicine),
        Preset("finance", "TAT-QA table + text QA over financial reports (dev pool / test_gold)", _load_finance),
        Preset("pubmedqa", "PubMedQA PQA-L yes/no/maybe + conclusion (official 500 test ids)", _load_pubmedqa),
    )
}

#: Known domain names.
DOMAINS: tuple[str, ...] = tuple(PRESETS)


def content_hash(train: list[Record], validation: list[Record], test: list[Record]) -> str:
    """sha256 over ``[split, id, question, context, answer]`` JSON lines of the three splits, in order."""
    h = hashlib.sha256()
    for split, recs in (("train", train), ("validation", validation), ("test", test)):
        for r in recs:
            h.update(json.dumps([split, r.id, r.question, r.context, r.answer], ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


def _check_unique_ids(name: str, records: list[Record]) -> None:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataError(f"{name}: record id {r.id} occurs twice ({r.source})")
        seen.add(r.id)


def load_domain(
    name: str,
    root: str | os.PathLike,
    *,
    split_seed: int = 0,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.1,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
) -> DomainData:
    """Load, clean, deduplicate, split and subsample one domain preset.

    Steps: read the preset's files; :func:`~lorasum.data.clean.clean_records` (NFC, whitespace,
    duplicates; with an official test split the test records come first so that duplicates are
    dropped from the training pool); split (official test kept, validation carved from the pool
    with ``validation_fraction``; otherwise group-aware :func:`~lorasum.data.split.split_records`
    with both fractions; ``test_fraction`` is then unused); :func:`~lorasum.data.split.check_leakage`;
    seeded :func:`~lorasum.data.split.subsample` of each split to its size (``None``: all).

    Raises:
        ConfigError: unknown domain (the message lists the known ones) or bad fractions / sizes.
        DataError: the data root or a file is missing (says to set LORASUM_DATA_ROOT), a file
            is malformed, or the splits leak into each other.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown domain {name!r}; known domains: {', '.join(DOMAINS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; {_HINT}")
    loaded = PRESETS[name].load(root)
    if loaded.test is not None:
        test_ids = {r.id for r in loaded.test}
        cleaned, counts = clean_records([*loaded.test, *loaded.pool])
        test = [r for r in cleaned if r.id in test_ids]
        train, validation = carve_validation([r for r in cleaned if r.id not in test_ids],
                                             seed=split_seed, validation_fraction=validation_fraction)
    else:
        cleaned, counts = clean_records(loaded.pool)
        s = split_records(cleaned, seed=split_seed, validation_fraction=validation_fraction,
                          test_fraction=test_fraction)
        train, validation, test = s.train, s.validation, s.test
    _check_unique_ids(name, cleaned)
    check_leakage({"train": train, "validation": validation, "test": test})
    available = {"train": len(train), "validation": len(validation), "test": len(test)}
    train = subsample(train, train_size, seed=split_seed, purpose="train")
    validation = subsample(validation, validation_size, seed=split_seed, purpose="validation")
    test = subsample(test, test_size, seed=split_seed, purpose="test")
    report = {
        **loaded.stats,
        "cleaning": counts,
        "official_test": loaded.test is not None,
        "split_seed": split_seed,
        "validation_fraction": validation_fraction,
        "test_fraction": None if loaded.test is not None else test_fraction,
        "available": available,
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
        "groups": {k: len({r.split_key for r in v}) for k, v in
                   (("train", train), ("validation", validation), ("test", test))},
    }
    return DomainData(name=name, train=train, validation=validation, test=test, sources=loaded.sources,
                      content_hash=content_hash(train, validation, test), report=report)
