"""Stage 07's windows (sizes, page coverage, its settings, its plan over the documents table),
stage 08's page limit, and the seed parameter model."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from longdoc_sdg.seed import SeedParams
from longdoc_sdg.stages import get_stage, stage_config
from longdoc_sdg.stages.windows import make_windows, window_size_for

# (pages, size): the reference's rule with its fall-through at exact multiples of ten fixed.
RULE = [
    (1, 1),
    (2, 2),
    (9, 2),
    (10, 2),
    (11, 3),
    (19, 3),
    (20, 3),
    (21, 4),
    (30, 4),
    (31, 5),
    (40, 5),
    (41, 6),
    (50, 6),
    (51, 7),
    (60, 7),
    (61, 8),
    (100, 8),
    (2000, 8),
]


@pytest.mark.parametrize("pages,size", RULE)
def test_window_size_rule(pages, size):
    assert window_size_for(pages) == size


@pytest.mark.parametrize("pages", [10, 20, 30, 40, 50, 60])
def test_exact_multiples_of_ten_do_not_fall_through_to_two(pages):
    assert window_size_for(pages) == (pages // 10) + 1


def _covered(windows):
    return {p for w in windows for p in range(w.start_page, w.end_page + 1)}


@pytest.mark.parametrize("pages", list(range(1, 130)))
def test_every_page_is_in_a_window_and_windows_are_full(pages):
    windows = make_windows(pages)
    size = window_size_for(pages)
    assert _covered(windows) == set(range(1, pages + 1))
    for w in windows:
        assert w.end_page - w.start_page + 1 == w.window_size == size
        assert 1 <= w.start_page <= w.end_page <= pages
    # No duplicate windows, starts strictly increasing.
    starts = [w.start_page for w in windows]
    assert starts == sorted(set(starts))


def test_tail_window_is_shifted_back_not_dropped():
    # 23 pages, size 4: 1-4 ... 17-20, then 20-23 (the reference dropped 21-23).
    windows = make_windows(23)
    assert [(w.start_page, w.end_page) for w in windows][-2:] == [(17, 20), (20, 23)]


def test_no_overlap_when_pages_divide_evenly():
    assert [(w.start_page, w.end_page) for w in make_windows(8)] == [(1, 2), (3, 4), (5, 6), (7, 8)]
    # 20 pages, size 3: 1-3 ... 16-18, then the tail window shifted back to 18-20.
    assert [(w.start_page, w.end_page) for w in make_windows(20)][-2:] == [(16, 18), (18, 20)]


def test_size_override_and_stride_overlap():
    windows = make_windows(10, size=4, stride=2)
    assert [(w.start_page, w.end_page) for w in windows] == [(1, 4), (3, 6), (5, 8), (7, 10)]
    windows = make_windows(11, size=4, stride=3)
    assert [(w.start_page, w.end_page) for w in windows] == [(1, 4), (4, 7), (7, 10), (8, 11)]


def test_stride_larger_than_size_is_clamped_so_no_page_is_skipped():
    windows = make_windows(20, size=3, stride=5)
    assert _covered(windows) == set(range(1, 21))


def test_override_larger_than_document_is_the_whole_document():
    assert [(w.start_page, w.end_page, w.window_size) for w in make_windows(3, size=8)] == [(1, 3, 3)]


def documents_table(path, pages_by_doc: dict[str, int]) -> str:
    rows = [{"doc_id": d, "total_pages": n} for d, n in pages_by_doc.items()]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pa.schema([("doc_id", pa.string()), ("total_pages", pa.int32())])), path
    )
    return str(path)


def planned(stage: str, params: dict, documents: str) -> list:
    return list(get_stage(stage).plan(stage_config(stage, params), {"documents": documents, "pages": ""}).tasks())


def test_windowed_qa_builds_its_windows_from_the_documents(tmp_path):
    documents = documents_table(tmp_path / "documents.parquet", {"a": 11, "b": 1, "c": 3})
    tasks = planned("windowed_qa", {"window_size": 4, "window_stride": 3}, documents)
    assert [(t.doc_id, t.pages[0], t.pages[-1]) for t in tasks] == [
        ("a", 1, 4),
        ("a", 4, 7),
        ("a", 7, 10),
        ("a", 8, 11),
        ("c", 1, 3),  # b: one page, no cross-page window
    ]
    assert tasks[0].row_id == "windowed_qa:a:1-4:q0" and tasks[0].data["total_pages"] == 11
    default = planned("windowed_qa", {}, documents)
    assert [(t.pages[0], t.pages[-1]) for t in default if t.doc_id == "a"] == [
        (w.start_page, w.end_page) for w in make_windows(11)
    ]
    with pytest.raises(ValidationError, match="window_stride"):
        stage_config("windowed_qa", {"window_size": 3, "window_stride": 4})


def test_whole_document_qa_has_the_one_page_limit(tmp_path):
    documents = documents_table(tmp_path / "documents.parquet", {"a": 50, "b": 51, "c": 1, "d": 12})
    assert [t.doc_id for t in planned("whole_document_qa", {}, documents)] == ["a", "d"]
    assert [t.doc_id for t in planned("whole_document_qa", {"max_pages": 12}, documents)] == ["d"]
    assert [t.doc_id for t in planned("whole_document_qa", {"max_pages": None}, documents)] == ["a", "b", "d"]


def test_params_defaults_and_validation():
    params = SeedParams()
    assert params.dpi == 144
    assert params.max_pixels_per_page <= 40_000_000
    assert params.download.timeout_s == 20 and params.download.retries == 3
    assert params.warc.enabled is False and params.warc.base_url.startswith("https://")
    for name, field in SeedParams.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        SeedParams.model_validate({"dpii": 100})  # typo must not pass silently
    with pytest.raises(ValidationError):
        SeedParams.model_validate({"window_size": 3})  # windows are stage 07's settings
    with pytest.raises(ValidationError):
        SeedParams.model_validate({"download": {"timeout": 3}})
    nested = SeedParams.model_validate({"worker": {"chunk_pages": 4}, "warc": {"enabled": True}})
    assert nested.worker.chunk_pages == 4 and nested.warc.enabled
