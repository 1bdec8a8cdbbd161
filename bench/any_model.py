"""Any model in, one pipeline out: compress a user's own CNN (trained on EuroSAT) and standard
architectures built from ``transformers`` configs (random init, no downloads) through
``modelzip.compress``, pack them, unpack them onto a fresh skeleton in another process, export
and run them with the torch-free runner.

Per model and step: parameters, .mzip bytes, ratio against the fp32 safetensors file, output
agreement with the uncompressed model on real inputs (top-1 agreement for classifiers on
EuroSAT test images; cosine similarity of the embeddings for the text encoder, on seeded token
ids: no text corpus is at hand), whether the fresh-process unpack is bit-identical, and wall
time. Writes bench/results/any_model.json.

    python bench/any_model.py [--models custom_cnn,vit] [--train-epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples import custom_cnn, hf_models  # noqa: E402

import modelzip  # noqa: E402
from benchlib import write_results  # noqa: E402
from modelzip.core.dataset import Dataset, call_model  # noqa: E402
from modelzip.data import load_dataset  # noqa: E402
from modelzip.train import TrainConfig, evaluate, fit  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "any_model.json"
BUILDERS = {"custom_cnn": "examples.custom_cnn:build_net",
            **{name: f"examples.hf_models:{name}" for name in hf_models.BUILDERS}}
EVAL_SAMPLES = 1000  # EuroSAT test images compared per step

# Steps: a recipe each, run through modelzip.compress (no fine-tuning: the HF models are
# randomly initialised, so agreement measures what the compression itself changes).
STEPS: dict[str, dict[str, Any]] = {
    "magnitude-50": {"steps": [{"magnitude": {"sparsity": 0.5}}]},
    "l1-filter-30": {"steps": [{"l1-filter": {"ratio": 0.3}}]},
    "uniform-8-per-tensor": {"steps": [{"uniform": {"bits": 8, "per_channel": False}}]},
    "uniform-8-per-channel": {"steps": [{"uniform": {"bits": 8, "per_channel": True}}]},
    "kmeans-5": {"steps": [{"kmeans": {"bits": 5}}]},
    "onnx-int8": {"steps": [{"magnitude": {"sparsity": 0.0001}}],
                  "pack": {"format": "onnx", "int8": True}},
}
# The model trained on real data is also fine-tuned after pruning (1 epoch at a tenth of its
# training lr, the pipeline's default split: 10% of the training images held out).
FINETUNED_STEPS: dict[str, dict[str, Any]] = {
    "magnitude-50+finetune": {"steps": [{"magnitude": {"sparsity": 0.5}},
                                        {"finetune": {"epochs": 1}}]},
    "l1-filter-30+finetune": {"steps": [{"l1-filter": {"ratio": 0.3}},
                                        {"finetune": {"epochs": 1}}]},
}


def _real_inputs(name: str, eurosat: Any) -> Any:
    if name == "bert_encoder":
        return hf_models.example_inputs(name, batch=64, seed=1)
    x = eurosat.normalize(eurosat.images[:EVAL_SAMPLES])
    if name != "custom_cnn":
        x = nn.functional.interpolate(x, size=hf_models.IMAGE_SIZE, mode="bilinear",
                                      align_corners=False)
    return x


@torch.no_grad()
def _outputs(model: nn.Module, inputs: Any) -> torch.Tensor:
    model.eval()
    if isinstance(inputs, torch.Tensor):
        return torch.cat([call_model(model, inputs[i:i + 250]) for i in
                          range(0, len(inputs), 250)])
    return call_model(model, inputs)


def _agreement(name: str, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    if name == "bert_encoder":
        cos = nn.functional.cosine_similarity(ref, out, dim=-1)
        return {"embedding_cosine_mean": float(cos.mean()),
                "embedding_cosine_min": float(cos.min())}
    return {"top1_agreement_pct": 100.0 * float((ref.argmax(1) == out.argmax(1)).float().mean())}


_FRESH_PROCESS = """
import sys, json, numpy as np, torch
sys.path.insert(0, {root!r})
from modelzip.core.builders import build_from_target
from modelzip.codec.model import unpack_file
skeleton = build_from_target({builder!r}, {kwargs!r})
model = unpack_file({path!r}, model=skeleton)
arrays = np.load({inputs!r}, allow_pickle=False)
x = {{k: torch.from_numpy(arrays[k]) for k in arrays.files}}
x = x["x"] if list(x) == ["x"] else x
with torch.no_grad():
    out = model(x) if not isinstance(x, dict) else model(**x)
np.save({out!r}, out.numpy(), allow_pickle=False)
"""


def _fresh_process_identical(builder: str, blob: bytes, model: nn.Module, inputs: Any) -> bool:
    """Unpack the artifact onto a freshly built skeleton in another Python process and compare
    its outputs with the packed model's, bit for bit."""
    with tempfile.TemporaryDirectory() as tmp:
        path, npz, out = Path(tmp, "m.mzip"), Path(tmp, "x.npz"), Path(tmp, "y.npy")
        path.write_bytes(blob)
        small = inputs[:16] if isinstance(inputs, torch.Tensor) else inputs
        arrays = ({"x": small.numpy()} if isinstance(small, torch.Tensor)
                  else {k: v.numpy() for k, v in small.items()})
        np.savez(npz, **arrays)
        code = _FRESH_PROCESS.format(root=str(ROOT), builder=builder, kwargs={},
                                     path=str(path), inputs=str(npz), out=str(out))
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        theirs = np.load(out, allow_pickle=False)
    ours = _outputs(model, small).numpy()
    return theirs.shape == ours.shape and theirs.tobytes() == ours.tobytes()


def _runner_outputs(blob: bytes, inputs: Any) -> torch.Tensor:
    from modelzip.runtime.runner import Runner

    runner = Runner.from_bytes(blob)
    x = inputs.numpy() if isinstance(inputs, torch.Tensor) else {
        k: v.numpy() for k, v in inputs.items()}
    return torch.from_numpy(np.asarray(runner.logits(x)))


def _baseline(name: str, eurosat_train: Any, epochs: int) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    if name == "custom_cnn":
        model = custom_cnn.build_net()
        hist = fit(model, eurosat_train, TrainConfig(epochs=epochs, lr=0.05, batch_size=128,
                                                     augment="flips"), progress=False)
        return model.eval(), {"train_epochs": epochs, "train_wall_s": round(hist.wall_time_s, 1)}
    return hf_models.BUILDERS[name]().eval(), {"init": "random (transformers config)"}


def run_model(name: str, eurosat_train: Any, eurosat_test: Any, epochs: int
              ) -> list[dict[str, Any]]:
    model, info = _baseline(name, eurosat_train, epochs)
    object.__setattr__(model, "modelzip_source", {"builder": BUILDERS[name], "kwargs": {}})
    inputs = _real_inputs(name, eurosat_test)
    example = inputs[:2] if isinstance(inputs, torch.Tensor) else {
        k: v[:2] for k, v in inputs.items()}
    ref = _outputs(model, inputs)
    fp32_bytes = len(safetensors.torch.save(
        {k: v.contiguous() for k, v in model.state_dict().items()}))
    params = sum(p.numel() for p in model.parameters())
    base = {"model": name, "builder": BUILDERS[name], "params_fp32": params,
            "fp32_safetensors_bytes": fp32_bytes, **info}
    if name == "custom_cnn":
        test_err = evaluate(model, eurosat_test)
        base["fp32_test_error_pct"] = test_err.error_pct
    rows = []
    # int8 calibration on 64 real inputs (not the compared ones would be cleaner; these are
    # the first 64 of the 1,000 compared)
    calibration = Dataset([(inputs[:64] if isinstance(inputs, torch.Tensor) else inputs,
                            torch.zeros(64))], name="calibration")
    steps = {**STEPS, **(FINETUNED_STEPS if name == "custom_cnn" else {})}
    for step, recipe in steps.items():
        row = {**base, "step": step}
        start = time.perf_counter()
        try:
            train = eurosat_train if step in FINETUNED_STEPS else None
            result = modelzip.compress(copy.deepcopy(model), recipe, example_inputs=example,
                                       calibration_data=calibration, data=train,
                                       finetune=TrainConfig(epochs=1, lr=0.005, batch_size=128,
                                                            augment="flips"),
                                       progress=False)
            row["file_bytes"] = result.artifact_bytes
            row["ratio_vs_fp32_safetensors"] = round(fp32_bytes / result.artifact_bytes, 2)
            row["params_after"] = result.after.params
            row["nonzero_after"] = result.after.nonzero
            if result.artifact_kind == "onnx-graph":
                out = _runner_outputs(result.artifact, inputs)
                row["runs_under_modelzip_run"] = True
            else:
                out = _outputs(result.model, inputs)
                row["unpack_fresh_process_bit_identical"] = _fresh_process_identical(
                    BUILDERS[name], result.artifact, result.model, inputs)
            row.update(_agreement(name, ref, out))
            if name == "custom_cnn" and result.artifact_kind == "state-dict":
                row["test_error_pct"] = evaluate(result.model, eurosat_test).error_pct
        except Exception as exc:  # a step a model does not support is recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc()
        row["wall_time_s"] = round(time.perf_counter() - start, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUILDERS))
    parser.add_argument("--train-epochs", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    eurosat_train = load_dataset("eurosat", "train")
    eurosat_test = load_dataset("eurosat", "test")
    rows = []
    for name in args.models.split(","):
        rows += run_model(name, eurosat_train, eurosat_test, args.train_epochs)
    write_results(RESULTS, "any_model", __doc__.strip().splitlines()[0], rows,
                  eval_samples=EVAL_SAMPLES, steps={**STEPS, **FINETUNED_STEPS},
                  settings={"train_epochs": args.train_epochs, "threads": 2})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
