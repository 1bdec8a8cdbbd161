"""The runner's flight protections: names and shapes taken from the stored graph (a forged
manifest is refused), the weight scrub (damage found, reloaded from the file, FEC-corrected,
or a clean stop), and activation range clipping recorded at pack time."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
import torch

from modelzip.codec.artifact import protect_artifact, read_artifact, write_artifact
from modelzip.errors import ConfigError, ModelzipError
from modelzip.flight.ranger import activation_ranges, clip_activations
from modelzip.flight.seu import flip_bits
from modelzip.runtime import runner as runner_mod
from modelzip.runtime.export import export_onnx
from modelzip.runtime.onnx_artifact import (
    graph_spec_of,
    load_onnx_package,
    pack_model_onnx,
    pack_onnx,
    split_initializers,
)
from modelzip.runtime.ort import make_session
from modelzip.runtime.runner import Runner, ScrubError

CLASSES = ["a", "b", "c"]


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    torch.set_num_threads(1)
    return export_onnx(_tiny(), example_inputs=torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def blob(onnx_bytes: bytes) -> bytes:
    return pack_onnx(onnx_bytes, meta={"mean": [0.5], "std": [0.25], "classes": CLASSES})


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = runner_mod.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ============================================================================ names from the graph
def test_the_graph_spec_is_read_from_the_graph_bytes(onnx_bytes: bytes) -> None:
    stripped, _, spec = split_initializers(onnx_bytes)
    assert graph_spec_of(stripped) == spec
    assert graph_spec_of(onnx_bytes) == spec


def _forge_record(blob: bytes, edit) -> bytes:
    """The file with its model record edited and every checksum recomputed."""
    art = read_artifact(blob)
    model = dict(art.model)
    edit(model)
    return write_artifact(dict(art.tensors), model=model, blobs=dict(art.blobs), meta=art.meta)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(input_name="pixels"),
    lambda m: m.update(input_shape=[3, 8, 8]),
    lambda m: m.update(input_shape=[1, 8, "8"]),
    lambda m: m.update(input_dtype="int64"),
    lambda m: m.update(batch=4),
    lambda m: m.update(output_name="probabilities"),
    lambda m: m.update(num_outputs=10),
    lambda m: m.update(precision="int8"),
    lambda m: m.update(inputs=[{"name": "x", "shape": [1, 8, 8], "dtype": "float32"}]),
    lambda m: m.update(inputs="everything"),
    lambda m: m.update(outputs=["a", "b"]),
    lambda m: m.update(graph_blob=["onnx_graph"]),
    lambda m: m.update(initializers="all"),
])
def test_a_forged_model_record_is_refused_at_load(capsys, blob, tmp_path, edit) -> None:
    forged = tmp_path / "forged.mzip"
    forged.write_bytes(_forge_record(blob, edit))
    with pytest.raises(ModelzipError):
        Runner.from_file(forged)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.uint8))
    code, _, err = run_main(capsys, forged, "--input", tmp_path / "x.npy")
    one_error_line(code, err)


def test_a_record_that_disagrees_names_both_values(blob) -> None:
    forged = _forge_record(blob, lambda m: m.update(input_name="pixels"))
    with pytest.raises(ModelzipError, match=r"manifest says input_name is 'pixels' but the "
                                            r"stored graph has"):
        Runner.from_bytes(forged)


def test_a_damaged_or_forged_graph_is_refused_cleanly(blob) -> None:
    """Seeded byte edits of the stored graph, checksums recomputed: every case loads (with
    the graph's own names) or is refused with ModelzipError, never another exception."""
    art = read_artifact(blob)
    graph = art.blobs["onnx_graph"]
    rng = np.random.default_rng(3)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(150):
        edited = bytearray(graph)
        for pos in rng.integers(0, len(edited), rng.integers(1, 4)):
            edited[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            edited = edited[:int(rng.integers(0, len(edited)))]
        forged = write_artifact(dict(art.tensors), model=art.model,
                                blobs={"onnx_graph": bytes(edited)}, meta=art.meta)
        try:
            runner = Runner.from_bytes(forged)
        except ModelzipError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert runner.spec == load_onnx_package(art).spec
    assert outcomes["refused"] > 0


# ============================================================================ scrub
def test_a_scrub_finds_flipped_weights_and_reloads_them(blob, tmp_path, images) -> None:
    path = tmp_path / "model.mzip"
    path.write_bytes(blob)
    runner = Runner.from_file(path)
    clean = runner.logits(images)
    assert runner.scrub().clean
    name, held = next(iter(runner.package.initializers.items()))
    held.view(np.uint32).ravel()[0] ^= 1 << 30  # an exponent bit, in the runner's memory
    old_backend = runner.backend
    report = runner.scrub()
    assert report.damaged == (name,) and report.reloaded
    assert runner.backend is not old_backend  # rebuilt from the checked arrays
    assert np.array_equal(runner.logits(images), clean)
    assert runner.scrubs == [report]


def test_flips_in_held_arrays_reach_inference_only_through_a_rebuild(blob, images) -> None:
    """onnxruntime copies the weights it is given (why every scrub rebuilds the session):
    a flip in the runner's array changes nothing until a session is built on it."""
    runner = Runner.from_bytes(blob)
    clean = runner.logits(images)
    package = runner.package
    for array in package.initializers.values():
        array.view(np.uint8).ravel()[3::4] ^= 0x40  # exponent bits of every float
    assert np.array_equal(runner.logits(images), clean)
    rebuilt = Runner(package)
    with np.errstate(all="ignore"):
        assert not np.array_equal(rebuilt.logits(images), clean)


def test_the_scrub_runs_every_n_inferences(blob, images) -> None:
    runner = Runner.from_bytes(blob, scrub_every=3)
    clean = runner.logits(images[:4])
    next(iter(runner.package.initializers.values())).view(np.uint8).ravel()[0] ^= 1
    runner.logits(images[:4])  # inference 2: no scrub yet
    assert runner.scrubs == []
    out = runner.logits(images[:4])  # inference 3: scrubbed first
    assert len(runner.scrubs) == 1 and runner.scrubs[0].inferences == 3
    assert np.array_equal(out, clean)
    with pytest.raises(ConfigError, match="scrub_every"):
        Runner.from_bytes(blob, scrub_every=-1)


def test_the_scrub_reloads_through_fec(blob, tmp_path, images) -> None:
    path = tmp_path / "model.mzip"
    path.write_bytes(protect_artifact(blob, fec="8%"))
    runner = Runner.from_file(path)
    clean = runner.logits(images)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF  # the stored file is hit too: the parity corrects it
    path.write_bytes(bytes(damaged))
    next(iter(runner.package.initializers.values())).view(np.uint8).ravel()[0] ^= 1
    report = runner.scrub()
    assert report.reloaded and report.fec is not None and report.fec.corrected_bytes >= 1
    assert np.array_equal(runner.logits(images), clean)


def test_the_runner_stops_when_the_file_cannot_repair_the_damage(blob, tmp_path,
                                                                  images) -> None:
    path = tmp_path / "model.mzip"
    path.write_bytes(blob)
    runner = Runner.from_file(path)
    path.write_bytes(flip_bits(blob, 1e-2, np.random.default_rng(0)).tobytes())
    assert runner.scrub().clean  # the file is read only when the weights are damaged
    next(iter(runner.package.initializers.values())).view(np.uint8).ravel()[0] ^= 1
    with pytest.raises(ScrubError, match="cannot repair them"):
        runner.scrub()
    with pytest.raises(ScrubError, match="stopped rather than run wrong weights"):
        runner.logits(images)  # and every later call
    bare = Runner(load_onnx_package(read_artifact(blob)))
    next(iter(bare.package.initializers.values())).view(np.uint8).ravel()[0] ^= 1
    with pytest.raises(ScrubError, match="no file"):
        bare.scrub()


def test_run_scrub_option(capsys, blob, tmp_path) -> None:
    path = tmp_path / "model.mzip"
    path.write_bytes(blob)
    np.save(tmp_path / "x.npy", np.zeros((5, 1, 8, 8), np.uint8))
    code, out, err = run_main(capsys, path, "--input", tmp_path / "x.npy", "--scrub", "1",
                              "--batch-size", "2")
    assert code == 0, err
    assert len(out.splitlines()) == 5
    code, _, err = run_main(capsys, path, "--input", tmp_path / "x.npy", "--scrub", "-1")
    assert "--scrub" in one_error_line(code, err)


# ============================================================================ clipping
def test_clipping_bounds_every_activation_and_keeps_clean_outputs(onnx_bytes, images) -> None:
    ranges = activation_ranges(onnx_bytes, images)
    clipped, bounds = clip_activations(onnx_bytes, images)
    assert len(bounds) == 2 and set(bounds) == set(ranges)
    assert all(lo == 0.0 and hi == ranges[name][1] for name, (lo, hi) in bounds.items())
    ops = [n.op_type for n in onnx.load_model_from_string(clipped).graph.node]
    assert "Relu" not in ops and ops.count("Clip") == 2
    name = make_session(onnx_bytes).get_inputs()[0].name
    plain = make_session(onnx_bytes).run(None, {name: images})[0]
    bounded = make_session(clipped).run(None, {name: images})[0]
    assert np.array_equal(plain, bounded)  # the bounds are the calibration set's own extremes


def test_clipping_stops_a_flipped_exponent_from_spreading(images) -> None:
    model = _tiny()
    blob = pack_model_onnx(model, int8=False, calibration=images, clip_activations=True)
    plain_blob = pack_model_onnx(model, int8=False, calibration=images)
    meta = read_artifact(blob).meta["activation_clip"]
    assert len(meta) == 2
    outputs = []
    for data in (plain_blob, blob):
        package = load_onnx_package(read_artifact(data))
        arrays = {k: v.copy() for k, v in package.initializers.items()}
        weight = next(v for v in arrays.values() if v.ndim == 4)
        weight.view(np.uint32).ravel()[0] ^= 1 << 30  # a conv weight becomes ~1e38
        package = load_onnx_package(read_artifact(data))
        package.initializers.update(arrays)
        with np.errstate(all="ignore"):
            outputs.append(Runner(package).logits(images))
    unprotected, clipped = outputs
    assert not np.isfinite(unprotected).all() or np.abs(unprotected).max() > 1e30
    assert np.isfinite(clipped).all() and np.abs(clipped).max() < 1e4


def test_clipping_needs_calibration_and_a_checkpoint(capsys, onnx_bytes, tmp_path) -> None:
    with pytest.raises(ConfigError, match="activation clipping needs calibration"):
        pack_model_onnx(_tiny(), int8=False, clip_activations=True)
    from tests.test_cli_hardening import user_error

    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx_bytes)
    line = user_error(capsys, "pack-onnx", path, "-o", tmp_path / "t.mzip",
                      "--clip-activations")
    assert "--clip-activations" in line


# ============================================================================ input files
def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_npy_headers_that_would_make_numpy_allocate_are_refused(tmp_path) -> None:
    import struct
    import tracemalloc

    data = bytearray(_npy(np.zeros((2, 1, 8, 8), np.uint8)))
    v2 = bytes(data[:6]) + b"\x02\x00" + struct.pack("<I", 0x7FFFFFF0) + bytes(data[10:40])
    damaged = {"header length past the file": v2,
               "version 1.182": bytes(data[:7]) + b"\xb6" + bytes(data[8:]),
               "mangled header": bytes(data[:10]) + b"{'descr': '|u1', (" + bytes(30)}
    for what, content in damaged.items():
        path = tmp_path / "x.npy"
        path.write_bytes(content)
        tracemalloc.start()
        try:
            with pytest.raises(ModelzipError):
                runner_mod.load_images(path)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 16 << 20, what


def test_npz_archives_with_damaged_or_forged_members_are_refused(tmp_path) -> None:
    import io
    import zipfile

    path = tmp_path / "x.npz"
    np.savez(path, ids=np.zeros((2, 8), np.int64), mask=np.ones((2, 8), np.float32))
    good = path.read_bytes()
    assert set(runner_mod.load_inputs(path, ["ids", "mask"])) == {"ids", "mask"}
    rng = np.random.default_rng(0)
    for _ in range(60):  # seeded damage: always a clean refusal or the arrays
        b = bytearray(good)
        for pos in rng.integers(0, len(b), 4):
            b[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(b))
        with contextlib.suppress(ModelzipError):
            runner_mod.load_inputs(path, ["ids", "mask"])
    for flag_at in (i + 8 for i in range(len(good)) if good[i:i + 4] == b"PK\x01\x02"):
        encrypted = bytearray(good)  # members flagged encrypted: zipfile's RuntimeError
        encrypted[flag_at] |= 1
        path.write_bytes(bytes(encrypted))
        with pytest.raises(ModelzipError, match="not a readable"):
            runner_mod.load_inputs(path, ["ids", "mask"])
    # a member whose header declares 5 GB: refused before numpy allocates it
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("ids.npy", _bomb_header())
        archive.writestr("mask.npy", _npy(np.ones((2, 8), np.float32)))
    path.write_bytes(buf.getvalue())
    with pytest.raises(ModelzipError, match="header declares"):
        runner_mod.load_inputs(path, ["ids", "mask"])


def _bomb_header() -> bytes:
    """A .npy member whose header declares 5 GB of int64 and holds 16 bytes."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False,
                                               "shape": (625_000_000, 1)})
    return buf.getvalue() + bytes(16)


def test_one_channel_uint8_images_are_taken_channels_last_too(blob, images) -> None:
    runner = Runner.from_bytes(blob)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 1, 8, 8)).astype(np.uint8)
    expected = runner.logits(pixels)
    assert np.array_equal(runner.logits(pixels.transpose(0, 2, 3, 1)), expected)
    assert np.array_equal(runner.logits(pixels[:, 0]), expected)
