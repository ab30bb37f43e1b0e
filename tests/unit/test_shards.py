"""The sharded-output contract: the manifest decides which shards exist and their order; gaps fail closed."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openchat_core.data.shards import MANIFEST, ShardsError, read_manifest, shard_name, shard_paths, write_manifest


def _write(folder, index, values):
    pq.write_table(pa.table({"x": values}), folder / shard_name(index))
    return shard_name(index), len(values)


def test_shards_are_read_in_manifest_order_and_strays_ignored(tmp_path):
    shards = [_write(tmp_path, 1, [3, 4]), _write(tmp_path, 0, [1, 2])]  # manifest order, not name order
    (tmp_path / "stray.parquet").write_bytes(b"junk")
    write_manifest(tmp_path, shards, {"metadata_json": "{}"})
    assert [p.name for p in shard_paths(tmp_path)] == ["part-00001.parquet", "part-00000.parquet"]
    assert read_manifest(tmp_path).rows == 4
    assert read_manifest(tmp_path).metadata == {"metadata_json": "{}"}


def test_a_single_file_is_its_own_shard(tmp_path):
    path = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    assert shard_paths(path) == [path]
    with pytest.raises(FileNotFoundError):
        shard_paths(tmp_path / "absent.parquet")


def test_missing_manifest_or_shard_fails_closed(tmp_path):
    name, rows = _write(tmp_path, 0, [1])
    with pytest.raises(ShardsError, match=MANIFEST):
        shard_paths(tmp_path)
    with pytest.raises(ShardsError, match="was not written"):
        write_manifest(tmp_path, [(name, rows), (shard_name(1), 1)])
    write_manifest(tmp_path, [(name, rows)])
    (tmp_path / name).unlink()
    with pytest.raises(ShardsError, match="missing"):
        shard_paths(tmp_path)


def test_manifest_from_elsewhere_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other", "shards": []}))
    with pytest.raises(ShardsError, match="format"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "openchat-shards/1", "shards": [{"path": "../x", "rows": 1}]}))
    with pytest.raises(ShardsError, match="plain file name"):
        read_manifest(tmp_path)
