"""Every source kind on real files: documents kept, bad records counted by reason, ids stable, memory bounded."""

from __future__ import annotations

import gzip
import io
import json
import time
import tracemalloc
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from minigpt_assets.data.documents import count_documents, iter_documents
from minigpt_assets.data.ingest import ingest_source
from minigpt_assets.data.sources import Rejected, SourceMissing, SourceQueryError, read_source
from minigpt_assets.recipes import _SourceFile


def recipe(**kw):
    kw.setdefault("domain", "test")
    return _SourceFile.model_validate({"source": kw}).source


def split(items):
    items = list(items)
    return [i for i in items if not isinstance(i, Rejected)], [i for i in items if isinstance(i, Rejected)]


GOOD = [{"id": f"r{i}", "text": f"document number {i} with some text", "url": f"u{i}"} for i in range(5)]
BAD_LINES = [
    b"\xff\xfe not utf8 {\"text\": 1}",  # invalid_utf8
    b"{broken json",  # invalid_json
    json.dumps({"id": "x", "body": "no text"}).encode(),  # missing_text
    json.dumps({"id": "y", "text": 42}).encode(),  # not_a_string
    json.dumps({"id": "z", "text": "  \n\t "}).encode(),  # empty_text
    b"[1, 2]",  # valid JSON but not an object: invalid_json
]
BAD_REASONS = ["invalid_utf8", "invalid_json", "missing_text", "not_a_string", "empty_text", "invalid_json"]


def _jsonl_bytes() -> bytes:
    lines = [json.dumps(r).encode() for r in GOOD[:3]] + BAD_LINES + [b""] + [json.dumps(r).encode() for r in GOOD[3:]]
    return b"\n".join(lines) + b"\n"


def test_jsonl_plain_gz_zst_with_bad_records(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_bytes(_jsonl_bytes())
    (d / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes()))
    (d / "sub/c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes()))
    (d / "notes.txt").write_text("not a jsonl file")
    r = recipe(kind="jsonl", location=str(d), id_field="id")
    docs, rej = split(read_source("s", r))
    assert len(docs) == 15
    assert sorted(x.reason for x in rej) == sorted(BAD_REASONS * 3)
    assert [x.provenance for x in rej if x.reason == "invalid_utf8"] == ["a.jsonl:4", "b.jsonl.gz:4",
                                                                          "sub/c.jsonl.zst:4"]
    assert rej[0].example.startswith("\ufffd") and "not utf8" in rej[0].example
    assert docs[0]["text"] == GOOD[0]["text"] and docs[0]["provenance"] == "a.jsonl:1"
    assert docs[3]["provenance"] == "a.jsonl:11"  # line numbers count bad and blank lines
    assert json.loads(docs[0]["meta"]) == {"id": "r0", "url": "u0"}
    assert {d["source"] for d in docs} == {"s"} and {d["domain"] for d in docs} == {"test"}
    # ids come from id_field: the same record in three files has the same id; reading again gives the same ids
    again, _ = split(read_source("s", r))
    assert [x["id"] for x in docs] == [x["id"] for x in again]
    assert docs[0]["id"] == docs[5]["id"] == docs[10]["id"]
    # without id_field the key is file + line: unique and stable
    no_id, _ = split(read_source("s", recipe(kind="jsonl", location=str(d))))
    no_id2, _ = split(read_source("s", recipe(kind="jsonl", location=str(d))))
    assert len({x["id"] for x in no_id}) == 15 and [x["id"] for x in no_id] == [x["id"] for x in no_id2]


def test_multi_member_gzip_multi_frame_zstd_and_bom(tmp_path):
    part = [json.dumps({"text": f"t{i}"}).encode() + b"\n" for i in range(6)]
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(b"".join(part[:3])) + gzip.compress(b"".join(part[3:])))
    c = zstandard.ZstdCompressor(write_checksum=True)
    (tmp_path / "m.jsonl.zst").write_bytes(c.compress(b"".join(part[:2])) + c.compress(b"".join(part[2:])))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b"".join(part[:2]).rstrip(b"\n"))  # no final newline
    docs, rej = split(read_source("s", recipe(kind="jsonl", location=str(tmp_path / "*.jsonl*"))))
    assert rej == []
    assert [d["text"] for d in docs] == ["t0", "t1"] + [f"t{i}" for i in range(6)] * 2
    assert docs[0]["provenance"] == "bom.jsonl:1"  # relative to the glob's directory


def _gz_prefix_lines(cut: bytes) -> int:
    return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(cut).count(b"\n")


def _zst_prefix_lines(cut: bytes) -> int:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(cut)).read().count(b"\n")


def test_truncated_compressed_files_keep_what_was_read(tmp_path):
    big = b"\n".join(json.dumps({"text": f"line {i} " + "x" * 200}).encode() for i in range(5000)) + b"\n"
    gz = gzip.compress(big)
    zst = zstandard.ZstdCompressor(write_checksum=True).compress(big)
    (tmp_path / "t.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    (tmp_path / "u.jsonl.zst").write_bytes(zst[: len(zst) // 2])
    (tmp_path / "v.jsonl.zst").write_bytes(zst[:-2])  # only the frame checksum is cut
    (tmp_path / "w.jsonl").write_bytes(big[:5000].rsplit(b"\n", 1)[0] + b"\n")
    expected = {"t.jsonl.gz": _gz_prefix_lines(gz[: len(gz) // 2]),
                "u.jsonl.zst": _zst_prefix_lines(zst[: len(zst) // 2]),
                "v.jsonl.zst": 5000, "w.jsonl": big[:5000].rsplit(b"\n", 1)[0].count(b"\n") + 1}
    assert 0 < expected["t.jsonl.gz"] < 5000 and 0 < expected["u.jsonl.zst"] < 5000
    docs, rej = split(read_source("s", recipe(kind="jsonl", location=str(tmp_path))))
    per_file = {f: sum(d["provenance"].startswith(f + ":") for d in docs) for f in expected}
    assert per_file == expected
    assert sorted((x.reason, x.provenance.split(":")[0]) for x in rej) == [
        ("truncated_file", "t.jsonl.gz"), ("truncated_file", "u.jsonl.zst"), ("truncated_file", "v.jsonl.zst")]
    res = ingest_source("s", recipe(kind="jsonl", location=str(tmp_path)), tmp_path / "out")
    assert res.rejects == {"truncated_file": 3} and res.documents == sum(expected.values())
    rows = pq.read_table(tmp_path / "out/rejects.parquet").to_pylist()
    assert [r["reason"] for r in rows] == ["truncated_file"] * 3 and set(rows[0]) == {"reason", "provenance",
                                                                                      "example"}
    assert res.reject_examples["truncated_file"].startswith("t.jsonl.gz:")


def test_not_compressed_at_all_is_a_reject_not_a_crash(tmp_path):
    (tmp_path / "fake.jsonl.gz").write_bytes(b'{"text": "plain text with a .gz name"}\n')
    (tmp_path / "fake.jsonl.zst").write_bytes(b'{"text": "plain text with a .zst name"}\n')
    docs, rej = split(read_source("s", recipe(kind="jsonl", location=str(tmp_path))))
    assert docs == [] and [x.reason for x in rej] == ["truncated_file", "truncated_file"]


def test_parquet_local_glob_dir_and_fsspec_urls(tmp_path):
    import fsspec

    tbl = pa.table({"content": [f"text {i}" for i in range(10)], "k": list(range(10)), "lang": ["en"] * 10})
    (tmp_path / "pq/sub").mkdir(parents=True)
    pq.write_table(tbl.slice(0, 6), tmp_path / "pq/p1.parquet", row_group_size=2)
    pq.write_table(tbl.slice(6), tmp_path / "pq/sub/p2.parquet")
    kw = dict(kind="parquet", text_field="content", id_field="k")
    docs, _ = split(read_source("p", recipe(location=str(tmp_path / "pq/p*.parquet"), **kw)))
    assert [d["text"] for d in docs] == [f"text {i}" for i in range(6)]
    docs, _ = split(read_source("p", recipe(location=str(tmp_path / "pq"), **kw)))  # a directory, recursive
    assert [d["text"] for d in docs] == [f"text {i}" for i in range(10)]
    assert docs[7]["provenance"] == "sub/p2.parquet:1" and json.loads(docs[0]["meta"]) == {"k": 0, "lang": "en"}
    file_url, _ = split(read_source("p", recipe(location=f"file://{tmp_path}/pq", **kw)))
    assert [d["id"] for d in file_url] == [d["id"] for d in docs]
    fs = fsspec.filesystem("memory")
    with fs.open("/bucket/data/a.parquet", "wb") as f:
        pq.write_table(tbl.slice(0, 6), f)
    with fs.open("/bucket/data/b.parquet", "wb") as f:
        pq.write_table(tbl.slice(6), f)
    for loc in ("memory://bucket/data", "memory://bucket/data/*.parquet"):
        mem, _ = split(read_source("p", recipe(location=loc, **kw)))
        assert [d["id"] for d in mem] == [d["id"] for d in docs]  # same id_field values, same ids
        assert mem[0]["provenance"] == "a.parquet:0"
    one, _ = split(read_source("p", recipe(location="memory://bucket/data/b.parquet", **kw)))
    assert [d["text"] for d in one] == [f"text {i}" for i in range(6, 10)]
    for loc in (str(tmp_path / "nope/*.parquet"), str(tmp_path / "nope"), "memory://bucket/nope.parquet",
                "memory://bucket/nope/*.parquet"):
        with pytest.raises(SourceMissing):
            list(read_source("p", recipe(kind="parquet", location=loc)))
    with pytest.raises(SourceQueryError, match="text_field 'text' is not a column"):
        list(read_source("p", recipe(kind="parquet", location=str(tmp_path / "pq"))))


def test_parquet_bad_rows_and_corrupt_file(tmp_path):
    pq.write_table(pa.table({"text": ["ok one", None, "   ", "ok two"]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 this is not parquet")
    docs, rej = split(read_source("p", recipe(kind="parquet", location=str(tmp_path))))
    assert [d["text"] for d in docs] == ["ok one", "ok two"]
    assert [(x.reason, x.provenance) for x in rej] == [("missing_text", "a.parquet:1"), ("empty_text", "a.parquet:2"),
                                                        ("unreadable_file", "b.parquet")]


def test_text_dir_with_split_exclude_and_bad_encoding(tmp_path):
    q = tmp_path / "q"
    (q / "more").mkdir(parents=True)
    (q / "quotes").write_text("First quote.\n%\nSecond quote.\n%\n\n%\nThird.\n")
    (q / "quotes.dat").write_bytes(b"\x00\x01")
    (q / "latin").write_bytes("caf\xe9".encode("latin-1"))
    (q / "more/deep").write_text("Deep one.\n%\nDeep two.")
    r = recipe(kind="text_dir", location=str(q), include=["*"], exclude=["*.dat"], split_on="\n%\n")
    docs, rej = split(read_source("q", r))
    assert [d["text"] for d in docs] == ["First quote.", "Second quote.", "Third."]  # "*" is not recursive
    assert [d["provenance"] for d in docs] == ["quotes#0", "quotes#1", "quotes#3"]
    assert [(x.reason, x.provenance) for x in rej] == [("invalid_utf8", "latin")]
    r2 = recipe(kind="text_dir", location=str(q), include=["**/*"], exclude=["*.dat", "latin"], split_on="\n%\n")
    docs2, rej2 = split(read_source("q", r2))
    assert [d["text"] for d in docs2] == ["Deep one.", "Deep two.", "First quote.", "Second quote.", "Third."]
    assert rej2 == [] and len({d["id"] for d in docs2}) == 5
    latin, rej3 = split(read_source("q", recipe(kind="text_dir", location=str(q / "latin"), encoding="latin-1")))
    assert [d["text"] for d in latin] == ["café"] and rej3 == []
    whole, _ = split(read_source("q", recipe(kind="text_dir", location=str(q), include=["more/*"])))
    assert [d["text"] for d in whole] == ["Deep one.\n%\nDeep two."] and json.loads(whole[0]["meta"]) == {
        "path": "more/deep"}


def test_code_tree_languages_excludes_and_size_limit(tmp_path):
    root = tmp_path / "repo"
    files = {"a.py": "print(1)\n", "lib/b.rs": "fn main() {}\n", "lib/c.c": "int x;\n", "lib/c.h": "int y;\n",
             "web/x.ts": "let a = 1;\n", "conf.yml": "a: 1\n", "tool.zig": "const x = 1;\n",
             "test/t.py": "assert 1\n", "lib/tests/t2.py": "assert 2\n", "big.py": "x = 1\n" * 1000,
             "empty.py": "\n", "bad.py": b"\xff\xfe = 1\n"}
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body if isinstance(body, bytes) else body.encode())
    r = recipe(kind="code_tree", location=str(root), include=["**/*"], exclude=["test/**", "**/tests/**"],
               max_file_bytes=1000)
    docs, rej = split(read_source("c", r))
    langs = {json.loads(d["meta"])["path"]: json.loads(d["meta"])["language"] for d in docs}
    assert langs == {"a.py": "python", "lib/b.rs": "rust", "lib/c.c": "c", "lib/c.h": "c", "web/x.ts": "typescript",
                     "conf.yml": "yaml", "tool.zig": "zig"}
    assert sorted((x.reason, x.provenance) for x in rej) == [("empty_text", "empty.py"), ("invalid_utf8", "bad.py"),
                                                             ("too_large", "big.py")]
    assert docs[0]["text"] == "print(1)\n"  # code is kept verbatim


def test_hf_dataset_from_disk_and_missing_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b c", "d e f", ""], "n": [1, 2, 3]}),
                               "test": datasets.Dataset.from_dict({"text": ["x y"], "n": [9]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    dd["test"].save_to_disk(str(tmp_path / "single"))
    docs, rej = split(read_source("h", recipe(kind="hf_dataset", location=str(tmp_path / "dd"), id_field="n")))
    assert [d["text"] for d in docs] == ["a b c", "d e f"] and [x.reason for x in rej] == ["empty_text"]
    assert json.loads(docs[0]["meta"]) == {"n": 1} and docs[0]["provenance"] == "dd:0"
    test, _ = split(read_source("h", recipe(kind="hf_dataset", location=str(tmp_path / "dd"), split="test")))
    single, _ = split(read_source("h", recipe(kind="hf_dataset", location=str(tmp_path / "single"))))
    assert [d["text"] for d in test] == [d["text"] for d in single] == ["x y"]
    with pytest.raises(SourceQueryError, match="split 'nope'"):
        list(read_source("h", recipe(kind="hf_dataset", location=str(tmp_path / "dd"), split="nope")))
    with pytest.raises(SourceMissing, match="directory not found"):
        list(read_source("h", recipe(kind="hf_dataset", location=str(tmp_path / "gone"))))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf/datasets"))
    import huggingface_hub.constants

    # offline mode switched off everywhere: the reader forces it on for the lookup, so this never hits the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    t0 = time.perf_counter()
    with pytest.raises(SourceMissing, match="is not in the local Hugging Face cache") as e:
        list(read_source("h", recipe(kind="hf_dataset", location="someorg/some-uncached-dataset")))
    assert time.perf_counter() - t0 < 10 and "\n" not in str(e.value) and "save_to_disk" in str(e.value)
    res = ingest_source("h", recipe(kind="hf_dataset", location="someorg/x", optional=True), tmp_path / "o")
    assert res.documents == 0 and "not in the local Hugging Face cache" in res.missing
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "0" and datasets.config.HF_HUB_OFFLINE is False  # restored afterwards


def test_duckdb_sql_over_files(tmp_path):
    pq.write_table(pa.table({"body": ["alpha text", "beta text"], "lang": ["en", "en"], "k": [1, 2]}),
                   tmp_path / "x.parquet")
    (tmp_path / "y.jsonl").write_text('{"body": "gamma text", "lang": "de", "k": 3}\n{"body": null, "lang": "fr", '
                                      '"k": 4}\n')
    q = (f"SELECT body AS text, lang, k FROM read_parquet('{tmp_path / 'x.parquet'}') "
         f"UNION ALL SELECT body AS text, lang, k FROM read_json_auto('{tmp_path / 'y.jsonl'}') ORDER BY k")
    docs, rej = split(read_source("d", recipe(kind="duckdb_sql", query=q, id_field="k")))
    assert [d["text"] for d in docs] == ["alpha text", "beta text", "gamma text"]
    assert json.loads(docs[2]["meta"]) == {"lang": "de", "k": 3} and docs[2]["provenance"] == "query:2"
    assert [(x.reason, x.provenance) for x in rej] == [("missing_text", "query:3")]
    again, _ = split(read_source("d", recipe(kind="duckdb_sql", query=q, id_field="k")))
    assert [d["id"] for d in docs] == [d["id"] for d in again]
    many, _ = split(read_source("d", recipe(kind="duckdb_sql",
                                            query="SELECT 'row ' || i AS text FROM range(5000) t(i)")))
    assert len(many) == 5000 and len({d["id"] for d in many}) == 5000
    for bad in ("SELECT * FROM no_such_table", "SELEKT 1",
                f"SELECT * FROM read_parquet('{tmp_path}/none/*.parquet')",
                "SELECT CAST(i::VARCHAR || 'a' AS INTEGER) AS text FROM range(3000) t(i)"):  # fails while streaming
        with pytest.raises(SourceQueryError) as e:
            list(read_source("d", recipe(kind="duckdb_sql", query=bad)))
        assert "\n" not in str(e.value)


def test_ingest_shards_limit_rejects_and_optional_missing(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(25)) + "\n")
    res = ingest_source("s", recipe(kind="jsonl", location=str(p), shard_documents=10), tmp_path / "o1")
    assert (res.documents, len(res.shards), res.rejects, res.missing) == (25, 3, {}, None)
    assert [s.path.name for s in res.shards] == ["shard-00000-00000.parquet", "shard-00000-00001.parquet",
                                                 "shard-00000-00002.parquet"]  # one series per input file
    assert count_documents([s.path for s in res.shards]) == 25 and res.bytes == sum(len(f"doc {i}") for i in range(25))
    assert [d["text"] for d in iter_documents([s.path for s in res.shards])] == [f"doc {i}" for i in range(25)]
    assert not (tmp_path / "o1/rejects.parquet").exists()
    assert ingest_source("s", recipe(kind="jsonl", location=str(p), limit_documents=7), tmp_path / "o2").documents == 7
    assert ingest_source("s", recipe(kind="jsonl", location=str(p), limit_documents=7), tmp_path / "o3",
                         limit=12).documents == 12
    res = ingest_source("s", recipe(kind="jsonl", location=str(tmp_path / "gone.jsonl"), optional=True),
                        tmp_path / "o4")
    assert res.documents == 0 and res.shards == [] and "not found" in res.missing
    with pytest.raises(SourceMissing):
        ingest_source("s", recipe(kind="jsonl", location=str(tmp_path / "gone.jsonl")), tmp_path / "o5")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"{nope\n" * 1500 + b'{"text": "fine"}\n')
    res = ingest_source("s", recipe(kind="jsonl", location=str(bad)), tmp_path / "o6")
    assert res.rejects == {"invalid_json": 1500} and res.documents == 1
    assert res.reject_examples == {"invalid_json": "bad.jsonl:1: {nope"}
    assert pq.read_table(tmp_path / "o6/rejects.parquet").num_rows == 1000  # a capped sample


def test_ingest_runs_a_task_per_file_with_the_same_result_on_any_engine(tmp_path):
    from minigpt_assets.data.engine import Engine, EngineConfig

    d = tmp_path / "dolma"
    d.mkdir()
    for k in range(4):
        lines = [json.dumps({"id": f"{k}-{i}", "text": f"file {k} doc {i}", "url": f"u{i}"}) for i in range(9)]
        if k == 2:
            lines.insert(3, "{broken")
        (d / f"part-{k}.jsonl").write_text("\n".join(lines) + "\n")
    r = recipe(kind="jsonl", location=str(d), shard_documents=4)
    one = ingest_source("s", r, tmp_path / "one", engine=Engine(EngineConfig(workers=1)))
    two = ingest_source("s", r, tmp_path / "two", engine=Engine(EngineConfig(workers=2)))
    assert [s.path.name for s in one.shards][:4] == ["shard-00000-00000.parquet", "shard-00000-00001.parquet",
                                                     "shard-00000-00002.parquet", "shard-00001-00000.parquet"]
    assert [s.path.read_bytes() for s in one.shards] == [s.path.read_bytes() for s in two.shards]
    assert (one.documents, one.rejects, one.reject_examples) == (36, {"invalid_json": 1},
                                                                 {"invalid_json": "part-2.jsonl:4: {broken"})
    assert (two.documents, two.rejects, two.reject_examples) == (one.documents, one.rejects, one.reject_examples)
    docs = list(iter_documents([s.path for s in one.shards]))
    assert [json.loads(x["meta"])["id"] for x in docs] == [f"{k}-{i}" for k in range(4) for i in range(9)]
    assert json.loads(docs[0]["meta"]) == {"id": "0-0", "url": "u0"}  # other fields kept as metadata


def test_ingest_memory_is_bounded(tmp_path):
    """A ~30 MB (uncompressed) jsonl.gz streams through with a Python heap far below its size."""
    p = tmp_path / "big.jsonl.gz"
    para = "All work and no play makes a model dull. " * 15
    with gzip.open(p, "wt", compresslevel=1) as f:
        for i in range(50_000):
            f.write(json.dumps({"text": f"{i} {para}", "n": i}) + "\n")
    raw = 50_000 * (len(para) + 20)
    small = tmp_path / "warm.jsonl.gz"  # first use of the readers and writer imports and caches things: not counted
    small.write_bytes(gzip.compress(b'{"text": "warm up"}\n'))
    ingest_source("warm", recipe(kind="jsonl", location=str(small)), tmp_path / "w")
    tracemalloc.start()
    res = ingest_source("big", recipe(kind="jsonl", location=str(p), shard_documents=2000), tmp_path / "o")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.documents == 50_000 and len(res.shards) == 25
    assert peak < raw / 3, (peak, raw)
    print(f"peak {peak / 1e6:.1f} MB for {raw / 1e6:.1f} MB of text")
