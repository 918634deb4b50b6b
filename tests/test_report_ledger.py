"""The serving ledger's arithmetic: GPU time per deployment from teardown's lines, split among
the stages it served by their tokens, per 1,000 accepted rows; and its card section."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longdoc_sdg.report.ledger import build_ledger, card_lines, ledger_figure


def shard(path, statuses, tokens):
    table = pa.table(
        {
            "row_id": [f"r{i}" for i in range(len(statuses))],
            "status": statuses,
            "prompt_tokens": tokens,
            "completion_tokens": [0] * len(tokens),
        }
    )
    pq.write_table(table, path)
    return str(path)


def test_gpu_time_split_by_tokens_and_counted_per_accepted_row(tmp_path):
    ledger_file = tmp_path / "ledger.jsonl"
    lines = [
        {
            "deployment": "vlm",
            "replicas_ready": 2,
            "replica_seconds": 1800.0,
            "gpu_seconds": 7200.0,
            "requests": 90,
            "prompt_tokens": 900,
            "generation_tokens": 100,
        },
        {
            "deployment": "vlm",
            "replicas_ready": 1,
            "replica_seconds": 900.0,
            "gpu_seconds": 3600.0,
            "requests": 10,
            "prompt_tokens": 100,
            "generation_tokens": 0,
        },
    ]
    ledger_file.write_text("\n".join(json.dumps(line) for line in lines) + "\n{cut short")
    a = shard(tmp_path / "a.parquet", ["ok"] * 3 + ["failed"], [100, 100, 100, 0])  # 300 tokens
    b = shard(tmp_path / "b.parquet", ["ok"] * 5, [180] * 5)  # 900 tokens
    ledger = build_ledger(ledger_file, {"classify": [a], "visual_qa": [b]}, {"classify": "vlm", "visual_qa": "vlm"})
    vlm = ledger["deployments"]["vlm"]
    assert vlm["instances"] == 2 and vlm["replicas_ready"] == 3
    assert vlm["gpu_seconds"] == 10800.0 and vlm["requests"] == 100
    classify, visual = ledger["stages"]["classify"], ledger["stages"]["visual_qa"]
    assert classify["accepted_rows"] == 3 and classify["rows"] == 4
    assert classify["gpu_seconds"] == pytest.approx(10800 * 300 / 1200)
    assert visual["gpu_seconds"] == pytest.approx(10800 * 900 / 1200)
    assert visual["gpu_hours_per_1000_accepted"] == pytest.approx(8100 / 3600 / (5 / 1000))
    card = "\n".join(card_lines(ledger))
    assert "GPU-hours per 1,000 accepted rows" in card and "| visual_qa | vlm | 5 |" in card
    ledger_figure(ledger, tmp_path / "ledger.png")
    assert (tmp_path / "ledger.png").stat().st_size > 0


def test_stage_without_accepted_rows_has_no_rate(tmp_path):
    ledger_file = tmp_path / "ledger.jsonl"
    ledger_file.write_text(json.dumps({"deployment": "m", "gpu_seconds": 60.0}) + "\n")
    failed = shard(tmp_path / "f.parquet", ["failed"], [0])
    ledger = build_ledger(ledger_file, {"ocr": [failed]}, {"ocr": "m"})
    assert ledger["stages"]["ocr"]["gpu_seconds"] == 60.0
    assert ledger["stages"]["ocr"]["gpu_hours_per_1000_accepted"] is None
