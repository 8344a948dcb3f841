"""Interrupted saves leave the previous version intact and no temporary files behind."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from plans import make_plan
from tiny_models import tiny_text_model

import steerpeft.io
import steerpeft.plan
from steerpeft import Plan
from steerpeft.io import atomic_folder, atomic_write_text


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama")


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent) -> list[str]:
    """Hidden temporary or backup entries an atomic write may leave beside its target."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def boom(*args, **kwargs):
    raise OSError("disk full")


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# Plan.save looks the writers up in steerpeft.plan (imported from steerpeft.io): patch both names.
@pytest.mark.parametrize("writer", ["write_json", "write_tensors"])
@pytest.mark.parametrize("failure", [boom, interrupt], ids=["error", "ctrl-c"])
def test_interrupted_plan_save_keeps_the_previous_version(llama, tmp_path, monkeypatch, writer, failure):
    model, _ = llama
    target = tmp_path / "plan"
    make_plan(model, seed=1).save(target)
    before = snapshot(target)
    monkeypatch.setattr(steerpeft.io, writer, failure)
    monkeypatch.setattr(steerpeft.plan, writer, failure)
    with pytest.raises((OSError, KeyboardInterrupt)):
        make_plan(model, seed=2).save(target)
    assert snapshot(target) == before
    assert leftovers(tmp_path) == []
    assert torch.equal(
        Plan.load(target).steps[0].directions[1], make_plan(model, seed=1).steps[0].directions[1]
    )


def test_interrupted_first_save_leaves_nothing(llama, tmp_path, monkeypatch):
    model, _ = llama
    monkeypatch.setattr(steerpeft.plan, "write_json", boom)
    with pytest.raises(OSError):
        make_plan(model).save(tmp_path / "plan")
    assert list(tmp_path.iterdir()) == []


def test_failed_final_rename_restores_the_previous_version(llama, tmp_path, monkeypatch):
    model, _ = llama
    target = tmp_path / "plan"
    make_plan(model, seed=1).save(target)
    before = snapshot(target)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the staging folder's rename into place
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(steerpeft.io.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        make_plan(model, seed=2).save(target)
    monkeypatch.undo()
    assert snapshot(target) == before
    assert leftovers(tmp_path) == []


def test_successful_save_replaces_and_cleans_up(llama, tmp_path):
    model, _ = llama
    target = tmp_path / "plan"
    make_plan(model, seed=1).save(target)
    make_plan(model, seed=2).save(target)
    assert torch.equal(
        Plan.load(target).steps[0].directions[1], make_plan(model, seed=2).steps[0].directions[1]
    )
    assert leftovers(tmp_path) == [] and sorted(snapshot(target)) == ["plan.json", "plan.safetensors"]


def test_error_inside_atomic_folder_removes_the_staging_folder(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_atomic_write_text_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    atomic_write_text(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "new text then a lone surrogate \ud800")  # fails inside the write
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []
    monkeypatch.setattr(steerpeft.io.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and leftovers(tmp_path) == []


def test_saved_files_follow_the_umask_not_the_private_temp_mode(llama, tmp_path):
    model, _ = llama
    previous = os.umask(0o022)
    try:
        folder = make_plan(model).save(tmp_path / "plan")
        atomic_write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
