"""Downloads against a local HTTP server: success, 4xx, retried 5xx, caps, sniffing, timeouts,
redirect schemes, the Common Crawl WARC fallback, and concurrent fetching inside a shard."""

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.export_run import make_row, write_rows
from helpers.fetch_server import PDF, SAMPLE, Server, parse_warc_response, warc_record
from longdoc_sdg.export.dataset import build_dataset
from longdoc_sdg.seed import SeedFailure, fetch_document, run_seed_shard

LOOPBACK = ["127.0.0.1/32"]
FAST = {"download": {"backoff_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5, "allowed_networks": LOOPBACK}}


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.close()


def url_row(url: str, **extra) -> dict:
    return {"doc_id": "d1", "source_kind": "urls", "source": url, "url": url, "date": None, "extra": json.dumps(extra)}


def fetch_fails(row, params) -> SeedFailure:
    with pytest.raises(SeedFailure) as caught:
        fetch_document(row, params)
    return caught.value


def test_download_ok_and_redirect(server):
    assert fetch_document(url_row(server.url("/ok.pdf")), FAST) == PDF
    assert fetch_document(url_row(server.url("/moved.pdf")), FAST) == PDF


def test_client_error_fails_at_once(server):
    failure = fetch_fails(url_row(server.url("/gone.pdf")), FAST)
    assert failure.reason == "http_error" and "404" in failure.message
    assert server.hits["/gone.pdf"] == 1


def test_server_errors_are_retried_with_backoff(server):
    assert fetch_document(url_row(server.url("/flaky.pdf")), FAST) == PDF
    assert server.hits["/flaky.pdf"] == 3
    params = {"download": {**FAST["download"], "retries": 2}}
    failure = fetch_fails(url_row(server.url("/down.pdf")), params)
    assert failure.reason == "http_error" and "503" in failure.message and "after 3 attempts" in failure.message
    assert server.hits["/down.pdf"] == 3


@pytest.mark.parametrize("path", ["/huge-declared.pdf", "/huge-streamed.pdf"])
def test_size_cap(server, path):
    failure = fetch_fails(url_row(server.url(path)), {"download": {**FAST["download"], "max_bytes": 100_000}})
    assert failure.reason == "too_large"


def test_html_named_pdf_is_not_pdf(server):
    assert fetch_fails(url_row(server.url("/page.pdf")), FAST).reason == "not_pdf"


def test_timeout_is_retried_then_reported(server):
    params = {"download": {"timeout_s": 0.3, "retries": 1, "backoff_s": 0.01, "allowed_networks": LOOPBACK}}
    failure = fetch_fails(url_row(server.url("/slow.pdf")), params)
    assert failure.reason == "timeout"
    assert server.hits["/slow.pdf"] == 2


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.pdf", "file:///etc/passwd", "javascript:alert(1)", "", None])
def test_only_http_urls(url):
    row = url_row(url)
    row["source"] = url
    assert fetch_fails(row, FAST).reason == "bad_url"


def test_redirect_to_another_scheme_is_refused(server):
    assert fetch_fails(url_row(server.url("/to-ftp.pdf")), FAST).reason == "bad_url"


def test_local_files(tmp_path):
    local = {"doc_id": "l", "source_kind": "local", "source": str(SAMPLE), "url": None}
    assert fetch_document(local) == PDF
    assert fetch_fails({**local, "source": str(tmp_path / "nope.pdf")}, FAST).reason == "missing"
    (tmp_path / "empty.pdf").write_bytes(b"")
    assert fetch_fails({**local, "source": str(tmp_path / "empty.pdf")}, FAST).reason == "empty"


@pytest.fixture(scope="module")
def warc(server):
    """A WARC file of three gzip members; ours is the middle one, like a Common Crawl file."""
    before = gzip.compress(warc_record(b"%PDF-1.4 some other document"))
    good = gzip.compress(warc_record(PDF))
    truncated = gzip.compress(warc_record(PDF[:5000], extra_warc_headers=b"WARC-Truncated: length\r\n"))
    after = gzip.compress(warc_record(b"%PDF-1.4 yet another"))
    server.files["/crawl-data/CC-MAIN-2024-10/segments/1/warc/part-00001.warc.gz"] = before + good + truncated + after
    return {
        "file_path": "crawl-data/CC-MAIN-2024-10/segments/1/warc/part-00001.warc.gz",
        "good_offset": len(before),
        "truncated_offset": len(before) + len(good),
    }


def warc_params(server, enabled=True):
    return {**FAST, "warc": {"enabled": enabled, "base_url": server.url("/")}}


def test_warc_fallback_fetches_the_record_when_the_url_is_dead(server, warc):
    row = url_row(server.url("/gone.pdf"), file_path=warc["file_path"], offset=warc["good_offset"])
    row["source_kind"] = "finepdfs"
    server.ranges.clear()
    assert fetch_document(row, warc_params(server)) == PDF
    assert len(server.ranges) == 1 and server.ranges[0].startswith(f"bytes={warc['good_offset']}-")


def test_warc_fallback_off_keeps_the_url_failure(server, warc):
    row = url_row(server.url("/gone.pdf"), file_path=warc["file_path"], offset=warc["good_offset"])
    assert fetch_fails(row, warc_params(server, enabled=False)).reason == "http_error"


def test_truncated_warc_record_is_refused(server, warc):
    row = url_row(server.url("/gone.pdf"), file_path=warc["file_path"], offset=warc["truncated_offset"])
    failure = fetch_fails(row, warc_params(server))
    assert failure.reason == "http_error"  # the URL's reason; the message tells both stories
    assert "404" in failure.message and "truncated" in failure.message


def test_warc_path_must_stay_on_the_configured_host(server):
    for bad in ("http://evil.invalid/x.warc.gz", "//evil.invalid/x", "../../etc/passwd"):
        row = url_row(server.url("/gone.pdf"), file_path=bad, offset=0)
        failure = fetch_fails(row, warc_params(server))
        assert "suspicious" in failure.message


def test_parse_warc_handles_raw_chunked_and_gzip_payloads():
    body = b"%PDF-1.5 chunked body"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    record = warc_record(chunked, http_headers=b"Transfer-Encoding: chunked\r\n")
    assert parse_warc_response(record) == body
    zipped = gzip.compress(body)
    assert parse_warc_response(warc_record(zipped, http_headers=b"Content-Encoding: gzip\r\n")) == body
    with pytest.raises(SeedFailure):
        parse_warc_response(b"WARC/1.0\r\nWARC-Type: request\r\nContent-Length: 0\r\n\r\n")


def test_shard_downloads_concurrently_and_records_failures(server, warc, tmp_path):
    rows = [
        {
            "doc_id": f"u{i}",
            "source_kind": "urls",
            "source": server.url(f"/delay/{i}.pdf"),
            "url": server.url(f"/delay/{i}.pdf"),
            "date": None,
            "extra": "{}",
        }
        for i in range(6)
    ]
    rows.append(
        {
            "doc_id": "dead",
            "source_kind": "urls",
            "source": server.url("/gone.pdf"),
            "url": server.url("/gone.pdf"),
            "date": None,
            "extra": "{}",
        }
    )
    finepdfs_extra = json.dumps({"id": "<urn:uuid:x>", "file_path": warc["file_path"], "offset": warc["good_offset"]})
    rows.append(
        {
            "doc_id": "from-warc",
            "source_kind": "finepdfs",
            "source": server.url("/gone.pdf"),
            "url": server.url("/gone.pdf"),
            "date": "2024-02-01",
            "extra": finepdfs_extra,
        }
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    outputs = {name: str(tmp_path / "out" / f"{name}.parquet") for name in ("pages", "documents", "failures")}
    server.max_active = 0
    params = {**warc_params(server), "dpi": 36}
    run_seed_shard(str(tmp_path / "m.parquet"), outputs, params, threads=1)
    documents = {d["doc_id"]: d for d in pq.read_table(outputs["documents"]).to_pylist()}
    failures = pq.read_table(outputs["failures"]).to_pylist()
    assert set(documents) == {f"u{i}" for i in range(6)} | {"from-warc"}
    assert documents["from-warc"]["extra"] == finepdfs_extra
    assert [(f["doc_id"], f["reason"]) for f in failures] == [("dead", "http_error")]
    assert server.max_active >= 3  # downloads overlapped rather than running one by one
    assert not list((tmp_path / "out").glob(".seed-work-*"))  # downloaded temporaries removed


def test_one_pdf_under_two_urls_in_two_shards_is_exported_once(server, tmp_path):
    # A shard's seed drops a copy as it arrives; across shards it cannot compare downloads without
    # downloading each twice, so every seeded document records its sha256 and the export drops
    # the later copy (all its rows) before the split.
    shards = {"00000": {"first": "/ok.pdf"}, "00001": {"again": "/second.pdf", "other": "/delay/7.pdf"}}
    documents, qa = [], []
    for shard, docs in shards.items():
        manifest = tmp_path / "manifest" / f"{shard}.parquet"
        manifest.parent.mkdir(exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist(
                [{**url_row(server.url(path)), "doc_id": doc_id, "extra": "{}"} for doc_id, path in docs.items()]
            ),
            manifest,
        )
        outputs = {
            name: str(tmp_path / "seed" / shard / f"{name}.parquet") for name in ("pages", "documents", "failures")
        }
        run_seed_shard(str(manifest), outputs, {**FAST, "dpi": 36}, threads=1)
        documents.append(outputs["documents"])
        qa.append(str(tmp_path / "single_page_qa" / f"{shard}.parquet"))
        write_rows(
            Path(qa[-1]),
            "single_page_qa",
            [
                make_row(
                    "single_page_qa",
                    f"single_page_qa:{d}:p0001:q0",
                    d,
                    [1],
                    question=f"Q about {d}?",
                    evidence_pages="[1]",
                )
                for d in docs
            ],
        )
    seeded = {d["doc_id"]: d for path in documents for d in pq.read_table(path).to_pylist()}
    assert set(seeded) == {"first", "again", "other"}  # neither shard alone holds a copy
    assert seeded["first"]["sha256"] == seeded["again"]["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert seeded["other"]["sha256"] != seeded["first"]["sha256"]

    loose = {"require_format_ok": False, "min_quality_score": None, "require_evidence_ok": False}
    summary = build_dataset(
        "single_page_qa",
        {"qa": qa, "documents": documents},
        str(tmp_path / "export" / "single_page_qa.parquet"),
        str(tmp_path / "export" / "single_page_qa.summary.json"),
        {"filters": loose, "split": {"validation_fraction": 0}},
    )
    exported = pq.read_table(tmp_path / "export" / "single_page_qa.parquet").to_pylist()
    assert sorted(r["doc_id"] for r in exported) == ["first", "other"]
    assert summary["dropped"]["duplicate_document"] == 1 and summary["rows"] == 3
    assert summary["duplicate_documents"] == [
        {"doc_id": "again", "same_bytes_as": "first", "sha256": seeded["first"]["sha256"]}
    ]
