"""CLI misuse and data loss: output folders checked before any work, whole folders written
under a temporary name and renamed once, temporary files cleaned up, malformed checkpoint
metadata and unreadable paths refused with one ``error:`` line (exit code 2)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from modelzip import atomic
from modelzip.atomic import check_output_folder, staged_folder, write_atomic
from modelzip.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from modelzip.errors import CheckpointError, ConfigError
from modelzip.zoo import build_model

PRUNE = ("--set", "sparsity=0.5", "--finetune-epochs", "0", "--no-progress")


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``modelzip ARGS`` in this process (fast: torch is imported already): exit code,
    stdout, stderr."""
    from modelzip.cli import main

    saved_argv, saved_term = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["modelzip", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
        signal.signal(signal.SIGTERM, saved_term)
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """The one ``error:`` line of a refused command (exit code 2, no traceback)."""
    code, out, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, out, err)
    assert "Traceback" not in out + err
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hardening") / "ck"
    save_checkpoint(build_model("lenet300"), folder, dataset={"name": "mnist-sample"})
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ============================================================================ output folders
def test_prune_onto_its_own_input_is_refused(capsys, ckpt: Path) -> None:
    before = snapshot(ckpt)
    for force in ((), ("--force",)):
        line = user_error(capsys, "prune", ckpt, "-o", ckpt, *PRUNE, *force)
        assert "input" in line
    assert snapshot(ckpt) == before


@pytest.mark.parametrize("command", [
    ("train", "lenet300", "--dataset", "mnist-sample", "--epochs", "1", "--no-progress"),
    ("prune", "CK", *PRUNE),
    ("quantize", "CK", "--set", "bits=4", "--no-progress"),
    ("compress", "CK", "--recipe", "deep-compression", "--no-progress"),
    ("unpack", "MZIP"),
])
def test_an_existing_output_is_refused_before_the_work(capsys, ckpt: Path, tmp_path: Path,
                                                       command: tuple[str, ...]) -> None:
    mzip = tmp_path / "model.mzip"
    code, _, err = cli(capsys, "pack", ckpt, "-o", mzip)
    assert code == 0, err
    args = [ckpt if a == "CK" else mzip if a == "MZIP" else a for a in command]
    a_file = tmp_path / "taken"
    a_file.write_bytes(b"precious")
    assert "is a file" in user_error(capsys, *args, "-o", a_file)
    assert a_file.read_bytes() == b"precious"
    full = tmp_path / "full"
    save_checkpoint(build_model("lenet5"), full)
    before = snapshot(full)
    started = time.monotonic()
    assert "--force" in user_error(capsys, *args, "-o", full)
    assert time.monotonic() - started < 30  # refused up front, not after training
    assert snapshot(full) == before
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "did not write" in user_error(capsys, *args, "-o", foreign, "--force")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_force_replaces_the_whole_folder_stale_artifact_included(capsys, ckpt: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    save_checkpoint(build_model("lenet300"), out)
    (out / "model.mzip").write_bytes(b"an artifact of an earlier run")
    code, _, err = cli(capsys, "prune", ckpt, "-o", out, *PRUNE, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, META_FILE]
    assert load_checkpoint(out).meta["compression"]["source"] == str(ckpt)
    assert no_temporaries(tmp_path)


def test_a_failed_compress_leaves_no_folder_and_no_temporaries(capsys, ckpt: Path,
                                                               tmp_path: Path,
                                                               monkeypatch) -> None:
    import modelzip.checkpoint

    old = tmp_path / "old"
    save_checkpoint(build_model("lenet300"), old)
    before = snapshot(old)

    def crash(*args, **kwargs):
        raise ConfigError("simulated failure after the artifact was written")

    monkeypatch.setattr(modelzip.checkpoint, "write_checkpoint_files", crash)
    out = tmp_path / "out"
    assert "simulated" in user_error(capsys, "quantize", ckpt, "-o", out, "--set", "bits=4",
                                     "--no-progress")
    assert not out.exists()  # not a folder with only model.mzip in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    user_error(capsys, "quantize", ckpt, "-o", old, "--set", "bits=4", "--no-progress",
               "--force")
    assert snapshot(old) == before
    assert no_temporaries(tmp_path)


# ============================================================================ one rename
@pytest.mark.parametrize("fail_at", [WEIGHTS_FILE, META_FILE, "rename"])
def test_a_checkpoint_is_replaced_in_one_step(tmp_path: Path, monkeypatch,
                                              fail_at: str) -> None:
    """Interrupted at any point, the old checkpoint is whole and loads; no temporaries."""
    folder = tmp_path / "ck"
    first = build_model("lenet300")
    save_checkpoint(first, folder)
    before = snapshot(folder)
    real_write, real_replace = atomic.write_atomic, atomic.replace_folder

    def write(path, data):
        if Path(path).name == fail_at:
            raise KeyboardInterrupt  # a kill between the two files
        real_write(path, data)

    def replace(staged, target):
        if fail_at == "rename":
            raise OSError(28, "No space left on device")
        real_replace(staged, target)

    monkeypatch.setattr("modelzip.checkpoint.write_atomic", write)
    monkeypatch.setattr(atomic, "replace_folder", replace)
    with pytest.raises((KeyboardInterrupt, OSError)):
        save_checkpoint(build_model("lenet300"), folder)
    assert snapshot(folder) == before
    assert load_checkpoint(folder).model.fc1.weight.equal(first.fc1.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_replacing_a_folder_swaps_it_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_folder(target) as staged:
        (staged / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_leftover_temporaries_are_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / ".model.mzip.abc123.tmp"
    fresh = tmp_path / ".model.mzip.def456.tmp"
    stale_dir = tmp_path / ".model.mzip.ghi789.tmp"
    for p in (stale, fresh):
        p.write_bytes(b"half")
    stale_dir.mkdir()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(stale_dir, (old, old))
    write_atomic(tmp_path / "model.mzip", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "model.mzip"]


def test_check_output_folder_alone(tmp_path: Path) -> None:
    check_output_folder(tmp_path / "new")
    check_output_folder(tmp_path)  # empty
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"is a file|not a folder"):
        check_output_folder(tmp_path / "f" / "sub")
    with pytest.raises(ConfigError, match="input"):
        check_output_folder(tmp_path, inputs=[tmp_path / "f"])


# ============================================================================ bad input
@pytest.mark.parametrize("field, value, needle", [
    ("model", "lenet300", "'model'"),
    ("training", {"lr": "fast"}, "training.lr"),
    ("training", [], "'training'"),
    ("dataset", {"name": 5}, "dataset.name"),
    ("metrics", [1], "'metrics'"),
    ("weights_file", "../../elsewhere.safetensors", "weights_file"),
    ("weights_sha256", 7, "weights_sha256"),
])
def test_malformed_checkpoint_fields_are_one_error_line(capsys, tmp_path: Path, field: str,
                                                        value, needle: str) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(build_model("lenet300"), folder, dataset={"name": "mnist-sample"})
    meta = json.loads((folder / META_FILE).read_text())
    meta[field] = value
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(folder)
    for args in (("eval", folder), ("prune", folder, "-o", tmp_path / "p", *PRUNE),
                 ("pack", folder, "-o", tmp_path / "m.mzip")):
        assert needle in user_error(capsys, *args)
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.mzip").exists()


def test_unreadable_and_impossible_paths(capsys, ckpt: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    user_error(capsys, "eval", a_file / "ck")
    user_error(capsys, "pack", ckpt, "-o", a_file / "sub" / "m.mzip")
    user_error(capsys, "unpack", a_file / "x.mzip", "-o", tmp_path / "u")
    if os.geteuid() != 0:  # root reads and writes whatever the mode says
        locked = tmp_path / "locked"
        save_checkpoint(build_model("lenet300"), locked)
        os.chmod(locked / META_FILE, 0)
        try:
            assert "cannot read" in user_error(capsys, "eval", locked)
        finally:
            os.chmod(locked / META_FILE, 0o644)
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        try:
            assert "cannot write" in user_error(capsys, "prune", ckpt, "-o", ro / "out", *PRUNE)
        finally:
            os.chmod(ro, 0o700)


def test_recipe_problems_are_refused_before_anything_runs(capsys, ckpt: Path,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "recipe.yaml"
    folder.mkdir()
    out = tmp_path / "out"
    assert "is a folder" in user_error(capsys, "compress", ckpt, "--recipe", folder, "-o", out)
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - magnitude: {sparsity: 0.5}\n"
                   "  - kmeans: {bits: 4, finetune: {epochs: -1}}\n")
    line = user_error(capsys, "compress", ckpt, "--recipe", bad, "-o", out)
    assert "step 2" in line and "epochs" in line
    assert not out.exists()
