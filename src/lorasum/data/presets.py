"""Domains: the four presets, users' own domains (:class:`~lorasum.config.DomainSpec`) and :func:`load_domain`.

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
split by document. A preset is a :class:`~lorasum.config.DomainSpec` like any user domain.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorasum.config import DomainSpec, ExperimentConfig, SourceSpec, data_root
from lorasum.data.clean import clean_records
from lorasum.data.formats import read_source
from lorasum.data.records import Record
from lorasum.data.sources._io import merge_stats
from lorasum.data.split import carve_validation, check_leakage, split_records, subsample
from lorasum.errors import ConfigError, DataError

__all__ = ["DomainData", "DOMAINS", "PRESETS", "domain_spec", "load_domain", "load_domain_spec", "load_domains",
           "content_hash"]


@dataclass(frozen=True)
class DomainData:
    """One domain's records, split, with provenance.

    Attributes:
        name: domain name (``"math"``, ...).
        train, validation, test: the records of each split (stable order).
        sources: ``[{"path": <relative to the data root>, "sha256": ..., "records": <loaded>, "format", "split"}]``;
            for a MedQuAD XML subset the path is its folder and the sha256 is taken over the sorted
            lines ``"<relative path> <file sha256>\\n"``; for a hub data set the path is ``hf:<id>``
            and the sha256 is taken over its records.
        content_hash: :func:`content_hash` of the three splits.
        report: counts (loaded, dropped, duplicates, sizes before and after subsampling, ...);
            ``report["removed"]`` sums every record left out, by cause.
        prompt_template: the domain's prompt template (None: the built-in one).
        max_length: the domain's own token limit (None: use data.max_length).
    """

    name: str
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    sources: list[dict]
    content_hash: str
    report: dict
    prompt_template: str | None = None
    max_length: int | None = None


def _src(fmt: str, path: str, split: str = "all", **kw: Any) -> SourceSpec:
    return SourceSpec(format=fmt, path=path, split=split, **kw)


_GSM8K = "gsm8k/grade_school_math/data"
#: The built-in domains; users add their own with the same schema (``custom_domains`` in the config).
PRESETS: dict[str, DomainSpec] = {
    "math": DomainSpec(
        description="GSM8K grade-school math word problems (official train / test)",
        sources=[_src("gsm8k", f"{_GSM8K}/train.jsonl", "train"), _src("gsm8k", f"{_GSM8K}/test.jsonl", "test")]),
    "medicine": DomainSpec(
        description="MedQuAD consumer-health QA from NIH sites (split by document)",
        sources=[_src("medquad", "medquad")]),
    "finance": DomainSpec(
        description="TAT-QA table + text QA over financial reports (dev pool / test_gold)",
        sources=[_src("tatqa", "tatqa/dataset_raw/tatqa_dataset_dev.json", "train"),
                 _src("tatqa", "tatqa/dataset_raw/tatqa_dataset_test_gold.json", "test")]),
    "pubmedqa": DomainSpec(
        description="PubMedQA PQA-L yes/no/maybe + conclusion (official 500 test ids)",
        sources=[_src("pubmedqa", "pubmedqa/data/ori_pqal.json", "train",
                      test_ids="pubmedqa/data/test_ground_truth.json")]),
}

#: Preset domain names.
DOMAINS: tuple[str, ...] = tuple(PRESETS)

#: Report keys that count records left out while reading, copied into ``report["removed"]``
#: (``files_without_pairs`` counts MedQuAD files, not records, and stays at the top level).
_REMOVAL_KEYS = ("empty", "empty_answers", "empty_questions", "bad_rows")


def domain_spec(name: str, custom_domains: Mapping[str, DomainSpec] | None = None) -> DomainSpec:
    """The definition of a domain name: a preset or one of ``custom_domains``.

    Raises:
        ConfigError: unknown name (the message lists the known ones), or a custom domain
            named like a preset.
    """
    custom = dict(custom_domains or {})
    clash = sorted(set(custom) & set(PRESETS))
    if clash:
        raise ConfigError(f"custom domain {clash[0]!r} has the name of a preset; choose another name")
    if name in PRESETS:
        return PRESETS[name]
    if name in custom:
        return custom[name]
    raise ConfigError(f"unknown domain {name!r}; known domains: {', '.join([*DOMAINS, *custom])}")


def content_hash(train: list[Record], validation: list[Record], test: list[Record]) -> str:
    """sha256 over ``[split, id, question, context, answer]`` JSON lines of the three splits, in order
    (with the prompt template appended to a record's line when it has its own)."""
    h = hashlib.sha256()
    for split, recs in (("train", train), ("validation", validation), ("test", test)):
        for r in recs:
            line = [split, r.id, r.question, r.context, r.answer]
            if r.prompt_template is not None:
                line.append(r.prompt_template)
            h.update(json.dumps(line, ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


def _check_unique_ids(name: str, records: list[Record]) -> None:
    seen: dict[str, str] = {}
    for r in records:
        if r.id in seen:
            raise DataError(f"{name}: record id {r.id} occurs twice ({seen[r.id]} and {r.source}); "
                            f"give the sources different id_prefix values")
        seen[r.id] = r.source


def _split(parts: list[tuple[str, list[Record]]], seed: int, vf: float, tf: float) -> tuple[list, list, list, dict]:
    """Clean all parts, then split by role (see :class:`~lorasum.config.SourceSpec`).

    Test-role records come first when cleaning, so a duplicate is dropped from the training side.
    """
    by_role: dict[str, list[Record]] = {"test": [], "all": [], "train": []}
    for role, recs in parts:
        by_role[role].extend(recs)
    role_of = {r.id: role for role, recs in by_role.items() for r in recs}
    cleaned, counts = clean_records([*by_role["test"], *by_role["all"], *by_role["train"]])
    kept = {role: [r for r in cleaned if role_of[r.id] == role] for role in by_role}
    if by_role["test"]:
        test, pool = kept["test"], kept["all"] + kept["train"]
    elif not kept["train"]:
        s = split_records(kept["all"], seed=seed, validation_fraction=vf, test_fraction=tf)
        return s.train, s.validation, s.test, counts
    else:  # training-only sources plus sources split three ways: test comes from the latter
        s = split_records(kept["all"], seed=seed, validation_fraction=0.0, test_fraction=tf)
        test, pool = s.test, s.train + kept["train"]
    if not pool:
        raise DataError("no training records left after cleaning")
    train, validation = carve_validation(pool, seed=seed, validation_fraction=vf)
    return train, validation, test, counts


def _drop_long(splits: tuple[list[Record], ...], tokenizer: Any, limit: int) -> tuple[tuple, dict]:
    from lorasum.data.lengths import drop_long_records

    out, counts = [], {}
    for split, recs in zip(("train", "validation", "test"), splits):
        kept, counts[split] = drop_long_records(recs, tokenizer, limit)
        out.append(kept)
    return tuple(out), {"policy": "drop", "max_length": limit, "splits": counts}


def _removed(stats: dict, cleaning: dict, long_counts: dict | None) -> dict[str, int]:
    """Every record left out, by cause: while reading, while cleaning, and for length."""
    removed = {k: stats[k] for k in _REMOVAL_KEYS if stats.get(k)}
    removed |= {k: cleaning[k] for k in ("empty_after_cleaning", "exact_duplicates", "normalized_duplicates")}
    if long_counts is not None:
        removed["too_long"] = sum(c["too_long"] for c in long_counts["splits"].values())
    return removed


def load_domain_spec(
    name: str,
    spec: DomainSpec,
    root: str | os.PathLike | None,
    *,
    split_seed: int = 0,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.1,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    skip_bad_rows: bool = False,
    long_rows: str = "truncate",
    tokenizer: Any = None,
    max_length: int | None = None,
) -> DomainData:
    """Load, clean, deduplicate, split and subsample one domain defined by ``spec``.

    Steps: read every source (:func:`~lorasum.data.formats.read_source`);
    :func:`~lorasum.data.clean.clean_records` (NFC, whitespace, duplicates; test-role records
    first, so duplicates are dropped from the training side); split by role: with a ``test``
    source, its records are the test split and validation is carved from the rest with
    ``validation_fraction``; otherwise group-aware :func:`~lorasum.data.split.split_records`
    with both fractions (``all`` sources only; ``train`` sources join train / validation);
    :func:`~lorasum.data.split.check_leakage`; with ``long_rows="drop"``,
    :func:`~lorasum.data.lengths.drop_long_records` on each split (needs ``tokenizer``; the limit is
    the spec's ``max_length``, else ``max_length``); seeded :func:`~lorasum.data.split.subsample`
    of each split to its size (``None``: all). The spec's own fractions override the arguments.
    Every record left out is counted in ``report["removed"]`` by cause.

    Raises:
        ConfigError: bad fractions / sizes, an unknown ``long_rows``, or ``"drop"`` without a
            tokenizer or max length.
        DataError: the data root or a file is missing (says to set LORASUM_DATA_ROOT), a file
            is malformed (unless ``skip_bad_rows`` skips and counts the bad rows), two records
            share an id, or the splits leak into each other.
    """
    if long_rows not in ("truncate", "drop"):
        raise ConfigError(f"long_rows must be 'truncate' or 'drop', got {long_rows!r}")
    limit = spec.max_length or max_length
    if long_rows == "drop" and (tokenizer is None or limit is None):
        raise ConfigError(f"domain {name}: long_rows: drop needs a tokenizer and a max_length (data.max_length)")
    root = Path(root).expanduser() if root is not None else None
    vf = spec.validation_fraction if spec.validation_fraction is not None else validation_fraction
    tf = spec.test_fraction if spec.test_fraction is not None else test_fraction
    parts, sources, stats = [], [], {}
    for source in spec.sources:
        loaded = read_source(source, root, name, skip_bad_rows=skip_bad_rows)
        parts += loaded.parts
        sources += loaded.provenance
        merge_stats(stats, loaded.stats)
    stats.pop("records", None)
    stats["loaded"] = sum(len(recs) for _, recs in parts)
    if spec.prompt_template is not None:  # the records carry their domain's layout into tokenisation
        parts = [(role, [replace(r, prompt_template=spec.prompt_template) for r in recs]) for role, recs in parts]
    _check_unique_ids(name, [r for _, recs in parts for r in recs])
    try:
        train, validation, test, counts = _split(parts, split_seed, vf, tf)
    except DataError as e:
        raise DataError(f"domain {name}: {e}") from None
    check_leakage({"train": train, "validation": validation, "test": test})
    long_counts = None
    if long_rows == "drop":
        (train, validation, test), long_counts = _drop_long((train, validation, test), tokenizer, limit)
    available = {"train": len(train), "validation": len(validation), "test": len(test)}
    train = subsample(train, train_size, seed=split_seed, purpose="train")
    validation = subsample(validation, validation_size, seed=split_seed, purpose="validation")
    test = subsample(test, test_size, seed=split_seed, purpose="test")
    official = any(role == "test" for role, _ in parts)
    report = {
        **stats,
        "cleaning": counts,
        "removed": _removed(stats, counts, long_counts),
        "official_test": official,
        "split_seed": split_seed,
        "validation_fraction": vf,
        "test_fraction": None if official else tf,
        "available": available,
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
        "groups": {k: len({r.split_key for r in v}) for k, v in
                   (("train", train), ("validation", validation), ("test", test))},
        "long_rows": long_counts or {"policy": long_rows},
    }
    return DomainData(name=name, train=train, validation=validation, test=test, sources=sources,
                      content_hash=content_hash(train, validation, test), report=report,
                      prompt_template=spec.prompt_template, max_length=spec.max_length)


def load_domain(
    name: str,
    root: str | os.PathLike | None,
    *,
    split_seed: int = 0,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.1,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    custom_domains: Mapping[str, DomainSpec] | None = None,
    skip_bad_rows: bool = False,
    long_rows: str = "truncate",
    tokenizer: Any = None,
    max_length: int | None = None,
) -> DomainData:
    """Load one domain by name: a preset (:data:`PRESETS`) or one of ``custom_domains``
    (``ExperimentConfig.custom_domains``). See :func:`load_domain_spec` for the steps.

    Raises:
        ConfigError: unknown domain (the message lists the known ones), a custom domain named
            like a preset, or bad fractions / sizes.
        DataError: as :func:`load_domain_spec`.
    """
    spec = domain_spec(name, custom_domains)
    return load_domain_spec(
        name, spec, root, split_seed=split_seed, validation_fraction=validation_fraction,
        test_fraction=test_fraction, train_size=train_size, validation_size=validation_size,
        test_size=test_size, skip_bad_rows=skip_bad_rows, long_rows=long_rows, tokenizer=tokenizer,
        max_length=max_length,
    )


def load_domains(cfg: ExperimentConfig, names: Sequence[str] | None = None, *, tokenizer: Any = None
                 ) -> dict[str, DomainData]:
    """Load the domains of an experiment config with all its data settings (what the runner
    and the CLI need): ``{name: load_domain(name, data_root(cfg.data), ..., custom_domains=
    cfg.custom_domains)}`` for ``names`` (default ``cfg.domains``). ``tokenizer`` is needed only
    for ``data.long_rows: drop``.

    Raises:
        ConfigError, DataError: as :func:`~lorasum.config.data_root` and :func:`load_domain`.
    """
    d = cfg.data
    root = data_root(d)
    return {
        name: load_domain(
            name, root, split_seed=d.split_seed, validation_fraction=d.validation_fraction,
            test_fraction=d.test_fraction, train_size=d.train_size, validation_size=d.validation_size,
            test_size=d.test_size, custom_domains=cfg.custom_domains, skip_bad_rows=d.skip_bad_rows,
            long_rows=d.long_rows, tokenizer=tokenizer, max_length=d.max_length,
        )
        for name in (cfg.domains if names is None else names)
    }

