"""The one record type every data source returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Record"]


@dataclass(frozen=True, slots=True)
class Record:
    """One question-answer pair.

    Attributes:
        id: stable unique id within its domain, e.g. ``"gsm8k/train/17"``.
        domain: domain name, e.g. ``"math"``.
        question: the question text.
        answer: the reference answer text (the loss and perplexity are computed on it).
        context: text placed before the question in the prompt ("" if none), e.g. a
            TAT-QA table rendered as text plus its paragraphs.
        group: split key; records sharing a group always land in the same split
            (a MedQuAD document, a TAT-QA context). Defaults to the id.
        source: where the record came from, ``"<file>:<line or key>"``.
        prompt_template: the prompt layout of the record's domain (``{context}`` optional, then
            ``{question}``; see :class:`lorasum.config.DomainSpec`); None: the built-in
            ``"{context}\\n\\nQuestion: {question}\\nAnswer:"``.
    """

    id: str
    domain: str
    question: str
    answer: str
    context: str = ""
    group: str = ""
    source: str = ""
    prompt_template: str | None = None

    @property
    def split_key(self) -> str:
        """The group used for splitting (``group`` or, if empty, ``id``)."""
        return self.group or self.id
