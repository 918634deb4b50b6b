"""Manifest: stable ids, append-only shards, clear errors for bad sources."""

import shutil

import pyarrow.parquet as pq
import pytest

from longdoc_sdg.manifest import SourceError, sync_manifest


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
