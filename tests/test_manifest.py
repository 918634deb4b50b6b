"""Manifest: stable ids, append-only shards, clear errors for bad sources."""

import shutil

import pyarrow.parquet as pq
import pytest

from longdoc_sdg.manifest import (
    SourceError,
    check_sharding,
    read_index,
    source_fingerprint,
    sync_manifest,
    write_index,
)


def _local(path):
    return {"kind": "local", "local": {"path": str(path), "suffix": ".pdf"}, "max_documents": None}


def test_adding_documents_adds_shards_without_touching_existing_ones(tmp_path, real_pdfs):
    folder = tmp_path / "pdfs"
    (folder / "nested").mkdir(parents=True)
    for pdf in real_pdfs[:3]:
        shutil.copy(pdf, folder / pdf.name)
    manifest = tmp_path / "manifest"
    shards = sync_manifest(_local(folder), manifest, documents_per_shard=2)
    assert shards == ["00000", "00001"]
    before = {s: (manifest / f"{s}.parquet").read_bytes() for s in shards}
    first_ids = pq.read_table(manifest / "00000.parquet").column("doc_id").to_pylist()

    # Nothing new: nothing written, same shards.
    assert sync_manifest(_local(folder), manifest, documents_per_shard=2) == shards
    # New documents (one in a subfolder, found recursively) land in a new shard only.
    shutil.copy(real_pdfs[3], folder / "nested" / real_pdfs[3].name)
    shutil.copy(real_pdfs[4], folder / "a-first-by-name.pdf")
    shards_after = sync_manifest(_local(folder), manifest, documents_per_shard=2)
    assert shards_after == ["00000", "00001", "00002"]
    assert {s: (manifest / f"{s}.parquet").read_bytes() for s in shards} == before
    new_rows = pq.read_table(manifest / "00002.parquet").to_pylist()
    assert len(new_rows) == 2 and all(r["doc_id"] not in first_ids for r in new_rows)


def test_ids_are_stable_across_manifest_rebuilds(tmp_path, real_pdfs):
    folder = tmp_path / "pdfs"
    folder.mkdir()
    for pdf in real_pdfs[:2]:
        shutil.copy(pdf, folder / pdf.name)
    ids = []
    for name in ("m1", "m2"):
        sync_manifest(_local(folder), tmp_path / name, documents_per_shard=10)
        ids.append(pq.read_table(tmp_path / name / "00000.parquet").column("doc_id").to_pylist())
    assert ids[0] == ids[1] and len(set(ids[0])) == 2


def test_url_list_dedupes_and_skips_comments(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "# papers\nhttp://127.0.0.1:9/a.pdf\n\nhttp://127.0.0.1:9/b.pdf  # second\nhttp://127.0.0.1:9/a.pdf\n"
    )
    source = {"kind": "urls", "urls": {"path": str(urls)}, "max_documents": None}
    sync_manifest(source, tmp_path / "m", documents_per_shard=10)
    rows = pq.read_table(tmp_path / "m" / "00000.parquet").to_pylist()
    assert [r["url"] for r in rows] == ["http://127.0.0.1:9/a.pdf", "http://127.0.0.1:9/b.pdf"]


def test_missing_folder_names_the_setting(tmp_path):
    with pytest.raises(SourceError, match="source.settings.local.path"):
        sync_manifest(_local(tmp_path / "nope"), tmp_path / "m", documents_per_shard=2)


def test_finepdfs_local_copy_in_the_dataset_layout(tmp_path):
    import pyarrow as pa

    data = tmp_path / "finepdfs" / "data" / "eng_Latn" / "train"
    data.mkdir(parents=True)
    rows = [
        {
            "text": "t",
            "id": f"<urn:uuid:{i}>",
            "dump": "CC-MAIN-2024-10",
            "url": f"http://127.0.0.1:9/{i}.pdf",
            "date": "2024-02-20",
            "file_path": f"crawl-data/x/{i}.warc.gz",
            "offset": 100 * i,
            "language": "eng_Latn",
            "token_count": 10,
            "is_truncated": False,
        }
        for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), data / "000_00000.parquet")
    source = {
        "kind": "finepdfs",
        "finepdfs": {
            "dataset": str(tmp_path / "finepdfs"),
            "subset": "eng_Latn",
            "split": "train",
            "data_files": "data/{subset}/{split}/*.parquet",
            "num_documents": 3,
        },
        "max_documents": None,
    }
    shards = sync_manifest(source, tmp_path / "m", documents_per_shard=2)
    table = (
        pq.read_table(tmp_path / "m" / "00000.parquet").to_pylist()
        + pq.read_table(tmp_path / "m" / "00001.parquet").to_pylist()
    )
    assert shards == ["00000", "00001"]
    assert [r["url"] for r in table] == [f"http://127.0.0.1:9/{i}.pdf" for i in range(3)]
    assert '"file_path": "crawl-data/x/0.warc.gz"' in table[0]["extra"]


def _many_documents(folder, count):
    """`count` distinct small files the local source takes as documents (the manifest reads
    names, not contents)."""
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"doc{index:03d}.pdf").write_bytes(b"%PDF-1.4\n%" + str(index).encode())
    return folder


def test_two_writers_at_once_never_shard_a_document_twice(tmp_path):
    """Four writers released together, seeing different listings (as runs started with
    different max_documents would): every document ends in exactly one shard."""
    import subprocess
    import sys
    import time

    folder = _many_documents(tmp_path / "pdfs", 60)
    manifest, go = tmp_path / "manifest", tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "from longdoc_sdg.manifest import write_index\n"
        "open(sys.argv[2], 'w').close()\n"
        "while not os.path.exists(sys.argv[3]): time.sleep(0.001)\n"
        "source = {'kind': 'local', 'local': {'path': sys.argv[4], 'suffix': '.pdf'}, 'max_documents': int(sys.argv[5])}\n"
        "write_index(sys.argv[1], source, 3)\n"
    )
    ready = [tmp_path / f"ready{n}" for n in range(4)]
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(manifest), str(flag), str(go), str(folder), str(limit)])
        for flag, limit in zip(ready, (20, 35, 50, 60))
    ]
    deadline = time.monotonic() + 60  # a bound on the wait, not a timing assert
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    ids = [i for path in sorted(manifest.glob("*.parquet")) for i in pq.read_table(path).column("doc_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 60
    assert read_index(manifest)["documents_per_shard"] == 3


def test_a_sharding_change_against_an_existing_manifest_names_both_values_and_the_fix(tmp_path):
    folder = _many_documents(tmp_path / "pdfs", 4)
    manifest = tmp_path / "manifest"
    write_index(manifest, _local(folder), 2)
    check_sharding(manifest, 2)  # unchanged: fine
    with pytest.raises(ValueError) as error:
        check_sharding(manifest, 5)
    message = str(error.value)
    assert "sharding.settings.documents_per_shard is 5" in message and "made with 2" in message
    assert "Set it back to 2" in message and "new results_dir" in message
    with pytest.raises(ValueError, match="made with 2"):
        write_index(manifest, _local(folder), 5)
    assert read_index(manifest)["shards"] == ["00000", "00001"]


def test_the_source_fingerprint_reads_only_and_follows_new_documents(tmp_path):
    folder = _many_documents(tmp_path / "pdfs", 3)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    first = source_fingerprint(_local(folder))
    assert source_fingerprint(_local(folder)) == first
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    (folder / "new.pdf").write_bytes(b"%PDF-1.4\n%new")
    assert source_fingerprint(_local(folder)) != first
