import pytest

from lmforge.manifest import (
    build_manifest,
    write_manifest,
    ManifestError,
    read_manifest,
    sha256_file,
    stage_output,
    verify_outputs,
)


def test_stage_output_writes_manifest_with_inputs_outputs_and_counts(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("hello")
    out = tmp_path / "stage"

    with stage_output(out, "demo", params={"k": 1}, inputs=[source]) as stage:
        (stage.path / "sub").mkdir()
        (stage.path / "sub" / "data.bin").write_bytes(b"abc")
        stage.counts["rows"] = 3

    manifest = read_manifest(out)
    assert manifest["stage"] == "demo"
    assert manifest["params"] == {"k": 1}
    assert manifest["counts"] == {"rows": 3}
    assert manifest["inputs"][0]["sha256"] == sha256_file(source)
    assert manifest["outputs"] == [
        {"path": "sub/data.bin", "bytes": 3, "sha256": sha256_file(out / "sub" / "data.bin")}
    ]
    assert manifest["started_at"] <= manifest["finished_at"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_stage_leaves_previous_output_untouched(tmp_path):
    out = tmp_path / "stage"
    with stage_output(out, "demo", params={}) as stage:
        (stage.path / "v1.txt").write_text("one")

    with pytest.raises(RuntimeError):
        with stage_output(out, "demo", params={}) as stage:
            (stage.path / "v2.txt").write_text("two")
            raise RuntimeError("crash mid-stage")

    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "v1.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_stage_directory_as_input_is_identified_by_its_manifest_digest(tmp_path):
    upstream = tmp_path / "up"
    with stage_output(upstream, "up", params={}) as stage:
        (stage.path / "x").write_text("x")
    with stage_output(tmp_path / "down", "down", params={}, inputs=[upstream]) as stage:
        pass
    (described,) = read_manifest(tmp_path / "down")["inputs"]
    assert described["stage"] == "up"
    assert described["manifest_sha256"] == sha256_file(upstream / "manifest.json")


def test_verify_outputs_names_the_corrupt_file(tmp_path):
    out = tmp_path / "stage"
    with stage_output(out, "demo", params={}) as stage:
        (stage.path / "shard.arrow").write_bytes(b"\x00" * 16)
    verify_outputs(out)
    (out / "shard.arrow").write_bytes(b"\x01" * 16)
    with pytest.raises(ManifestError, match="shard.arrow"):
        verify_outputs(out)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(tmp_path)


def test_in_place_stage_lists_only_the_named_files(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-1.bin").write_bytes(b"1")
    (tmp_path / "model.bin").write_bytes(b"weights")
    manifest = build_manifest(
        tmp_path, "train", params={}, inputs=[], counts={"steps": 1}, files=[tmp_path / "model.bin"]
    )
    write_manifest(tmp_path, manifest)
    assert [o["path"] for o in read_manifest(tmp_path)["outputs"]] == ["model.bin"]
    verify_outputs(tmp_path)


def test_an_input_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    from lmforge import manifest

    calls = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda path: calls.append(path) or real(path))
    manifest._input_sha256.cache_clear()
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(b"first")
    assert manifest.input_sha256(path) == manifest.input_sha256(str(path)) == real(path)
    assert len(calls) == 1
    path.write_bytes(b"second, longer")  # another size and mtime: hashed again
    assert manifest.input_sha256(path) == real(path)
    assert len(calls) == 2
