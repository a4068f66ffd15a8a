"""Question-answer data sets on the Hugging Face hub, read with the optional ``datasets`` package.

``pip install 'lorasum[datasets]'`` installs it. Rows are mapped to records by field name,
exactly as a table file (:func:`~lorasum.data.sources.tabular.rows_to_records`). Loading
needs the hub to be reachable, or the data set in the local cache with
``HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from lorasum.data.records import Record
from lorasum.data.sources.tabular import rows_to_records
from lorasum.errors import DataError

__all__ = ["load_hf_dataset"]


def _load(dataset_id: str, config: str | None, split: str, revision: str | None) -> Any:
    label = f"hf:{dataset_id}"
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{label}: reading Hugging Face hub data sets needs the optional 'datasets' package; "
            f"pip install 'lorasum[datasets]'"
        ) from None
    try:
        return datasets.load_dataset(dataset_id, name=config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - datasets raises many unrelated types (network, file, value)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"{label}: cannot load config {config!r} split {split!r} ({type(e).__name__}: {first}); "
            f"check the id, config and split, and that the hub is reachable "
            f"(or that the data set is cached and HF_DATASETS_OFFLINE=1 is set)"
        ) from None


def load_hf_dataset(
    dataset_id: str,
    *,
    domain: str,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    context_field: str | None = None,
    group_field: str | None = None,
    id_prefix: str | None = None,
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield one :class:`Record` per row of a hub data set's split, e.g.
    ``load_hf_dataset("virattt/financial-qa-10K", domain="finance", context_field="context")``.

    Ids are ``"<id_prefix or dataset id>/<split>/<row index>"``; fields, groups and counts as in
    :func:`~lorasum.data.sources.tabular.rows_to_records`; ``Record.source`` is
    ``"hf:<id>[<split>]: row <i>"``. The data set is downloaded (or read from the cache) when the
    returned iterator is first advanced.

    Raises:
        DataError: ``datasets`` is not installed (says ``pip install 'lorasum[datasets]'``); the
            data set, config or split cannot be loaded (offline, unknown id, ...); a row lacks a
            field or holds a non-string value; no usable row.
    """
    label = f"hf:{dataset_id}[{split}]"

    def rows() -> Iterator[tuple[str, dict]]:
        data = _load(dataset_id, config, split, revision)
        for i, row in enumerate(data):
            yield f"{label}: row {i}", dict(row)

    return rows_to_records(
        rows(), domain=domain, prefix=f"{id_prefix or dataset_id}/{split}", label=label,
        question_field=question_field, answer_field=answer_field, context_field=context_field,
        group_field=group_field, skip_bad_rows=skip_bad_rows, stats=stats,
    )
