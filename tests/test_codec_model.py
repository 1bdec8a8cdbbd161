"""pack / unpack of zoo models: every state tensor back bit for bit (trained, structurally
pruned, magnitude-pruned and weight-shared models), determinism, files, models that do not
rebuild, and the pack / unpack / inspect commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import modelzip
from modelzip.checkpoint import load_checkpoint
from modelzip.codec import describe_artifact, read_artifact, write_artifact
from modelzip.codec.container import read_container, write_container
from modelzip.codec.model import pack, pack_file, unpack, unpack_file
from modelzip.errors import ArtifactError
from modelzip.prune.masks import prunable_weights
from modelzip.zoo import build_model
from tests.test_cli import assert_ok, assert_user_error, run_cli

CHECKPOINTS = Path(__file__).resolve().parents[1] / "bench" / "checkpoints"


def weight_shared(model: nn.Module, levels: int = 32) -> nn.Module:
    """Simulated k-means weight sharing: every non-zero weight snapped to the nearest of
    ``levels`` values spread over the layer's range; pruned weights stay exactly zero."""
    with torch.no_grad():
        for w in prunable_weights(model).values():
            nz = w[w != 0]
            centroids = torch.linspace(float(nz.min()), float(nz.max()), levels)
            nearest = centroids[(w.unsqueeze(-1) - centroids).abs().argmin(-1)]
            w.copy_(torch.where(w != 0, nearest, torch.zeros_like(w)))
    return model


@pytest.fixture(scope="module")
def shared_lenet300() -> nn.Module:
    return weight_shared(load_checkpoint(CHECKPOINTS / "pruned" / "magnitude-lenet300-12x").model)


MODELS = ["lenet300", "lenet5", "eurosat_cnn", "pruned/eurosat_cnn-l1", "shared-lenet300"]


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest, shared_lenet300: nn.Module) -> nn.Module:
    if request.param == "shared-lenet300":
        return shared_lenet300
    return load_checkpoint(CHECKPOINTS / request.param).model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name
        # bit patterns too: torch.equal sees -0.0 == 0.0
        assert sa[name].numpy().tobytes() == sb[name].numpy().tobytes(), name


# ---------------------------------------------------------------------------- round trips
def test_unpack_is_bit_exact(model: nn.Module) -> None:
    restored = unpack(pack(model))
    assert_same_state(model, restored)
    assert not restored.training
    assert type(restored) is type(model)
    spec = model.modelzip_spec
    x = torch.randn(2, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_pack_is_deterministic_and_idempotent(model: nn.Module) -> None:
    data = pack(model)
    assert pack(model) == data
    assert pack(unpack(data)) == data


def test_batchnorm_buffers_are_stored(model: nn.Module) -> None:
    names = {r["name"]: r for r in describe_artifact(pack(model))}
    assert set(names) == set(model.state_dict())
    for name, row in names.items():
        if name.endswith("num_batches_tracked"):
            assert row["dtype"] == "int64" and row["shape"] == []


def test_structurally_pruned_model_records_only_changed_layers() -> None:
    pruned = load_checkpoint(CHECKPOINTS / "pruned" / "eurosat_cnn-l1").model
    record = read_artifact(pack(pruned)).model
    assert record["name"] == "eurosat_cnn"
    assert record["structure"]["features.0.0"]["attrs"] == {"out_channels": [16, 8]}
    assert record["structure"]["features.0.0"]["tensors"] == {"weight": [[16, 3, 3, 3],
                                                                        [8, 3, 3, 3]]}
    assert record["parameters"] == sum(p.numel() for p in pruned.parameters())
    full = load_checkpoint(CHECKPOINTS / "eurosat_cnn").model
    assert read_artifact(pack(full)).model["structure"] == {}


def test_weight_shared_model_is_small(shared_lenet300: nn.Module) -> None:
    data = pack(shared_lenet300)
    dense = 4 * sum(p.numel() for p in shared_lenet300.parameters())
    rows = {r["name"]: r for r in describe_artifact(data)}
    assert rows["fc1.weight"]["layout"] != "dense"
    assert rows["fc1.weight"]["codebook_bits"] <= 33 * 32  # 32 shared values (+ zero)
    assert rows["fc1.weight"]["bits_per_nonzero"] < 10  # index + value, vs 32 for fp32
    assert len(data) < dense / 25


@pytest.mark.parametrize("coder", ["huffman", "rans", "raw"])
def test_each_coder_round_trips_and_best_is_smallest(shared_lenet300: nn.Module,
                                                     coder: str) -> None:
    data = pack(shared_lenet300, coder=coder)
    assert_same_state(shared_lenet300, unpack(data))
    assert len(pack(shared_lenet300)) <= len(data)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_keep_their_dtype(dtype: torch.dtype) -> None:
    model = build_model("lenet5").to(dtype)
    restored = unpack(pack(model))
    assert next(restored.parameters()).dtype == dtype
    sa, sb = model.state_dict(), restored.state_dict()
    assert all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)


def test_meta_and_top_level_exports() -> None:
    model = build_model("lenet300")
    data = modelzip.pack(model, meta={"dataset": {"name": "mnist", "mean": [0.1307]}})
    assert read_artifact(data).meta["dataset"]["mean"] == [0.1307]
    assert_same_state(model, modelzip.unpack(data))


def test_files(tmp_path: Path) -> None:
    model = build_model("lenet300")
    path = pack_file(model, tmp_path / "out" / "m.mzip")
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.mzip"]  # no temp file left
    assert_same_state(model, unpack_file(path))
    with pytest.raises(ArtifactError, match=r"nope\.mzip: file not found"):
        unpack_file(tmp_path / "nope.mzip")


# ---------------------------------------------------------------------------- no rebuild
def with_record(data: bytes, **changes) -> bytes:
    """The artifact with its model record changed (checksums recomputed)."""
    layout = read_container(data)
    manifest = {k: v for k, v in layout.manifest.items() if k != "chunks"}
    manifest["model"] = {**manifest["model"], **changes}
    chunks = [(name, bytes(layout.chunks[name])) for name, _, _ in layout.manifest["chunks"]]
    return write_container(manifest, chunks)


@pytest.fixture(scope="module")
def lenet5_data() -> bytes:
    return pack(build_model("lenet5"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"zoo": "resnet999"}, "unknown model 'resnet999'"),
    ({"zoo": 5}, "does not describe a zoo model"),
    ({"kwargs": {"num_classes": 5}},
     "tensor 'fc2.weight' is (5, 500) in the model and (10, 500) in this artifact"),
    ({"kwargs": {"depth": 3}}, "does not rebuild"),
    ({"structure": {"conv9": {"attrs": {"out_channels": [20, 3]}}}},
     "at layer 'conv9': no such module"),
    ({"structure": {"conv1": {"attrs": {"out_channels": [20, 10]},
                              "tensors": {"weight": [[20, 1, 5, 5], [10, 1, 5, 5]]}}}},
     "gives conv1.weight the shape [10, 1, 5, 5], but the stored tensor is (20, 1, 5, 5)"),
    ({"structure": {"conv1": {"attrs": {"in_channels": [3, 2]}}}},
     "in_channels is 1 here but 3 in the model it was packed from"),
    ({"structure": {"conv1": {"replace": {"type": "os.system"}}}},
     "only torch.nn and modelzip layers are rebuilt"),
    ({"structure": {"fc1": {"tensors": {"weight": [[500, 800], [10**7, 10**7]]}}}},
     "gives fc1.weight the shape"),  # refused before anything is allocated
    ({"structure": ["conv1"]}, "must be a mapping"),
    ({"kind": "onnx-graph"}, "carries an ONNX graph"),
    ({"layer_changes": {"conv1": {"out_channels": 10}}, "structure": {}, "zoo": "nope"},
     "unknown model 'nope'"),
])
def test_records_that_do_not_rebuild(lenet5_data: bytes, changes: dict, message: str) -> None:
    with pytest.raises(ArtifactError, match=re.escape(message)):
        unpack(with_record(lenet5_data, **changes))


@pytest.mark.parametrize(("changes", "message"), [
    ({"layer_changes": {"conv9": {"out_channels": 3}}}, "layer 'conv9' does not exist"),
    ({"layer_changes": {"conv1": {"out_channels": 10}}}, "does not match"),
    ({"layer_changes": ["conv1"]}, "does not describe a zoo model"),
])
def test_legacy_records_are_checked(lenet5_data: bytes, changes: dict, message: str) -> None:
    record = {k: v for k, v in read_artifact(lenet5_data).model.items()
              if k not in ("structure", "zoo")}
    data = with_record(lenet5_data, **record, **changes)
    layout = read_container(data)
    manifest = {k: v for k, v in layout.manifest.items() if k != "chunks"}
    manifest["model"] = {k: v for k, v in manifest["model"].items()
                         if k not in ("structure", "zoo")}
    chunks = [(name, bytes(layout.chunks[name])) for name, _, _ in layout.manifest["chunks"]]
    with pytest.raises(ArtifactError, match=re.escape(message)):
        unpack(write_container(manifest, chunks))


def test_giant_model_arguments_fail_without_allocating() -> None:
    data = pack(build_model("eurosat_cnn"))
    with pytest.raises(ArtifactError, match="does not match"):
        unpack(with_record(data, kwargs={"width": 10**5}))  # 10**11 weights if built


def test_artifact_without_a_model_record() -> None:
    data = write_artifact({"fc1.weight": np.zeros((300, 784), dtype=np.float32)})
    with pytest.raises(ArtifactError, match="holds no model record"):
        unpack(data)


def test_any_model_packs_and_unpacks_onto_a_skeleton() -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Embedding(20, 6), nn.Flatten(), nn.Linear(18, 4))

    model = build().eval()
    data = pack(model)
    with pytest.raises(ArtifactError, match="pass model= a freshly built copy"):
        unpack(data)
    restored = unpack(data, model=build())
    tokens = torch.tensor([[1, 2, 3], [4, 5, 19]])
    assert torch.equal(restored(tokens), model(tokens))
    assert_same_state(model, restored)


# ---------------------------------------------------------------------------- CLI
def test_cli_pack_inspect_unpack(tmp_path: Path) -> None:
    source = CHECKPOINTS / "pruned" / "magnitude-lenet300-12x"
    out = tmp_path / "l300.mzip"
    result = run_cli("pack", source, "-o", out, "--coder", "rans")
    assert_ok(result)
    size = out.stat().st_size
    assert f"{size:,} bytes" in result.stdout
    assert f"ratio {4 * 266_610 / size:.1f}x" in result.stdout

    result = run_cli("inspect", out)
    assert_ok(result)
    for text in ("fc1.weight", "fc3.bias", "sparse", "rans", "total", "manifest", "SHA-256",
                 f"file {size:,} bytes", "ratio"):
        assert text in result.stdout, result.stdout
    summary = json.loads(run_cli("inspect", out, "--json").stdout)
    assert summary["file_bytes"] == size
    assert {r["name"] for r in summary["tensors"]} == {
        f"fc{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")}

    restored = tmp_path / "restored"
    assert_ok(run_cli("unpack", out, "-o", restored))
    original = load_checkpoint(source)
    back = load_checkpoint(restored)
    assert_same_state(original.model, back.model)
    assert back.meta["dataset"] == original.meta["dataset"]


def test_cli_errors(tmp_path: Path) -> None:
    source = CHECKPOINTS / "lenet300"
    assert_user_error(run_cli("pack", source, "-o", tmp_path / "x.mzip", "--coder", "zip"),
                      "unknown coder 'zip'")
    assert not (tmp_path / "x.mzip").exists()
    good = tmp_path / "good.mzip"
    pack_file(build_model("lenet300"), good)
    cut = tmp_path / "cut.mzip"
    cut.write_bytes(good.read_bytes()[:1000])
    assert_user_error(run_cli("inspect", cut), str(cut), "truncated")
    assert_user_error(run_cli("unpack", cut, "-o", tmp_path / "ck"), str(cut), "truncated")
    assert not (tmp_path / "ck").exists()
    assert_user_error(run_cli("inspect", tmp_path / "missing.mzip"), "file not found")


def test_a_zoo_factory_that_cannot_run_on_meta_still_unpacks() -> None:
    """A factory that loads pretrained weights (here: copies from a real tensor) fails on the
    meta device; unpack must still rebuild it."""
    from modelzip.zoo import _REGISTRY, register_model

    pretrained = torch.randn(4, 3)

    @register_model("test-pretrained", input_shape=lambda **_: (3,))
    def _factory() -> nn.Module:
        net = nn.Linear(3, 4)
        with torch.no_grad():
            net.weight.copy_(pretrained)  # fails on meta: a meta tensor has no data
            assert float(net.weight.sum()) == float(pretrained.sum())
        return net

    try:
        model = build_model("test-pretrained")
        assert_same_state(model, unpack(pack(model)))
    finally:
        _REGISTRY.pop("test-pretrained")
