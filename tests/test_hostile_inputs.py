"""Hostile inputs, unit level: SSRF through URLs and redirects, servers that drip bytes or cut
bodies short, and compression bombs. All traffic stays on loopback; addresses elsewhere are
refused before any connection, which the tests check by watching every socket connect."""

import gzip
import json
import socket
import sys
import time
import zlib
from pathlib import Path

import pytest

import pdf_factory
from helpers.fetch_server import PDF, SAMPLE, parse_warc_response
from helpers.fetch_server import Server as FetchServer
from helpers.memory import run_measured, seed_job_memory_limit_mb
from longdoc_sdg.seed import SeedFailure, fetch_document

ONLY_SERVER = ["127.0.0.1/32"]


def params(**download) -> dict:
    base = {"backoff_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 5, "retries": 0, "allowed_networks": ONLY_SERVER}
    return {"download": {**base, **download}}


class Server(FetchServer):
    """The download tests' server on 127.0.0.1, plus `routes`: a path -> a function of the handler."""

    def __init__(self):
        self.routes = {}
        super().__init__()
        self.port = self.httpd.server_address[1]

    def route(self, handler):
        scripted = self.routes.get(handler.path)
        scripted(handler) if scripted else super().route(handler)


send = Server.send


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.close()


def row(url: str, **extra) -> dict:
    return {"doc_id": "d", "source_kind": "urls", "source": url, "url": url, "date": None, "extra": json.dumps(extra)}


def failure_of(document_row, settings) -> SeedFailure:
    with pytest.raises(SeedFailure) as caught:
        fetch_document(document_row, settings)
    return caught.value


# --- Address policy -----------------------------------------------------------------------


@pytest.fixture
def victims():
    """Listeners on loopback that no fetch may reach: 127.0.0.1 (other port) and 127.0.0.2."""
    sockets = []
    for host in ("127.0.0.1", "127.0.0.2"):
        listener = socket.socket()
        listener.bind((host, 0))
        listener.listen(8)
        listener.setblocking(False)
        sockets.append(listener)
    yield {s.getsockname()[0]: s for s in sockets}
    for listener in sockets:
        listener.close()


def connections(listener) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture
def connect_log(monkeypatch):
    """Every address a socket connects to in this process, and a resolver that knows
    `internal.example` as 127.0.0.2 (the way a hostile DNS answer would)."""
    seen = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        seen.append(address[:2])
        return real_connect(self, address)

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "internal.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


def test_redirects_into_the_network_are_refused_without_connecting(server, victims, connect_log):
    loop_port = victims["127.0.0.1"].getsockname()[1]
    other_port = victims["127.0.0.2"].getsockname()[1]
    targets = [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.pdf",
        f"http://[::ffff:127.0.0.1]:{loop_port}/x.pdf",
        f"http://2130706433:{loop_port}/x.pdf",
        f"http://0177.0.0.1:{loop_port}/x.pdf",
        f"http://127.1:{loop_port}/x.pdf",
        f"http://0x7f.0.0.1:{loop_port}/x.pdf",
        f"http://internal.example:{other_port}/x.pdf",
        f"http://127.0.0.2:{other_port}/x.pdf",
        "http://[::1]/x.pdf",
        "http://0.0.0.0/x.pdf",
        "http://224.0.0.1/x.pdf",
    ]
    for index, target in enumerate(targets):
        path = f"/hop/{index}"
        server.routes[path] = lambda h, target=target: send(h, 302, b"", {"Location": target})
        # two hops: the first redirect stays on the allowed server
        server.routes[f"/start/{index}"] = lambda h, path=path: send(h, 301, b"", {"Location": path})
    for index, target in enumerate(targets):
        failure = failure_of(row(server.url(f"/start/{index}")), params())
        assert failure.reason == "blocked_address", (target, failure)
    assert connections(victims["127.0.0.1"]) == 0 and connections(victims["127.0.0.2"]) == 0
    # the only connections made were to the allowed server (two hops per URL)
    assert set(connect_log) == {("127.0.0.1", server.port)}
    assert len(connect_log) == 2 * len(targets)


def test_dns_rebinding_gains_nothing(server, connect_log, monkeypatch):
    """DNS rebinding: `rebind.example` first answers the allowed server, then a blocked address
    on the same port. Each connection goes to the very address its check passed."""
    victim = socket.socket()
    victim.bind(("127.0.0.2", server.port))
    victim.listen(8)
    victim.setblocking(False)
    answers = []
    resolve = socket.getaddrinfo  # connect_log's resolver

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example":
            return resolve(host, port, *args, **kwargs)
        answers.append("127.0.0.1" if not answers else "127.0.0.2")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[-1], port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    server.routes["/ok.pdf"] = lambda h: send(h, 200, PDF)
    url = f"http://rebind.example:{server.port}/ok.pdf"
    try:
        assert fetch_document(row(url), params()) == PDF
        assert failure_of(row(url), params()).reason == "blocked_address"
        assert connections(victim) == 0
    finally:
        victim.close()
    assert answers == ["127.0.0.1", "127.0.0.2"]  # one resolution per connection, the checked one
    assert connect_log == [("127.0.0.1", server.port)]


def test_private_and_loopback_urls_are_refused_unless_allowed(server, connect_log):
    server.routes["/ok.pdf"] = lambda h: send(h, 200, PDF)
    assert failure_of(row(server.url("/ok.pdf")), params(allowed_networks=[])).reason == "blocked_address"
    assert failure_of(row("http://10.0.0.1/a.pdf"), params()).reason == "blocked_address"
    assert failure_of(row("http://[fe80::1]/a.pdf"), params()).reason == "blocked_address"
    assert connect_log == []
    assert fetch_document(row(server.url("/ok.pdf")), params()) == PDF


def test_redirect_count_is_capped(server):
    for hop in range(4):
        server.routes[f"/chain/{hop}"] = lambda h, hop=hop: send(h, 302, b"", {"Location": f"/chain/{hop + 1}"})
    server.routes["/chain/4"] = lambda h: send(h, 200, PDF)
    failure = failure_of(row(server.url("/chain/0")), params(max_redirects=3))
    assert failure.reason == "http_error" and "seed.run.download.max_redirects" in failure.message
    assert fetch_document(row(server.url("/chain/0")), params(max_redirects=4)) == PDF


def test_bad_allowed_network_is_a_config_error():
    from longdoc_sdg.seed import SeedParams

    with pytest.raises(ValueError, match="not a network in CIDR"):
        SeedParams.model_validate({"download": {"allowed_networks": ["127.0.0.1/99"]}})


# --- Deadlines, rate, truncated bodies ------------------------------------------------------


def drip(handler, headers_too=False, limit=40, pause=0.25):
    """One byte every `pause` seconds, at most `limit` bytes (the server stays bounded)."""
    if headers_too:
        head = b"HTTP/1.0 200 OK\r\nContent-Type: application/pdf\r\nX-Padding: " + b"p" * limit
        for byte in head[:limit]:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(pause)
        return
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(PDF)))
    handler.end_headers()
    for byte in PDF[:limit]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(pause)


def test_a_dripping_body_ends_at_the_attempt_deadline(server):
    server.routes["/drip.pdf"] = drip
    failure = failure_of(row(server.url("/drip.pdf")), params(deadline_s=1.0, min_bytes_per_s=0))
    assert failure.reason == "timeout" and "seed.run.download.deadline_s" in failure.message


def test_dripping_headers_end_at_the_attempt_deadline(server):
    server.routes["/drip-head.pdf"] = lambda h: drip(h, headers_too=True)
    failure = failure_of(row(server.url("/drip-head.pdf")), params(deadline_s=1.0, min_bytes_per_s=0))
    assert failure.reason == "timeout" and "seed.run.download.deadline_s" in failure.message


def test_the_url_deadline_caps_all_attempts_together(server):
    server.routes["/drip-again.pdf"] = drip
    settings = params(deadline_s=0.6, url_deadline_s=1.0, retries=5, min_bytes_per_s=0)
    failure = failure_of(row(server.url("/drip-again.pdf")), settings)
    assert failure.reason == "timeout"
    assert server.hits["/drip-again.pdf"] < 6  # the URL's deadline stopped the retries


def test_a_transfer_below_the_minimum_rate_ends(server):
    server.routes["/slow-rate.pdf"] = lambda h: drip(h, pause=0.1)
    failure = failure_of(row(server.url("/slow-rate.pdf")), params(timeout_s=0.5, min_bytes_per_s=1000))
    assert failure.reason == "timeout" and "seed.run.download.min_bytes_per_s" in failure.message


def test_a_body_shorter_than_its_content_length_is_retried(server):
    def cut(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PDF)))
        handler.end_headers()
        handler.wfile.write(PDF[: len(PDF) // 2])

    server.routes["/cut.pdf"] = cut
    failure = failure_of(row(server.url("/cut.pdf")), params(retries=1))
    assert failure.reason == "http_error" and "Content-Length" in failure.message
    assert server.hits["/cut.pdf"] == 2


# --- Compression bombs ------------------------------------------------------------------------


def gzip_bomb(size_mb: int, prefix: bytes = b"%PDF-1.7\n") -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    parts = [packer.compress(prefix)] + [packer.compress(zeros) for _ in range(size_mb)]
    return b"".join(parts) + packer.flush()


def warc_member(payload: bytes, http_headers: bytes = b"") -> bytes:
    response = b"HTTP/1.1 200 OK\r\n" + http_headers + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
    record = (
        b"WARC/1.0\r\nWARC-Type: response\r\nContent-Type: application/http; msgtype=response\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(response)
        + response
        + b"\r\n\r\n"
    )
    return gzip.compress(record, 1)


def test_compression_bombs_are_too_large_and_stream_in_pieces():
    from longdoc_sdg.seed.fetch import WarcResponseDecoder

    bomb = gzip_bomb(64)
    deflate_bomb = zlib.compress(b"%PDF-1.7\n" + b"\0" * (64 << 20), 1)
    cases = [(bomb, b"Content-Encoding: gzip\r\n"), (deflate_bomb, b"Content-Encoding: deflate\r\n")]
    chunked = b"%x\r\n" % len(bomb) + bomb + b"\r\n0\r\n\r\n"
    cases.append((chunked, b"Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"))
    for payload, headers in cases:
        record = gzip.decompress(warc_member(payload, http_headers=headers))
        with pytest.raises(SeedFailure) as caught:
            parse_warc_response(record, max_bytes=1024 * 1024)
        assert caught.value.reason == "too_large" and "seed.run.download.max_bytes" in caught.value.message

    class Sink:
        largest = 0

        def write(self, data):
            Sink.largest = max(Sink.largest, len(data))

    # Under the cap, the 64 MiB reach the sink one piece at a time, never as one buffer.
    decoder = WarcResponseDecoder(Sink(), max_bytes=128 << 20)
    record = gzip.decompress(warc_member(bomb, http_headers=b"Content-Encoding: gzip\r\n"))
    decoder.feed(record)
    decoder.finish()
    assert decoder.size == (64 << 20) + 9 and decoder.head.startswith(b"%PDF-1.7")
    assert Sink.largest <= 256 * 1024


# --- Local source folders -----------------------------------------------------------------------

OUTSIDE_MARKER = b"%PDF-1.4 OUTSIDE-THE-SOURCE-FOLDER"


@pytest.fixture
def hostile_folder(tmp_path):
    """A source folder with two good PDFs (one reached through an inside link) and every kind of
    entry that must not be read: a link loop, links leaving the folder, a dangling link, a FIFO."""
    import os

    root = tmp_path / "source"
    (root / "sub").mkdir(parents=True)
    samples = sorted(SAMPLE.parent.glob("*.pdf"))
    (root / "good.pdf").write_bytes(samples[0].read_bytes())
    (root / "sub" / "real.pdf").write_bytes(samples[1].read_bytes())
    (root / "inside-link.pdf").symlink_to(root / "sub" / "real.pdf")
    (root / "a.pdf").symlink_to(root / "b.pdf")
    (root / "b.pdf").symlink_to(root / "a.pdf")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(OUTSIDE_MARKER)
    (root / "outside.pdf").symlink_to(outside / "secret.pdf")
    (root / "passwd.pdf").symlink_to("/etc/passwd")
    (root / "dangling.pdf").symlink_to(root / "nothing-here.pdf")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "fifo.pdf")
    return root, outside


REFUSED = {
    "a.pdf": "loop",
    "b.pdf": "loop",
    "outside.pdf": "outside the source folder",
    "passwd.pdf": "outside the source folder",
    "dangling.pdf": "broken",
    "fifo.pdf": "not a regular file",
}


def test_a_hostile_source_folder_ends_as_one_row_per_entry_without_reading_outside(hostile_folder, tmp_path):
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from longdoc_sdg.manifest import list_source_documents
    from longdoc_sdg.seed import run_seed_shard

    root, outside = hostile_folder
    opened = []
    watching = [True]

    def audit(event, args):
        if watching[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(os.fsdecode(args[0])))

    sys.addaudithook(audit)  # hooks stay for the process: `watching` switches this one off
    try:
        rows = list(list_source_documents({"kind": "local", "local": {"path": str(root)}}))
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
        out = tmp_path / "results" / "seed"
        out.mkdir(parents=True)
        (out / ".pages.parquet.killedjob.tmp").write_bytes(b"partial")  # a killed job's leftover
        outputs = {name: str(out / f"{name}.parquet") for name in ("pages", "documents", "failures")}
        run_seed_shard(str(tmp_path / "m.parquet"), outputs, {"dpi": 36}, threads=1)
    finally:
        watching[0] = False
    documents = pq.read_table(outputs["documents"]).to_pylist()
    failures = pq.read_table(outputs["failures"]).to_pylist()
    relative = {r["doc_id"]: json.loads(r["extra"])["relative_path"] for r in rows}
    seeded = sorted(relative[d["doc_id"]] for d in documents)
    # the inside link is read: it and its target are one document, the other its duplicate
    assert seeded in (["good.pdf", "inside-link.pdf"], ["good.pdf", "sub/real.pdf"])
    duplicates = [f for f in failures if f["reason"] == "duplicate"]
    assert [relative[f["doc_id"]] for f in duplicates] == list({"inside-link.pdf", "sub/real.pdf"} - set(seeded))
    failures = [f for f in failures if f["reason"] != "duplicate"]
    assert sorted(relative[f["doc_id"]] for f in failures) == sorted(REFUSED)
    for failure in failures:
        name = relative[failure["doc_id"]]
        assert failure["reason"] == "refused_entry" and failure["message"].startswith(name), failure
        assert REFUSED[name] in failure["message"], failure
    # nothing outside the folder was opened, and no byte of it reached an output
    assert any(p.startswith(os.path.realpath(root)) for p in opened)  # the hook saw the reads
    assert not [p for p in opened if p.startswith(str(outside)) or p == "/etc/passwd"]
    passwd_head = Path("/etc/passwd").read_bytes()[:12]
    for path in (tmp_path / "results").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert OUTSIDE_MARKER not in data and passwd_head not in data, path
    assert not list(out.glob(".pages.parquet.*.tmp"))


def test_symlink_settings(hostile_folder):
    from longdoc_sdg.manifest import list_source_documents

    root, _ = hostile_folder

    def refused(symlinks):
        rows = list_source_documents({"kind": "local", "local": {"path": str(root), "symlinks": symlinks}})
        return sorted(json.loads(r["extra"])["relative_path"] for r in rows if "refused" in json.loads(r["extra"]))

    assert "inside-link.pdf" in refused("refuse") and "outside.pdf" in refused("refuse")
    assert "outside.pdf" not in refused("follow") and "a.pdf" in refused("follow")


# --- Config checks ------------------------------------------------------------------------------


def test_results_folder_checks(tmp_path):
    from longdoc_sdg.config import check_paths

    source = {"settings": {"kind": "local", "local": {"path": str(tmp_path / "pdfs")}}}
    for bad, words in (("", "results_dir: empty"), ("/", "filesystem root"), (" ", "results_dir: empty")):
        with pytest.raises(ValueError, match=words):
            check_paths({"results_dir": bad, "source": source})
    with pytest.raises(ValueError, match="inside source.settings.local.path"):
        check_paths({"results_dir": str(tmp_path / "pdfs" / "results"), "source": source})
    check_paths({"results_dir": str(tmp_path / "results"), "source": source})


def test_mupdf_allocation_failures_are_too_large():
    from longdoc_sdg.seed.render import _is_memory_error

    for text in ("malloc (1048576 bytes) failed", "calloc (4 x 8 bytes) failed", "out of memory"):
        assert _is_memory_error(RuntimeError(text))
    assert not _is_memory_error(RuntimeError("syntax error in content stream"))


# --- Redaction ------------------------------------------------------------------------------------

KEY = "hostile-key-3f8a9c1d5e7b"


def test_everything_written_is_redacted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longdoc_sdg.io import register_secret, write_parquet_atomic, write_text_atomic
    from longdoc_sdg.rowstore import ShardWriter

    register_secret(KEY, "the test key")
    writer = ShardWriter(tmp_path / "s.parquet", tmp_path / "j.jsonl", "h", pa.schema([]))
    echo = f"HTTP 400: bad request (request had Authorization: Bearer {KEY})"
    writer.write({"row_id": "r1", "status": "failed", "failure_reason": "bad_request", "failure_message": echo})
    assert KEY.encode() not in (tmp_path / "j.jsonl").read_bytes()
    writer.finalize(["r1"])
    write_parquet_atomic(pa.table({"message": [echo, "fine"]}), tmp_path / "t.parquet")
    write_text_atomic(tmp_path / "report.json", json.dumps({"error": echo}))
    write_text_atomic(tmp_path / "key", KEY, mode=0o600)  # a secret file keeps its secret
    assert (tmp_path / "key").read_text() == KEY
    for name in ("s.parquet", "t.parquet", "report.json"):
        assert KEY.encode() not in (tmp_path / name).read_bytes(), name
    assert pq.read_table(tmp_path / "s.parquet").column("failure_message")[0].as_py().endswith("Bearer ***)")


def test_very_short_keys_are_refused():
    from longdoc_sdg import preflight
    from longdoc_sdg.config import default_config
    from longdoc_sdg.io import register_secret
    from longdoc_sdg.plan import stage_statuses

    with pytest.raises(ValueError, match="FAKE_KEY is only 3 character"):
        register_secret("abc", "the API key in environment variable FAKE_KEY")  # at job start
    config = default_config()  # at plan time, before any job
    config["models"]["qa"] = {
        "endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "FAKE_KEY"}
    }
    config["stages"]["single_page_qa"]["model"] = "qa"
    statuses = stage_statuses(config)
    (problem,) = preflight.api_key_problems(config, statuses, environ={"FAKE_KEY": "abc"})
    assert problem.startswith("models.qa.endpoint.api_key_env") and "only 3 character(s)" in problem
    assert preflight.api_key_problems(config, statuses, environ={"FAKE_KEY": "abcd"}) == []


# --- A stage failing as a whole -------------------------------------------------------------------


def test_a_shard_failing_alike_for_a_setting_fails_the_job():
    import collections

    from longdoc_sdg.engine.errors import AllRowsFailed
    from longdoc_sdg.stages import check_not_all_failed

    with pytest.raises(AllRowsFailed, match="raise stages.text_qa.settings.max_tokens"):
        check_not_all_failed("text_qa", collections.Counter({"length": 6}))
    with pytest.raises(AllRowsFailed, match="HTTP 400"):
        check_not_all_failed("classify", collections.Counter({"bad_request": 4}))
    check_not_all_failed("text_qa", collections.Counter({"length": 5, None: 1}))  # some rows worked
    check_not_all_failed("text_qa", collections.Counter({"length": 2}))  # too few to tell
    check_not_all_failed("text_qa", collections.Counter({"server_error": 9}))  # not a setting


def test_an_endpoint_refusing_every_request_fails_the_stage_job(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longdoc_sdg.engine.errors import AllRowsFailed
    from longdoc_sdg.seed import run_seed_shard
    from longdoc_sdg.stages import run_stage
    from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer

    manifest = [
        {"doc_id": "d", "source_kind": "local", "source": str(SAMPLE), "url": None, "date": None, "extra": "{}"}
    ]
    pq.write_table(pa.Table.from_pylist(manifest), tmp_path / "m.parquet")
    seed = {name: str(tmp_path / "seed" / f"{name}.parquet") for name in ("pages", "documents", "failures")}
    run_seed_shard(str(tmp_path / "m.parquet"), seed, {"dpi": 36}, threads=1)
    ocr = tmp_path / "ocr.parquet"
    run_stage("ocr", {"pages": seed["pages"]}, str(ocr), {}, None, 1, str(tmp_path / "j" / "ocr.jsonl"))
    with FakeOpenAIServer(faults={"400": 1.0}) as server:
        endpoint = {"base_url": server.base_url, "model": "fake-model"}
        journal = tmp_path / "j" / "text_qa.jsonl"
        with pytest.raises(AllRowsFailed, match="all 4 rows of the shard failed with bad_request"):
            run_stage(
                "text_qa",
                {"ocr": str(ocr)},
                str(tmp_path / "qa.parquet"),
                {"num_records": 4},
                endpoint,
                1,
                str(journal),
            )
    assert not (tmp_path / "qa.parquet").exists()
    assert len(journal.read_text().splitlines()) == 5  # header + the 4 failed rows, kept for a resume


def test_a_stage_job_removes_the_partial_parquet_of_a_killed_run(tmp_path):
    import pyarrow as pa

    from longdoc_sdg.rowstore import ShardWriter

    (tmp_path / ".00000.parquet.k1ll3d.tmp").write_bytes(b"partial")
    (tmp_path / ".00001.parquet.other.tmp").write_bytes(b"another shard's")
    ShardWriter(tmp_path / "00000.parquet", tmp_path / "j.jsonl", "h", pa.schema([])).close()
    assert not (tmp_path / ".00000.parquet.k1ll3d.tmp").exists()
    assert (tmp_path / ".00001.parquet.other.tmp").exists()  # not this job's output


def test_every_job_removes_what_a_killed_run_left_next_to_its_outputs(tmp_path, monkeypatch):
    import logging
    from types import SimpleNamespace

    from longdoc_sdg.io import LOGGER_NAME, start_job

    out = tmp_path / "results"
    out.mkdir()
    (out / ".stats.json.k1ll3d.tmp").write_bytes(b"partial")
    (out / ".other.json.x.tmp").write_bytes(b"not this job's")
    job = SimpleNamespace(log=[str(tmp_path / "j.log")], output=[str(out / "stats.json"), str(out / "figure.png")])
    logger = logging.getLogger(LOGGER_NAME)
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # start_job points stderr at the job log
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    start_job(job)
    assert not (out / ".stats.json.k1ll3d.tmp").exists()
    assert (out / ".other.json.x.tmp").exists()
    # the manifest job also removes partial shards of its folder (not outputs of its own)
    from longdoc_sdg.manifest import write_index

    manifest = tmp_path / "manifest"
    manifest.mkdir()
    (manifest / ".00000.parquet.k1ll3d.tmp").write_bytes(b"partial shard")
    index = write_index(manifest, {"kind": "local", "local": {"path": str(SAMPLE.parent)}}, 100)
    assert index["shards"] == ["00000"] and not list(manifest.glob(".*.tmp"))
    # ... and every workflow script starts that way
    scripts = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
    for script in scripts.glob("*.py"):
        assert "start_job(snakemake)" in script.read_text(), f"{script.name} does not call start_job(snakemake)"


SEED_SHARD = """
import json, sys
from longdoc_sdg.seed import run_seed_shard
run_seed_shard(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), threads=1)
"""


def test_hostile_urls_in_a_shard_end_as_one_row_each_within_the_seed_memory_limit(server, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bomb_mb = 256  # inflated size of a ~1 MB WARC member; the cap below is 4 MB
    member = warc_member(gzip_bomb(bomb_mb), http_headers=b"Content-Encoding: gzip\r\n")
    server.routes["/bomb.warc.gz"] = lambda h: send(h, 200, member)
    server.routes["/good.pdf"] = lambda h: send(h, 200, PDF)
    server.routes["/to-metadata"] = lambda h: send(h, 302, b"", {"Location": "http://169.254.169.254/"})
    server.routes["/trickle.pdf"] = drip

    def cut(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PDF)))
        handler.end_headers()
        handler.wfile.write(PDF[:1000])

    server.routes["/short.pdf"] = cut
    cases = {
        "good": (server.url("/good.pdf"), None),
        "metadata": (server.url("/to-metadata"), "blocked_address"),
        "private": ("http://10.0.0.1/a.pdf", "blocked_address"),
        "decimal": ("http://2130706433/a.pdf", "blocked_address"),
        "trickle": (server.url("/trickle.pdf"), "timeout"),
        "short": (server.url("/short.pdf"), "http_error"),
        "scheme": ("file:///etc/passwd", "bad_url"),
        "warc-bomb": (server.url("/gone.pdf"), "too_large"),
    }
    rows = [{**row(url), "doc_id": doc_id} for doc_id, (url, _) in cases.items()]
    rows[-1]["extra"] = json.dumps({"file_path": "bomb.warc.gz", "offset": 0})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    outputs = {
        name: str(tmp_path / "out" / f"{name}.parquet") for name in ("pages", "documents", "windows", "failures")
    }
    settings = {**params(deadline_s=1.0, min_bytes_per_s=0, max_bytes=4 << 20), "dpi": 36}
    settings["warc"] = {"enabled": True, "base_url": server.url("/")}
    # In a process of its own, measured by getrusage: the seed process and its worker.
    child, peak_mb = run_measured(
        [sys.executable, "-c", SEED_SHARD, str(tmp_path / "m.parquet"), json.dumps(outputs), json.dumps(settings)],
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    failures = pq.read_table(outputs["failures"]).to_pylist()
    documents = pq.read_table(outputs["documents"]).to_pylist()
    assert [d["doc_id"] for d in documents] == ["good"]
    assert sorted((f["doc_id"], f["reason"]) for f in failures) == sorted(
        (doc_id, reason) for doc_id, (_, reason) in cases.items() if reason
    )
    bomb = next(f for f in failures if f["doc_id"] == "warc-bomb")
    assert "WARC fallback failed: too_large" in bomb["message"] and "seed.run.download.max_bytes" in bomb["message"]
    # Generous: the seed process and its one worker together, each at the largest peak seen.
    assert 2 * peak_mb < seed_job_memory_limit_mb(), peak_mb
    assert peak_mb < bomb_mb, peak_mb  # the bomb was never inflated in memory


def test_seed_failure_messages_name_settings_that_exist():
    """Every `seed.run.…` / `seed.settings.…` a message tells the user to change is a real key,
    and no message names a seed setting without its section."""
    import re

    from longdoc_sdg.seed.config import SeedParams, SeedRun, SeedSettings

    code = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "longdoc_sdg"
    named = set()
    for source in code.rglob("*.py"):
        named |= set(re.findall(r"(?<![\w.])seed\.[a-z_]+(?:\.[a-z_]+)*", source.read_text()))
    assert "seed.run.max_document_pages" in named and "seed.run.download.max_bytes" in named
    for name in sorted(named):
        section, *path = name.split(".")[1:]
        if section not in ("run", "settings"):
            assert section not in SeedParams.model_fields, f"{name}: say seed.run.{section} or seed.settings.{section}"
            continue
        model = SeedRun if section == "run" else SeedSettings
        for key in path:
            assert key in model.model_fields, name
            model = model.model_fields[key].annotation


def test_the_worker_memory_floor_is_enough_and_below_it_nothing_works(tmp_path):
    """The lower bound of seed.run.worker.memory_mb, measured: at the floor a worker renders the
    sample PDF and a page at the full default pixel budget; at half of it, it cannot even start
    (every document would be `crashed`)."""
    import queue

    from longdoc_sdg.seed.config import SeedParams, WorkerParams
    from longdoc_sdg.seed.pool import WorkerPool

    floor = next(m.ge for m in WorkerParams.model_fields["memory_mb"].metadata if hasattr(m, "ge"))
    giant = pdf_factory.write(tmp_path / "giant.pdf", pdf_factory.giant_page_pdf(200))

    def render(memory_mb: int, path: Path) -> dict:
        events = queue.Queue()
        pool = WorkerPool(1, memory_mb, events)
        task = {
            "task_id": 1,
            "path": str(path),
            "start": 0,
            "count": 2,
            "blob_path": str(tmp_path / f"{memory_mb}-{path.stem}.bin"),
            "params": SeedParams().model_dump(mode="json"),  # default DPI and pixel budget
            "cpu_limit_s": 120,
            "wall_timeout_s": 300,
        }
        try:
            pool.submit(task, task["wall_timeout_s"])
            while True:
                outcome = pool.handle(events.get(timeout=300))
                if outcome is not None:
                    return outcome[1]
        finally:
            pool.close()

    assert render(floor, SAMPLE)["ok"]
    page = render(floor, giant)
    assert (
        page["ok"] and page["pages"][0]["width"] * page["pages"][0]["height"] > 0.9 * SeedParams().max_pixels_per_page
    )
    below = render(floor // 2, SAMPLE)
    assert not below["ok"] and below["reason"] == "crashed"
    with pytest.raises(ValueError, match=f"greater than or equal to {floor}"):
        SeedParams.model_validate({"worker": {"memory_mb": floor - 1}})
