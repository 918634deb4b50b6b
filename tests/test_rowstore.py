"""ShardWriter: journal resume, stale journals, accounting, atomic final parquet."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longdoc_sdg.rowstore import BASE_COLUMNS, AccountingError, ShardWriter

STAGE = pa.schema([("answer", pa.string()), ("score", pa.int32()), ("tags", pa.list_(pa.string()))])


def row(i: int, status: str = "ok", **extra) -> dict:
    base = {
        "row_id": f"r{i:03d}",
        "doc_id": f"d{i % 3}",
        "pages": [i % 5 + 1],
        "status": status,
        "model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "reasoning_tokens": 0,
    }
    if status == "ok":
        base.update(answer=f"a{i}", score=i % 3, tags=["x"])
    else:
        base.update(failure_reason=extra.pop("reason", "length"), failure_message="cut")
    base.update(extra)
    return base


def paths(tmp_path):
    return tmp_path / "out" / "00000.parquet", tmp_path / ".journal" / "text_qa" / "00000.jsonl"


def test_write_finalize_in_input_order(tmp_path):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "h1", STAGE)
    ids = [f"r{i:03d}" for i in range(10)]
    for i in reversed(range(10)):  # completion order differs from input order
        writer.write(row(i, "failed" if i == 4 else "ok"))
    summary = writer.finalize(ids)
    table = pq.read_table(out)
    assert table.column_names[: len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    assert table.column_names[len(BASE_COLUMNS) :] == ["answer", "score", "tags"]
    assert table.column("row_id").to_pylist() == ids
    assert table.schema.field("pages").type == pa.list_(pa.int32())
    assert summary["ok"] == 9 and summary["failed"] == 1 and summary["reasons"] == {"length": 1}
    assert summary["prompt_tokens"] == 100
    failed = table.filter(pa.compute.equal(table["status"], "failed")).to_pylist()[0]
    assert failed["answer"] is None and failed["failure_reason"] == "length"
    assert not journal.exists()


def test_resume_after_torn_journal(tmp_path):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "h1", STAGE)
    for i in range(5):
        writer.write(row(i))
    writer.close()  # the process "dies" here, in the middle of writing row 5
    with open(journal, "ab") as f:
        f.write(json.dumps(row(5)).encode()[:30])
    resumed = ShardWriter(out, journal, "h1", STAGE)
    assert resumed.done_ids() == {f"r{i:03d}" for i in range(5)}
    assert resumed.resumed == 5
    for i in range(5, 8):
        resumed.write(row(i))
    resumed.finalize([f"r{i:03d}" for i in range(8)])
    assert pq.read_table(out).column("answer").to_pylist() == [f"a{i}" for i in range(8)]


def test_corrupt_middle_line_drops_the_rest(tmp_path):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "h1", STAGE)
    for i in range(3):
        writer.write(row(i))
    writer.close()
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = b"{not json\n"
    journal.write_bytes(b"".join(lines))
    assert ShardWriter(out, journal, "h1", STAGE).done_ids() == {"r000"}


def test_stale_hash_discards_journal(tmp_path):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "old-config", STAGE)
    writer.write(row(0))
    writer.close()
    fresh = ShardWriter(out, journal, "new-config", STAGE)
    assert fresh.done_ids() == set()
    # the same hash with another output schema is stale too
    fresh.write(row(1))
    fresh.close()
    other = ShardWriter(out, journal, "new-config", pa.schema([("answer", pa.string())]))
    assert other.done_ids() == set()


@pytest.mark.parametrize(
    "written, expected, match",
    [
        ([0, 1], ["r000", "r001", "r002"], "1 missing"),
        ([0, 1, 2], ["r000", "r001"], "1 unexpected"),
        ([0], ["r000", "r000"], "repeat"),
    ],
)
def test_accounting_violation_raises(tmp_path, written, expected, match):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "h1", STAGE)
    for i in written:
        writer.write(row(i))
    with pytest.raises(AccountingError, match=match):
        writer.finalize(expected)
    assert not out.exists() and journal.exists()


def test_duplicate_write_and_bad_rows_raise(tmp_path):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "h1", STAGE)
    writer.write(row(0))
    with pytest.raises(AccountingError):
        writer.write(row(0))
    with pytest.raises(ValueError, match="not in the output schema"):
        writer.write(row(1, surprise=1))
    with pytest.raises(ValueError, match="score"):
        writer.write(row(2, score="high"))
    with pytest.raises(ValueError, match="failure_reason"):
        writer.write(row(3, "failed", reason=None))
    with pytest.raises(ValueError, match="pages"):
        writer.write(row(4, pages=["one"]))
    assert writer.done_ids() == {"r000"}


def test_final_file_is_atomic(tmp_path, monkeypatch):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "h1", STAGE, batch_rows=2)
    for i in range(6):
        writer.write(row(i))
    calls = []
    real = pq.ParquetWriter.write_batch

    def failing(self, batch, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, batch, *a, **kw)

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", failing)
    with pytest.raises(OSError):
        writer.finalize([f"r{i:03d}" for i in range(6)])
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == []  # no temporary left behind
    assert journal.exists()  # the work is kept for the rerun
    monkeypatch.setattr(pq.ParquetWriter, "write_batch", real)
    again = ShardWriter(out, journal, "h1", STAGE, batch_rows=2)
    assert len(again.done_ids()) == 6
    again.finalize([f"r{i:03d}" for i in range(6)])
    assert pq.read_table(out).num_rows == 6 and pq.ParquetFile(out).num_row_groups == 3


def test_empty_shard(tmp_path):
    out, journal = paths(tmp_path)
    ShardWriter(out, journal, "h1", STAGE).finalize([])
    table = pq.read_table(out)
    assert table.num_rows == 0 and "answer" in table.column_names


def test_redo_forgets_selected_failures(tmp_path):
    out, journal = paths(tmp_path)
    writer = ShardWriter(out, journal, "h1", STAGE)
    writer.write(row(0))
    writer.write(row(1, "failed", reason="server_error"))
    writer.write(row(2, "failed", reason="length"))
    writer.close()
    again = ShardWriter(out, journal, "h1", STAGE)
    assert again.redo(["server_error", "timeout"]) == 1
    assert again.done_ids() == {"r000", "r002"}
    again.write(row(1))  # the retried row supersedes its failure
    again.close()
    third = ShardWriter(out, journal, "h1", STAGE)
    assert third.redo(["server_error"]) == 0
    third.finalize(["r000", "r001", "r002"])
    assert pq.read_table(out).column("status").to_pylist() == ["ok", "ok", "failed"]


def test_stage_schema_may_restate_base_columns(tmp_path):
    out, journal = paths(tmp_path)
    stage = pa.schema([("row_id", pa.string()), ("answer", pa.string())])
    assert ShardWriter(out, journal, "h", stage).schema.names.count("row_id") == 1
    with pytest.raises(ValueError):
        ShardWriter(out, journal, "h", pa.schema([("pages", pa.string())]))
