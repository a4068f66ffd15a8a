"""One reader per published data format; each yields :class:`~lorasum.data.records.Record` objects."""

from lorasum.data.sources.gsm8k import load_gsm8k, strip_calculator_annotations
from lorasum.data.sources.hf import load_hf_dataset
from lorasum.data.sources.mathqa import load_mathqa
from lorasum.data.sources.medquad import load_medquad, load_medquad_flat, load_medquad_xml
from lorasum.data.sources.pubmedqa import load_pubmedqa, load_pubmedqa_test_ids
from lorasum.data.sources.tabular import load_financial_qa_10k, load_tabular, rows_to_records
from lorasum.data.sources.tatqa import format_answer as format_tatqa_answer
from lorasum.data.sources.tatqa import load_tatqa, render_context

__all__ = [
    "load_gsm8k",
    "strip_calculator_annotations",
    "load_mathqa",
    "load_medquad",
    "load_medquad_xml",
    "load_medquad_flat",
    "load_tatqa",
    "format_tatqa_answer",
    "render_context",
    "load_pubmedqa",
    "load_pubmedqa_test_ids",
    "load_tabular",
    "load_financial_qa_10k",
    "rows_to_records",
    "load_hf_dataset",
]
