"""`num_records` picks a seeded sample spread over the shard: every document, late pages too."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from longdoc_sdg.stages import get_stage, stage_config


def pages_table(path, documents: int, pages: int) -> str:
    rows = [{"doc_id": f"doc{d}", "page_number": p} for d in range(documents) for p in range(1, pages + 1)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def picked(stage: str, path: str, num_records: int, seed: int = 0) -> list[tuple[str, int]]:
    plan = get_stage(stage).plan(stage_config(stage, {"num_records": num_records, "seed": seed}), {"pages": path})
    return [(t.doc_id, t.pages[0]) for t in plan.tasks()]


def test_ten_records_over_three_documents_of_forty_pages(tmp_path):
    path = pages_table(tmp_path / "pages.parquet", 3, 40)
    for stage in ("ocr", "classify"):
        chosen = picked(stage, path, 10)
        assert len(chosen) == 10 == len(set(chosen))
        per_doc = {d: sorted(p for doc, p in chosen if doc == d) for d in ("doc0", "doc1", "doc2")}
        assert sorted(len(v) for v in per_doc.values()) == [3, 3, 4]  # every document, shared out evenly
        # Each document's share comes one from each slice of its pages: the last slice is late.
        assert all(pages[-1] > 26 for pages in per_doc.values()), per_doc
        assert max(p for _, p in chosen) > 30 and min(p for _, p in chosen) <= 14
        assert chosen == picked(stage, path, 10)  # deterministic
    assert picked("ocr", path, 10, seed=1) != picked("ocr", path, 10, seed=0)


def test_more_documents_than_records_picks_distinct_documents(tmp_path):
    path = pages_table(tmp_path / "pages.parquet", 12, 5)
    chosen = picked("ocr", path, 4)
    assert len({doc for doc, _ in chosen}) == 4
