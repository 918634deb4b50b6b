"""Source `finepdfs` through the workflow: the dataset read from a local copy in the
HuggingFaceFW/finepdfs layout and column names, every PDF fetched over HTTP from a local server
(real PDFs), one dead URL rescued from its Common Crawl WARC record, and one dead URL without a
record kept as a failure row."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers.fetch_server import Server, warc_record
from helpers.workflow import run_snakemake

pytestmark = pytest.mark.workflow

WARC_PATH = "crawl-data/CC-MAIN-2024-10/segments/1/warc/part-00007.warc.gz"


@pytest.fixture()
def http_server():
    server = Server()
    yield server
    server.close()


def finepdfs_row(index: int, url: str, file_path: str = WARC_PATH, offset: int = 0) -> dict:
    return {
        "text": "extracted text of the document",
        "id": f"<urn:uuid:0000-{index}>",
        "dump": "CC-MAIN-2024-10",
        "url": url,
        "date": "2024-02-21T10:00:00Z",
        "file_path": file_path,
        "offset": offset,
        "language": "eng_Latn",
        "language_score": 0.98,
        "token_count": 1234,
        "is_truncated": False,
    }


def test_finepdfs_local_copy_fetched_over_http_with_warc_fallback(tmp_path, real_pdfs, http_server):
    pdfs = [p.read_bytes() for p in real_pdfs[:3]]
    for index, data in enumerate(pdfs[:2]):
        http_server.files[f"/docs/{index}.pdf"] = data
    # The third PDF's URL is dead, but its Common Crawl record holds it (middle gzip member).
    before = gzip.compress(warc_record(b"%PDF-1.4 another capture"))
    http_server.files["/" + WARC_PATH] = before + gzip.compress(warc_record(pdfs[2]))
    rows = [
        finepdfs_row(0, http_server.url("/docs/0.pdf")),
        finepdfs_row(1, http_server.url("/docs/1.pdf")),
        finepdfs_row(2, http_server.url("/dead/2.pdf"), offset=len(before)),
        finepdfs_row(3, http_server.url("/dead/3.pdf"), file_path="crawl-data/missing.warc.gz"),
        finepdfs_row(4, http_server.url("/docs/never-taken.pdf")),
    ]
    data_dir = tmp_path / "finepdfs" / "data" / "eng_Latn" / "train"
    data_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), data_dir / "000_00000.parquet")

    config = {
        "results_dir": "results",
        "source": {
            "settings": {
                "kind": "finepdfs",
                "finepdfs": {"dataset": str(tmp_path / "finepdfs"), "num_documents": 4},
            }
        },
        "sharding": {"settings": {"documents_per_shard": 10}},
        "seed": {
            "settings": {"dpi": 36, "warc": {"enabled": True, "base_url": http_server.url("/")}},
            "run": {
                "download": {
                    "backoff_s": 0.01,
                    "backoff_max_s": 0.05,
                    "timeout_s": 5,
                    "allowed_networks": ["127.0.0.1/32"],
                }
            },
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path, "results/seed/00000/pages.parquet")

    seed = tmp_path / "results" / "seed" / "00000"
    documents = pq.read_table(seed / "documents.parquet").to_pylist()
    failures = pq.read_table(seed / "failures.parquet").to_pylist()
    assert sorted(d["url"].rsplit("/", 1)[1] for d in documents) == ["0.pdf", "1.pdf", "2.pdf"]
    assert [(f["source"].rsplit("/", 1)[1], f["reason"]) for f in failures] == [("3.pdf", "http_error")]
    assert http_server.hits.get("/docs/never-taken.pdf") is None  # num_documents respected
    assert http_server.ranges and http_server.ranges[0].startswith(f"bytes={len(before)}-")
    rescued = next(d for d in documents if d["url"].endswith("/2.pdf"))
    import pymupdf

    with pymupdf.open(stream=pdfs[2], filetype="pdf") as pdf:
        assert rescued["total_pages"] == pdf.page_count
    assert '"dump": "CC-MAIN-2024-10"' in rescued["extra"]
