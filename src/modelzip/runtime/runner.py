"""The on-board runner: decode a .mzip that carries an ONNX graph and run it on images with
onnxruntime.

    modelzip run FILE.mzip --input images.npy [--output preds.npy] [--threads 1]
                 [--batch-size N] [--logits]

Its import closure is numpy, onnxruntime and modelzip's decoder: no torch, no onnx, no CLI
framework (``modelzip.entry`` dispatches ``run`` here without importing ``modelzip.cli``).
The artifact is read and checked (checksums) and the input is validated before any inference;
user errors print one ``error: ...`` line and exit with code 2.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from modelzip.errors import ConfigError, DataError, ModelzipError, ShapeError
from modelzip.runtime.onnx_artifact import (
    OnnxPackage,
    build_session,
    input_spec_text,
    load_onnx_package,
)

__all__ = ["Runner", "load_images", "main", "normalize_uint8", "prepare_input"]

DEFAULT_BATCH_SIZE = 64


# ---------------------------------------------------------------------------- input arrays
def normalize_uint8(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]
                    ) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 scaled to [0, 1] and standardized per channel, in
    the same float32 operations as ``ImageDataset.normalize`` (so results match it exactly)."""
    shape = (1, -1, 1, 1)
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    return (images.astype(np.float32) / np.float32(255.0) - m) / s


def prepare_input(images: np.ndarray, package: OnnxPackage) -> np.ndarray:
    """Check ``images`` against what the graph expects and return the array to feed it:
    the graph's own dtype and shape (N, C, H, W) as is, or uint8 images (N, C, H, W), (N, H, W)
    for one channel, or (N, H, W, C), normalized with the stored mean/std. Raises ShapeError
    naming the expected shapes otherwise."""
    spec = package.spec
    per_sample = spec.input_shape
    expected = input_spec_text(spec, package)
    got = f"input has shape {tuple(images.shape)} and dtype {images.dtype}"
    if images.ndim == 0 or images.shape[0] == 0:
        raise ShapeError(f"{got}: no images; this model expects {expected}")
    if images.dtype == np.dtype(spec.input_dtype) and images.shape[1:] == per_sample:
        return np.ascontiguousarray(images)
    if images.dtype == np.uint8 and package.mean is not None and spec.input_dtype == "float32":
        c, *hw = per_sample
        if images.shape[1:] == per_sample:
            nchw = images
        elif c == 1 and images.shape[1:] == tuple(hw):
            nchw = images[:, None]
        elif c > 1 and images.shape[1:] == (*hw, c):
            nchw = images.transpose(0, 3, 1, 2)
        else:
            raise ShapeError(f"{got}; this model expects {expected}")
        return np.ascontiguousarray(normalize_uint8(nchw, package.mean, package.std))
    if images.dtype == np.uint8 and package.mean is None:
        raise ShapeError(f"{got}; this model expects {expected}. It stores no mean/std, so "
                         "uint8 images cannot be normalized here: pass normalized float32")
    raise ShapeError(f"{got}; this model expects {expected}")


def load_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a .npy file (never unpickling) and return its array."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: input file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; pass a .npy file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc}); save the images with "
                        "numpy.save as a plain numeric array") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise DataError(f"{path}: is an .npz archive; pass one array saved with numpy.save")
    return data


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save, written atomically (temporary file beside ``path``, then renamed)."""
    from modelzip.atomic import write_atomic

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    try:
        write_atomic(path, buf.getvalue())
    except OSError as exc:
        raise DataError(f"{path}: cannot write the output here ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------- the runner
class Runner:
    """An onnxruntime session on an artifact's graph, and how to feed it."""

    def __init__(self, package: OnnxPackage, *, threads: int = 1) -> None:
        self.package = package
        self.spec = package.spec
        self.session = build_session(package, threads=threads)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, threads: int = 1) -> Runner:
        """Read, check and decode a .mzip file (ArtifactError when it is damaged)."""
        from modelzip.codec.artifact import read_artifact_file

        artifact = read_artifact_file(path)
        return cls(load_onnx_package(artifact, source=str(path)), threads=threads)

    @classmethod
    def from_bytes(cls, data: bytes, *, threads: int = 1) -> Runner:
        from modelzip.codec.artifact import read_artifact

        return cls(load_onnx_package(read_artifact(data)), threads=threads)

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.package.classes

    def logits(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The graph's output for ``images`` (validated and normalized by ``prepare_input``),
        run ``batch_size`` images at a time (the graph's own batch size when it is fixed)."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        x = prepare_input(images, self.package)
        fixed = self.spec.batch
        step = fixed or batch_size
        outputs = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            n = len(chunk)
            if fixed and n < fixed:  # a fixed-batch graph: pad the last batch, drop the padding
                pad = np.zeros((fixed - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out = self.session.run([self.spec.output_name], {self.spec.input_name: chunk})[0]
            outputs.append(out[:n])
        return np.concatenate(outputs)

    def predict(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE
                ) -> tuple[np.ndarray, np.ndarray]:
        """(class indices (N,) int64, logits)."""
        logits = self.logits(images, batch_size=batch_size)
        return logits.reshape(len(logits), -1).argmax(axis=1).astype(np.int64), logits


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelzip run",
        description="Run a .mzip that carries an ONNX graph on images with onnxruntime "
                    "(no torch). Pack one with: modelzip pack-onnx CHECKPOINT -o FILE.mzip")
    p.add_argument("artifact", type=Path, help=".mzip file packed with its ONNX graph")
    p.add_argument("--input", required=True, type=Path,
                   help="images as a .npy array: normalized float32 (N, C, H, W), or uint8 "
                        "images when the artifact stores the dataset mean/std")
    p.add_argument("--output", type=Path, default=None,
                   help="write the predicted class indices (N,) int64 to this .npy file "
                        "(with --logits: the logits) instead of printing one line per image")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per inference")
    p.add_argument("--logits", action="store_true",
                   help="print (or with --output, write) the logits too")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    runner = Runner.from_file(args.artifact, threads=args.threads)
    images = load_images(args.input)
    preds, logits = runner.predict(images, batch_size=args.batch_size)
    classes = runner.classes
    if args.output is not None:
        _save_npy_atomic(args.output, logits if args.logits else preds)
        what = f"logits {tuple(logits.shape)} float32" if args.logits else "class indices"
        print(f"wrote {what} for {len(preds)} images to {args.output}")
        return
    flat = logits.reshape(len(logits), -1)
    lines = []
    for i, k in enumerate(preds.tolist()):
        name = f"\t{classes[k]}" if classes and k < len(classes) else ""
        extra = "\t" + " ".join(f"{v:.6g}" for v in flat[i]) if args.logits else ""
        lines.append(f"{i}\t{k}{name}{extra}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """``modelzip run``; returns the exit code (2 on a user error, with one ``error:`` line)."""
    args = _parser().parse_args(argv)  # usage errors exit with code 2 (argparse)
    try:
        _run(args)
    except ModelzipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
