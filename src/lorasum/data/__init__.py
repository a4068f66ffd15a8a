"""Data: readers for the published QA formats, cleaning, splits and domain presets.

``load_domain("math", root)`` returns a :class:`DomainData` with train / validation /
test records, the source files' sha256 and a report of every count. Users' own domains are
:class:`~lorasum.config.DomainSpec` objects (``custom_domains`` in the config):
``load_domain("legal", root, custom_domains=cfg.custom_domains)`` or ``load_domains(cfg)``.
"""

from lorasum.data.clean import clean_records, dedup_key, deduplicate, normalize_text
from lorasum.data.formats import read_source
from lorasum.data.presets import (
    DOMAINS,
    PRESETS,
    DomainData,
    content_hash,
    domain_spec,
    load_domain,
    load_domain_spec,
    load_domains,
)
from lorasum.data.records import Record
from lorasum.data.sources import (
    format_tatqa_answer,
    load_financial_qa_10k,
    load_gsm8k,
    load_hf_dataset,
    load_mathqa,
    load_medquad,
    load_medquad_flat,
    load_medquad_xml,
    load_pubmedqa,
    load_pubmedqa_test_ids,
    load_tabular,
    load_tatqa,
    strip_calculator_annotations,
)
from lorasum.data.split import (
    Splits,
    carve_validation,
    check_cross_domain,
    check_leakage,
    find_cross_domain_overlap,
    split_records,
    subsample,
)

__all__ = [
    "Record",
    "DomainData",
    "DOMAINS",
    "PRESETS",
    "load_domain",
    "load_domain_spec",
    "load_domains",
    "domain_spec",
    "read_source",
    "content_hash",
    "load_gsm8k",
    "strip_calculator_annotations",
    "load_medquad",
    "load_medquad_xml",
    "load_medquad_flat",
    "load_tatqa",
    "format_tatqa_answer",
    "load_pubmedqa",
    "load_pubmedqa_test_ids",
    "load_tabular",
    "load_financial_qa_10k",
    "load_mathqa",
    "load_hf_dataset",
    "normalize_text",
    "dedup_key",
    "deduplicate",
    "clean_records",
    "Splits",
    "split_records",
    "carve_validation",
    "subsample",
    "check_leakage",
    "check_cross_domain",
    "find_cross_domain_overlap",
]

try:  # written by another engineer; the lead wires it up
    from lorasum.data.tokenize import Encoded, collate, encode_record, format_prompt
except ImportError:  # pragma: no cover
    pass
else:
    __all__ += ["format_prompt", "encode_record", "collate", "Encoded"]
    from lorasum.data.lengths import drop_long_records, length_summary, token_lengths

    __all__ += ["token_lengths", "length_summary", "drop_long_records"]
