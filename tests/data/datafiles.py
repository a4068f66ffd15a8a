"""Writers of tiny data files in each published format, shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path

MEDQUAD_DOC = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="{doc}" source="TEST" url="http://example.org/{doc}">
<Focus>{focus}</Focus>
<QAPairs>
{pairs}
</QAPairs>
</Document>
"""
MEDQUAD_PAIR = """  <QAPair pid="{pid}">
    <Question qid="{doc}-{pid}" qtype="information">{q}</Question>
    <Answer>{a}</Answer>
  </QAPair>"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def medquad_xml(doc: str, focus: str, pairs: list[tuple[str, str]]) -> str:
    body = "\n".join(MEDQUAD_PAIR.format(pid=i + 1, doc=doc, q=q, a=a) for i, (q, a) in enumerate(pairs))
    return MEDQUAD_DOC.format(doc=doc, focus=focus, pairs=body)


def tatqa_context(uid: str, n_questions: int, *, tag: str) -> dict:
    return {
        "table": {"uid": uid, "table": [["", "2019", "2018"], ["Revenue", "$ 1,200.5", "1,100"], ["", "", ""]]},
        "paragraphs": [{"uid": f"{uid}-p2", "order": 2, "text": f"Second paragraph {tag}."},
                       {"uid": f"{uid}-p1", "order": 1, "text": f"First paragraph {tag}."}],
        "questions": [
            {"uid": f"{uid}-q{j}", "order": j, "question": f"What is item {j} of {tag}?",
             "answer": [f"{j},000"], "answer_type": "span", "scale": "thousand", "derivation": ""}
            for j in range(n_questions)
        ],
    }


def build_fake_root(root: Path) -> Path:
    """A data root holding every preset's files, tiny: GSM8K 40/10, MedQuAD 2 subsets x 4 documents,
    TAT-QA 8 dev contexts x 3 questions / 3 test contexts x 2, PubMedQA 40 records of which 20 are test."""
    g = root / "gsm8k/grade_school_math/data"
    for split, n in (("train", 40), ("test", 10)):
        write_jsonl(g / f"{split}.jsonl", [
            {"question": f"{split} problem {i}: what is {i} + {i}?",
             "answer": f"Add them: {i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}.\n#### {2 * i}"} for i in range(n)])
    for s, sub in enumerate(("1_Alpha_QA", "2_Beta_QA")):
        for d in range(4):
            doc = f"000000{d}"
            pairs = [(f"What is disease {s}-{d}-{k} ?", f"Disease {s}-{d}-{k}   is\n   a condition.") for k in range(3)]
            pairs.append((f"What causes disease {s}-{d} ?", "   "))  # empty answer: dropped and counted
            (root / "medquad" / sub).mkdir(parents=True, exist_ok=True)
            (root / "medquad" / sub / f"{doc}.xml").write_text(medquad_xml(doc, f"Disease {s}-{d}", pairs), encoding="utf-8")
    t = root / "tatqa/dataset_raw"
    write_json(t / "tatqa_dataset_dev.json", [tatqa_context(f"dev{i}", 3, tag=f"dev {i}") for i in range(8)])
    write_json(t / "tatqa_dataset_test_gold.json", [tatqa_context(f"test{i}", 2, tag=f"test {i}") for i in range(3)])
    p = root / "pubmedqa/data"
    recs = {str(1000 + i): {"QUESTION": f"Does treatment {i} work?", "CONTEXTS": [f"Background {i}.", f"Methods {i}."],
                            "LONG_ANSWER": f"Treatment {i} was studied.", "final_decision": ("yes", "no", "maybe")[i % 3]}
            for i in range(40)}
    write_json(p / "ori_pqal.json", recs)
    write_json(p / "test_ground_truth.json", {str(1000 + i): recs[str(1000 + i)]["final_decision"] for i in range(0, 40, 2)})
    return root
