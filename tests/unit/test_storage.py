"""Storage layout: content-addressed stage folders, atomic publication, remote (fsspec) roots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage import SUCCESS_MARKER, StorageLayout


def test_local_paths_and_mlflow_defaults(tmp_path):
    layout = StorageLayout(str(tmp_path), "demo")
    assert layout.stage_dir("pretokenize", "abc") == f"{tmp_path}/demo/stages/pretokenize/abc"
    assert layout.mlflow_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert layout.mlflow_artifact_root().startswith("file://")


def test_building_publishes_only_on_success(tmp_path):
    layout = StorageLayout(str(tmp_path), "demo")
    final = layout.stage_dir("validate", "k1")
    with pytest.raises(RuntimeError):
        with layout.building("validate", "k1") as out:
            (out / "data.txt").write_text("half")
            raise RuntimeError("crash mid-stage")
    assert not layout.is_complete(final) and not Path(final).exists()
    assert not list((tmp_path / "demo" / "stages" / "validate").glob("*.partial-*"))
    with layout.building("validate", "k1") as out:
        (out / "data.txt").write_text("whole")
    assert layout.is_complete(final) and (Path(final) / "data.txt").read_text() == "whole"


def test_stale_incomplete_folder_is_replaced(tmp_path):
    layout = StorageLayout(str(tmp_path), "demo")
    Path(layout.stage_dir("s", "k")).mkdir(parents=True)
    (Path(layout.stage_dir("s", "k")) / "junk").write_text("x")
    with layout.building("s", "k") as out:
        (out / "good").write_text("y")
    assert sorted(p.name for p in Path(layout.stage_dir("s", "k")).iterdir()) == [SUCCESS_MARKER, "good"]


def test_remote_root_via_fsspec_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENCHAT_SCRATCH", str(tmp_path / "scratch"))
    layout = StorageLayout("memory://bucket/root", "demo")
    with layout.building("weights", "k2") as out:
        (out / "sub").mkdir()
        (out / "sub" / "file.json").write_text(json.dumps({"a": 1}))
    final = layout.stage_dir("weights", "k2")
    assert layout.is_complete(final)
    local = layout.local_copy(final)
    assert json.loads((local / "sub" / "file.json").read_text()) == {"a": 1}
    layout.write_json(layout.run_dir("r1") + "/manifest.json", {"x": 2})
    assert layout.read_json(layout.run_dir("r1") + "/manifest.json") == {"x": 2}
    with pytest.raises(ValueError, match="tracking.uri"):
        layout.mlflow_tracking_uri()


@pytest.mark.parametrize("bad", ["", "../up", "has space", "/abs"])
def test_names_are_checked(tmp_path, bad):
    with pytest.raises(ValueError, match="letters, digits"):
        StorageLayout(str(tmp_path), "demo").stage_dir("validate", bad)
