"""The on-board runner: decode a .mzip that carries an ONNX graph and run it with onnxruntime
(the default) or OpenVINO (``--backend openvino``, or ``auto``: the faster here).

    modelzip run FILE.mzip --input inputs.npy [--output preds.npy] [--threads 1]
                 [--backend auto|onnxruntime|openvino] [--precision fp32|bf16]
                 [--batch-size N] [--logits] [--scrub N] [--trusted-key PUB]

Its import closure is numpy, onnxruntime, modelzip's decoder and, for the OpenVINO backend,
openvino: no torch, no onnx, no CLI framework (``modelzip.entry`` dispatches ``run`` here
without importing ``modelzip.cli``).
The artifact is read and checked (checksums) and the input is validated before any inference;
user errors print one ``error: ...`` line and exit with code 2. The backend, its version and
the precision it executed are printed on stderr after the results (see
``modelzip.runtime.backends``).

Inputs: an array of the graph input's own dtype and shape (batch first): normalized float32
images, int64 token ids, ... (integers are also taken in a narrower integer dtype, converted
losslessly). An image model packed with its dataset's mean/std also takes uint8 images, which
are normalized here; and it refuses float32 images that still look like raw pixels (values
far above what the stored statistics allow, or whole numbers 0..255), since running them
would give confident nonsense. A graph with several inputs (a text encoder's ``input_ids``
and ``attention_mask``) takes a dict of arrays by input name (on the command line: an .npz
archive holding one array per input, written with ``numpy.savez``).

In-memory protection (``Runner(..., scrub_every=N)``, ``modelzip run --scrub N``,
``runner.scrub()``): the runner keeps the decoded weight arrays it built the backend from,
with the CRC32 of each. A scrub re-checks them; a damaged array (a bit flipped in memory) is
replaced by reading the file again (FEC-corrected when it carries parity, signature checked
when keys are trusted), and the backend is rebuilt from the checked arrays after every scrub.
The rebuild is not optional: onnxruntime copies the weights it is given into its own buffers
(and prepacks them for its kernels), so a flip in those copies is out of reach of any
checksum, and the rebuild bounds its life to N inferences; a flip in the runner's arrays, in
turn, reaches inference only through a rebuild, which the check before it catches. When the
file itself cannot be repaired the runner stops: this and every later call raise ScrubError
instead of running wrong weights.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from modelzip.errors import ConfigError, DataError, ModelzipError, ShapeError
from modelzip.runtime.backends import BACKENDS, PRECISIONS, CpuFeatureWarning
from modelzip.runtime.onnx_artifact import (
    InputSpec,
    OnnxPackage,
    input_spec_text,
    load_onnx_package,
)

__all__ = ["Runner", "ScrubError", "ScrubReport", "check_normalized", "load_images",
           "load_inputs", "main", "normalize_uint8", "prepare_input", "prepare_inputs"]

DEFAULT_BATCH_SIZE = 64
RAW_PIXEL_LIMIT = 20.0  # float32 values above this are not normalized images (see below)


# ---------------------------------------------------------------------------- input arrays
def normalize_uint8(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]
                    ) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 scaled to [0, 1] and standardized per channel, in
    the same float32 operations as ``ImageDataset.normalize`` (so results match it exactly)."""
    shape = (1, -1) + (1,) * (images.ndim - 2)
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    return (images.astype(np.float32) / np.float32(255.0) - m) / s


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    """Whether a per-sample shape matches the graph's (None: any size)."""
    return len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True))


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite values: a model would turn them into confident nonsense."""
    # on every call: a float64 sum is one pass with no temporary array, and NaN/inf carry
    # through it; only a non-finite sum (or a float64 overflow) pays for the exact count
    if math.isfinite(float(array.sum(dtype=np.float64))):
        return
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise DataError(f"{what} holds {bad:,} NaN or infinite value(s) of {array.size:,}; "
                        "replace or drop those samples")


def check_normalized(images: np.ndarray, package: OnnxPackage) -> None:
    """Refuse float32 images that look un-normalized for a model that records its training
    mean/std: normalized images lie within [(0 - mean) / std, (1 - mean) / std] per channel, so
    values above ``max(20, 2 x that maximum)``, or whole numbers in 0..255 reaching above 1.5,
    are raw pixels (or images scaled some other way)."""
    if package.mean is None or images.size == 0:
        return
    # plain floats, not numpy: this runs on every call and must cost next to nothing
    hi = max((1.0 - m) / s for m, s in zip(package.mean, package.std, strict=True))
    top, bottom = float(images.max()), float(images.min())
    raw = top > max(RAW_PIXEL_LIMIT, 2.0 * hi)
    if not raw and 1.5 < top <= 255.0 and bottom >= 0.0:
        raw = bool(np.array_equal(images, np.rint(images)))  # whole numbers: pixel values
    if raw:
        lo = min(-m / s for m, s in zip(package.mean, package.std, strict=True))
        raise DataError(
            f"the float32 input looks un-normalized (values {bottom:g}..{top:g}), but this "
            f"model takes images normalized with its stored mean/std (values within "
            f"{lo:.2f}..{hi:.2f}): pass uint8 images, which the runner normalizes itself, or "
            "floats normalized as in training, (pixels / 255 - mean) / std")


def _as_graph_dtype(array: np.ndarray, item: InputSpec) -> np.ndarray | None:
    """``array`` in the input's dtype when it has it, or when it is an integer array that
    converts losslessly to the input's integer dtype; None otherwise."""
    want = np.dtype(item.dtype)
    if array.dtype == want:
        return array
    if array.dtype.kind in "iu" and want.kind in "iu" and np.can_cast(array.dtype, want,
                                                                       casting="safe"):
        return array.astype(want)
    return None


def prepare_input(images: np.ndarray, package: OnnxPackage) -> np.ndarray:
    """Check the input of a one-input graph against what it expects and return the array to
    feed it: the graph's own dtype and shape as is (a float32 one also checked by
    ``check_normalized``), a narrower integer dtype converted, or uint8 images (N, C, H, W),
    (N, H, W) for one channel, or (N, H, W, C), normalized with the stored mean/std. Raises
    ShapeError naming the expected shapes otherwise."""
    spec = package.spec
    if len(spec.inputs) != 1:
        raise ShapeError(f"this model takes {len(spec.inputs)} inputs: "
                         f"{input_spec_text(spec)}; pass a dict of arrays by input name")
    per_sample = spec.input_shape
    if images.ndim and images.shape[0] and _fits(images.shape[1:], per_sample):
        converted = _as_graph_dtype(images, spec.inputs[0])
        if converted is not None:
            if converted.dtype.kind == "f":
                check_finite(converted, "the input")
            if converted.dtype == np.float32:
                check_normalized(converted, package)
            return np.ascontiguousarray(converted)
    # the messages are built only off the fast path above (they cost microseconds per call)
    expected = input_spec_text(spec, package)
    got = f"input has shape {tuple(images.shape)} and dtype {images.dtype}"
    if images.ndim == 0 or images.shape[0] == 0:
        raise ShapeError(f"{got}: no images; this model expects {expected}")
    if images.dtype == np.uint8 and package.mean is not None and spec.input_dtype == "float32":
        c, *hw = per_sample
        if _fits(images.shape[1:], per_sample):
            nchw = images
        elif c == 1 and _fits(images.shape[1:], tuple(hw)):
            nchw = images[:, None]
        elif c is not None and len(hw) == 2 and _fits(images.shape[1:], (*hw, c)):
            nchw = images.transpose(0, 3, 1, 2)
        else:
            raise ShapeError(f"{got}; this model expects {expected}")
        return np.ascontiguousarray(normalize_uint8(nchw, package.mean, package.std))
    if images.dtype == np.uint8 and package.mean is None and spec.input_dtype == "float32":
        raise ShapeError(f"{got}; this model expects {expected}. It stores no mean/std, so "
                         "uint8 images cannot be normalized here: pass normalized float32")
    raise ShapeError(f"{got}; this model expects {expected}")


def prepare_inputs(inputs: np.ndarray | Mapping[str, np.ndarray], package: OnnxPackage
                   ) -> dict[str, np.ndarray]:
    """The feeds of every graph input, checked: an array for a one-input graph (see
    ``prepare_input``), or a dict of arrays by input name (each of its input's dtype, or a
    narrower integer one, and shape; all with the same batch size)."""
    spec = package.spec
    if not isinstance(inputs, Mapping):
        if not isinstance(inputs, np.ndarray):
            raise ShapeError(f"the input must be a numpy array or a dict of them, got "
                             f"{type(inputs).__name__}")
        return {spec.input_name: prepare_input(inputs, package)}
    names = [i.name for i in spec.inputs]
    if sorted(inputs) != sorted(names):
        raise ShapeError(f"the inputs are named {sorted(inputs)}; this model takes "
                         f"{input_spec_text(spec)}")
    if len(names) == 1:
        return {names[0]: prepare_input(np.asarray(inputs[names[0]]), package)}
    feeds, batch = {}, None
    for item in spec.inputs:
        array = np.asarray(inputs[item.name])
        got = f"input {item.name!r} has shape {tuple(array.shape)} and dtype {array.dtype}"
        converted = _as_graph_dtype(array, item) if array.ndim else None
        if converted is None or not _fits(array.shape[1:], item.shape):
            raise ShapeError(f"{got}; this model expects {input_spec_text(spec)}")
        if converted.dtype.kind == "f":
            check_finite(converted, f"input {item.name!r}")
        if batch is None:
            batch = len(array)
        if len(array) != batch or batch == 0:
            raise ShapeError(f"{got}: {'no samples' if batch == 0 else 'another batch size'}"
                             f"; this model expects {input_spec_text(spec)}")
        feeds[item.name] = np.ascontiguousarray(converted)
    return feeds


def load_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a .npy file (never unpickling) and return its array."""
    data = _load(Path(path))
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise DataError(f"{path}: is an .npz archive; pass one array saved with numpy.save")
    return data


def load_inputs(path: str | os.PathLike[str], names: list[str] | tuple[str, ...]
                ) -> np.ndarray | dict[str, np.ndarray]:
    """The input of a graph whose inputs are ``names``: one array from a .npy file for a
    one-input graph; for several inputs, the arrays of an .npz archive by input name."""
    path = Path(path)
    if len(names) == 1:
        return load_images(path)
    data = _load(path)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds one array, but this model takes {len(names)} inputs "
                        f"({', '.join(names)}); pass an .npz archive with one array per input "
                        "(numpy.savez)")
    with data:
        missing = [n for n in names if n not in data.files]
        if missing:
            raise DataError(f"{path}: the archive holds {sorted(data.files)}; this model "
                            f"takes {', '.join(names)} (missing: {', '.join(missing)})")
        try:
            return {n: data[n] for n in names}
        except _READ_ERRORS as exc:
            raise DataError(f"{path}: not a readable .npz archive ({exc}); save plain "
                            "numeric arrays with numpy.savez") from None


NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 1 << 20  # numpy writes headers of a few hundred bytes
MAX_DEFLATE_RATIO = 1032  # the most deflate can expand: a stated size beyond is forged
# what numpy and zipfile raise on damaged files (tokenize's TokenError: a mangled header;
# RuntimeError: a member flagged encrypted, NotImplementedError: an unknown compression)
_READ_ERRORS = (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError,
                zipfile.BadZipFile, RuntimeError, zlib.error, KeyError)


def _check_npy_stream(f: Any, what: str, available: int) -> None:
    """Check the .npy stream ``f`` (at its start, ``available`` bytes long) before numpy
    reads it: a version numpy writes, a header within the stream, and array data of exactly
    the size the header declares (a 300-byte file must not make numpy allocate gigabytes)."""
    head = f.read(12)
    if head[:6] != NPY_MAGIC or len(head) < 10:
        raise DataError(f"{what}: not a .npy array (no NUMPY header); save the images with "
                        "numpy.save as a plain numeric array")
    major, minor = head[6], head[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise DataError(f"{what}: .npy format version {major}.{minor}, which numpy never "
                        "writes: the file is damaged; save it again with numpy.save")
    width = 2 if major == 1 else 4
    header_bytes = int.from_bytes(head[8:8 + width], "little")
    start = 8 + width
    if header_bytes > min(MAX_NPY_HEADER, available - start):
        raise DataError(f"{what}: its header declares a {header_bytes:,}-byte header but "
                        f"the file holds {max(0, available - start):,} bytes after it; the "
                        "file is truncated or not what it says: save it again")
    header = head + f.read(start + header_bytes - len(head))
    try:
        buf = io.BytesIO(header)
        version = np.lib.format.read_magic(buf)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(buf, max_header_size=MAX_NPY_HEADER)
    except _READ_ERRORS as exc:
        raise DataError(f"{what}: not a readable .npy array ({exc}); save the images with "
                        "numpy.save as a plain numeric array") from None
    declared = math.prod(shape) * dtype.itemsize
    held = available - start - header_bytes
    if declared != held:
        raise DataError(f"{what}: its header declares an array of shape {shape} "
                        f"({declared:,} bytes) but the file holds {held:,} bytes of data; "
                        "the file is truncated or not what it says: save it again")


def _check_npy_size(path: Path) -> None:
    """Refuse a .npy file, or a member of an .npz archive, whose header declares more data
    than it holds, before numpy allocates it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(6) == NPY_MAGIC:
                f.seek(0)
                _check_npy_stream(f, str(path), size)
                return
        if not zipfile.is_zipfile(path):
            return  # not numpy at all: np.load says so
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1) + 4096:
                    raise DataError(f"{path}: member {info.filename!r} claims "
                                    f"{info.file_size:,} bytes from {info.compress_size:,}; "
                                    "the archive is damaged or forged: save it again")
                if info.filename.endswith(".npy"):
                    with archive.open(info) as member:
                        _check_npy_stream(member, f"{path}: {info.filename}", info.file_size)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable .npy array or .npz archive ({exc}); save "
                        "the arrays with numpy.save or numpy.savez") from None


def _load(path: Path) -> np.ndarray | np.lib.npyio.NpzFile:
    if path.is_file():
        _check_npy_size(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: input file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; pass a .npy file") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc}); save the images with "
                        "numpy.save as a plain numeric array") from None


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
class ScrubError(ModelzipError):
    """The weights in memory are damaged and the file cannot repair them: the runner stops."""


@dataclass(frozen=True)
class ScrubReport:
    """What one scrub found and did: the arrays whose checksum failed, whether the file was
    read again (and what its FEC parity corrected), and the inferences run so far."""

    damaged: tuple[str, ...]
    reloaded: bool
    fec: Any  # the FecReport of the reloaded file, or None
    inferences: int

    @property
    def clean(self) -> bool:
        return not self.damaged


def _checksums(arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {name: zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))
            for name, a in arrays.items()}


class Runner:
    """A backend (onnxruntime, OpenVINO: ``modelzip.runtime.backends``) on an artifact's
    graph, and how to feed it. ``backend_info`` says which backend, version and precision
    run it. ``scrub_every`` N > 0: ``scrub()`` before every Nth inference (see the module
    docstring); ``reload`` gives the package again from its file (``from_file`` and
    ``from_bytes`` set it), without which a damaged array stops the runner."""

    def __init__(self, package: OnnxPackage, *, threads: int = 1,
                 backend: str = "onnxruntime", precision: str = "fp32",
                 scrub_every: int = 0,
                 reload: Callable[[], tuple[OnnxPackage, Any]] | None = None) -> None:
        from modelzip.runtime.backends import open_backend

        if isinstance(scrub_every, bool) or not isinstance(scrub_every, int) or scrub_every < 0:
            raise ConfigError(f"scrub_every must be an integer >= 0 (0: no scrub), got "
                              f"{scrub_every!r}")
        self.package = package
        self.spec = package.spec
        self.backend = open_backend(package, backend, threads=threads, precision=precision)
        self.fec = None  # what FEC parity corrected when the file was read (a FecReport)
        self.scrub_every = scrub_every
        self.inferences = 0
        self.scrubs: list[ScrubReport] = []  # the scrubs that found damage
        self._reload = reload
        # a rebuild opens the backend that runs now (auto measured once, at load)
        self._backend_args = {"backend": self.backend.name, "threads": threads,
                              "precision": precision}
        self._checksums = _checksums(package.initializers)
        self._stopped: str | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, threads: int = 1,
                  backend: str = "onnxruntime", precision: str = "fp32",
                  trusted_keys: Sequence[bytes] | None = None, scrub_every: int = 0) -> Runner:
        """Read, check and decode a .mzip file (ArtifactError when it is damaged, or, given
        ``trusted_keys``, not signed by one of them). FEC parity is corrected first;
        ``runner.fec`` says what was corrected. A scrub reads the file again."""
        from modelzip.codec.artifact import read_artifact_file

        def reload() -> tuple[OnnxPackage, Any]:
            artifact = read_artifact_file(path, trusted_keys=trusted_keys)
            return load_onnx_package(artifact, source=str(path)), artifact.fec

        package, fec = reload()
        runner = cls(package, threads=threads, backend=backend, precision=precision,
                     scrub_every=scrub_every, reload=reload)
        runner.fec = fec
        return runner

    @classmethod
    def from_bytes(cls, data: bytes, *, threads: int = 1, backend: str = "onnxruntime",
                   precision: str = "fp32", trusted_keys: Sequence[bytes] | None = None,
                   scrub_every: int = 0) -> Runner:
        """As ``from_file``, from the file's bytes (kept: a scrub decodes them again)."""
        from modelzip.codec.artifact import read_artifact

        data = bytes(data)

        def reload() -> tuple[OnnxPackage, Any]:
            artifact = read_artifact(data, trusted_keys=trusted_keys)
            return load_onnx_package(artifact), artifact.fec

        package, fec = reload()
        runner = cls(package, threads=threads, backend=backend, precision=precision,
                     scrub_every=scrub_every, reload=reload)
        runner.fec = fec
        return runner

    def scrub(self) -> ScrubReport:
        """Re-check the weight arrays against their checksums; read the file again when one
        is damaged; rebuild the backend from the checked arrays. Raises ScrubError (and the
        runner stops) when the damage cannot be repaired."""
        if self._stopped is not None:
            raise ScrubError(self._stopped)
        arrays = self.package.initializers
        held = _checksums(arrays)
        damaged = tuple(sorted(n for n in set(held) | set(self._checksums)
                               if held.get(n) != self._checksums.get(n)))
        fec = None
        if damaged:
            what = (f"{len(damaged)} weight array(s) changed in memory "
                    f"({', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''})")
            if self._reload is None:
                self._stop(f"{what}, and this runner has no file to read them again from; "
                           "stopped rather than run wrong weights")
            try:
                package, fec = self._reload()
            except ModelzipError as exc:
                self._stop(f"{what}, and the file cannot repair them ({exc}); stopped rather "
                           "than run wrong weights: send the model again")
            self.package, self.spec = package, package.spec
            self._checksums = _checksums(package.initializers)
        from modelzip.runtime.backends import open_backend

        self.backend = open_backend(self.package, **self._backend_args)
        report = ScrubReport(damaged, bool(damaged), fec, self.inferences)
        if damaged:
            self.scrubs.append(report)
        return report

    def _stop(self, message: str) -> NoReturn:
        self._stopped = message
        raise ScrubError(message)

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One inference of the backend, after a scrub when one is due."""
        if self._stopped is not None:
            raise ScrubError(self._stopped)
        self.inferences += 1
        if self.scrub_every and self.inferences % self.scrub_every == 0:
            self.scrub()
        return self.backend.run(feeds)

    @property
    def backend_info(self) -> dict[str, Any]:
        return self.backend.info()

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.package.classes

    def logits(self, inputs: np.ndarray | Mapping[str, np.ndarray], *,
               batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The graph's (first) output for ``inputs`` (validated and normalized by
        ``prepare_inputs``), run ``batch_size`` samples at a time (the graph's own batch size
        when it is fixed)."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        feeds = prepare_inputs(inputs, self.package)
        total = len(next(iter(feeds.values())))
        fixed = self.spec.batch
        step = fixed or batch_size
        if total <= step and not fixed:  # one batch: no slicing or concatenation
            return self._infer(feeds)
        outputs = []
        for start in range(0, total, step):
            chunk = {name: x[start:start + step] for name, x in feeds.items()}
            n = min(step, total - start)
            if fixed and n < fixed:  # a fixed-batch graph: pad the last batch, drop the padding
                chunk = {name: np.concatenate([x, np.zeros((fixed - n, *x.shape[1:]), x.dtype)])
                         for name, x in chunk.items()}
            out = self._infer(chunk)
            outputs.append(out[:n])
        return np.concatenate(outputs)

    def predict(self, inputs: np.ndarray | Mapping[str, np.ndarray], *,
                batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """(class indices (N,) int64: the argmax of each sample's output, logits)."""
        logits = self.logits(inputs, batch_size=batch_size)
        return logits.reshape(len(logits), -1).argmax(axis=1).astype(np.int64), logits


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelzip run",
        description="Run a .mzip that carries an ONNX graph with onnxruntime (no torch). "
                    "Pack one with: modelzip pack-onnx CHECKPOINT -o FILE.mzip")
    p.add_argument("artifact", type=Path, help=".mzip file packed with its ONNX graph")
    p.add_argument("--input", required=True, type=Path,
                   help="a .npy array of the graph's input: e.g. normalized float32 images "
                        "(N, C, H, W), or uint8 images when the artifact stores the dataset "
                        "mean/std; for a graph with several inputs, an .npz archive with one "
                        "array per input name")
    p.add_argument("--output", type=Path, default=None,
                   help="write the predicted class indices (N,) int64 to this .npy file "
                        "(with --logits: the logits) instead of printing one line per image")
    p.add_argument("--threads", type=int, default=1, help="inference threads")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="onnxruntime (default), openvino (the extra modelzip[openvino]), or "
                        "auto: the faster here, measured when the model loads")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), or bf16 with openvino on a CPU that has it")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per inference")
    p.add_argument("--logits", action="store_true",
                   help="print (or with --output, write) the logits too")
    p.add_argument("--scrub", type=int, default=0, metavar="N",
                   help="re-check the weights in memory against their checksums before every "
                        "Nth batch, read the file again when one is damaged, and rebuild the "
                        "session (0: off); stops with an error when the file cannot repair "
                        "them")
    p.add_argument("--trusted-key", type=Path, action="append", default=None,
                   help="accept only an artifact signed by this Ed25519 public key "
                        "(repeatable); an unsigned or wrongly signed file is refused before "
                        "anything is decoded")
    return p


def _run(args: argparse.Namespace) -> None:
    most = os.cpu_count() or 1
    if not 1 <= args.threads <= most:
        raise ConfigError(f"--threads must be between 1 and {most} (this machine's CPUs), got "
                          f"{args.threads}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.scrub < 0:
        raise ConfigError(f"--scrub must be >= 0 (0: off), got {args.scrub}")
    with warnings.catch_warnings(record=True) as caught:  # one "warning:" line each
        warnings.simplefilter("always", CpuFeatureWarning)
        trusted = None
        if args.trusted_key:
            from modelzip.flight.sign import load_trusted_keys

            trusted = load_trusted_keys(args.trusted_key)
        runner = Runner.from_file(args.artifact, threads=args.threads, backend=args.backend,
                                  precision=args.precision, trusted_keys=trusted,
                                  scrub_every=args.scrub)
    if runner.fec is not None and not runner.fec.clean:
        print(f"warning: {args.artifact}: {runner.fec.describe()}", file=sys.stderr)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    inputs = load_inputs(args.input, [i.name for i in runner.spec.inputs])
    preds, logits = runner.predict(inputs, batch_size=args.batch_size)
    for report in runner.scrubs:
        print(f"warning: the scrub before inference {report.inferences} found "
              f"{len(report.damaged)} damaged weight array(s) in memory and read them again "
              f"from {args.artifact}", file=sys.stderr)
    classes = runner.classes
    if args.output is not None:
        _save_npy_atomic(args.output, logits if args.logits else preds)
        what = f"logits {tuple(logits.shape)} float32" if args.logits else "class indices"
        print(f"wrote {what} for {len(preds)} images to {args.output}")
        _print_backend(runner)
        return
    flat = logits.reshape(len(logits), -1)
    lines = []
    for i, k in enumerate(preds.tolist()):
        name = f"\t{classes[k]}" if classes and k < len(classes) else ""
        extra = "\t" + " ".join(f"{v:.6g}" for v in flat[i]) if args.logits else ""
        lines.append(f"{i}\t{k}{name}{extra}")
    print("\n".join(lines))
    _print_backend(runner)


def _print_backend(runner: Runner) -> None:
    """Which backend, version and precision ran (on stderr: stdout holds the results)."""
    info = runner.backend_info
    print(f"ran on {info['backend']} {info['version']}, {info['precision']}, "
          f"{info['threads']} thread(s) ({info['chosen_by']})", file=sys.stderr)


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
