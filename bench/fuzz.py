"""Fuzzing the artifact reader: damaged and forged .mzip files, each must be accepted with
exactly the weights that were packed or refused with the codec's error naming the check.

    python bench/fuzz.py                 # 100,000 cases -> bench/results/fuzz.json
    python bench/fuzz.py --quick         # 2,000 cases, into a temporary folder

Small base artifacts (every layout, value coding and coder; one with FEC parity; one signed,
read with its trusted key) are mutated by a seeded generator (``random.Random``: the same
generator drives the property-based test in tests/test_fuzz.py through hypothesis):

- damaged: bit flips, overwritten, deleted or repeated byte ranges, truncation, appended
  bytes; no checksum is recomputed;
- forged: the manifest's fields (every tensor entry field, the chunk table, model record)
  set to hostile values, chunk payloads edited, header fields changed, with the chunk CRC32s
  and the SHA-256 recomputed after the edit (a signed file keeps its old signature);
- fec: bit flips at rates 1e-5 .. 1e-2 in a file with 8% parity.

Outcome classes: ``accepted_exact``, ``refused:<check>``; failures: ``accepted_wrong``
(weights other than those packed), ``crash:<ExceptionType>`` (anything but ArtifactError),
``hang`` (over 10 s), ``alloc_past_bound`` (more than ALLOC_BOUND_BYTES allocated while
reading, measured with tracemalloc on every case).

``--target runner``: the runner's input handling (``modelzip.runtime.runner``), on a small
one-input image model packed with mean/std and class names, and a two-input model (int64
ids and a float32 mask): .npy files (valid arrays of every dtype and layout, wrong dtypes and
shapes, NaN/inf, raw pixels as floats, then their bytes damaged: header fields, truncation,
appended bytes), .npz archives (missing, extra, mistyped or damaged members), arrays and
other objects passed to the Python API, and forged manifests (meta and model record fields
set to hostile values, checksums recomputed). Each case must run and give the logits of the
original graph on the input as the documented contract converts it (uint8 normalized with
the stored mean/std, narrower integers widened), or be refused with one of modelzip's
errors. Failures: ``accepted_wrong`` (other logits, or an input outside the contract
accepted), ``refused_valid`` (an input inside the contract refused), ``crash:<Type>``,
``hang``, ``alloc_past_bound``. Its counts go into fuzz.json beside the reader's
(``runner_input``), with their own provenance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from modelzip.codec.artifact import protect_artifact, read_artifact, write_artifact
from modelzip.codec.bits import encode_varints
from modelzip.codec.container import (
    MAGIC,
    SHA_SIZE,
    SIGNATURE_BLOCK_SIZE,
    read_container,
    write_container,
)
from modelzip.codec.manifest import encode_value
from modelzip.errors import ArtifactError

ALLOC_BOUND_BYTES = 256 << 20  # reading a file of a few KB may never allocate more
HANG_SECONDS = 10
INTERESTING = [-1, 0, 1, 2, 3, 7, 8, 16, 17, 255, 256, 65536, 65537, 2**31, 2**32, 2**62,
               2**63, 2**64, 10**30, 1.5, -0.0, "x", "", None, True, False, [], {}, [0],
               [2**62, 0], [1] * 40, [2**28], [4, 4], "float32", "int32", "bool", "float16",
               "uint64", "dense", "sparse-gaps", "sparse-fixed", "sparse-lines", "huffman",
               "rans", "raw", "plain", {"coder": "raw", "bytes": 0}, {"size": 1, "bytes": 4},
               [2, 3], [0, 0]]


def base_arrays() -> dict[str, np.ndarray]:
    """Small tensors that make the writer choose every layout and value coding."""
    rng = np.random.default_rng(0)
    sparse = np.zeros(300, np.float32)
    sparse[rng.choice(300, 20, replace=False)] = rng.choice([-0.5, 0.25, 1.0], 20)
    far = np.zeros(2000, np.int8)
    far[[3, 900, 1999]] = [1, -2, 3]
    grid = (rng.integers(-7, 8, (4, 10)) * np.float32(0.125)).astype(np.float32)
    lines = np.zeros((12, 10), np.float32)  # dead rows and columns: the sparse-lines layout
    lines[np.ix_([1, 6, 7], [0, 3, 9])] = [[0.5, -1.0, 0.5], [2.0, 0.5, 0.5], [-1.0, 0.5, 2.0]]
    return {"lines": lines, "dense": rng.standard_normal((6, 7)).astype(np.float32),
            "sparse": sparse, "far": far,
            "shared": rng.choice([-1.0, 0.0, 2.0], (5, 8)).astype(np.float32),
            "grid": grid, "i64": np.arange(12, dtype=np.int64).reshape(3, 4),
            "mask": rng.random(30) > 0.5, "half": rng.standard_normal(9).astype(np.float16),
            "scalar": np.float32(3.5).reshape(()), "empty": np.zeros((0, 3), np.float32)}


def make_bases() -> tuple[dict[str, bytes], dict[str, np.ndarray], list[bytes]]:
    """Base files by name, the arrays they hold, and the trusted key of the signed one."""
    from modelzip.flight.sign import generate_keys, load_public_key

    arrays = base_arrays()
    hints = {"grid": {"scale": [0.125] * 4}}
    model = {"kind": "state-dict", "name": "fuzz", "structure": {}, "parameters": 1}
    bases = {coder: write_artifact(arrays, model=model, meta={"k": [1, 2]}, coder=coder,
                                   hints=hints, blobs={"graph": b"\x08\x01graph"})
             for coder in ("best", "raw", "huffman", "rans")}
    with tempfile.TemporaryDirectory() as tmp:
        private, public = generate_keys(tmp)
        bases["signed"] = protect_artifact(bases["best"], sign=private)
        trusted = [load_public_key(public)]
    bases["fec"] = protect_artifact(bases["huffman"], fec=0.08)
    return bases, arrays, trusted


# ---------------------------------------------------------------------------- mutations
def _damage(data: bytes, r: random.Random) -> tuple[str, bytes]:
    b = bytearray(data)
    kind = r.choice(["flip", "flip", "overwrite", "delete", "repeat", "truncate", "append"])
    if kind == "flip":
        for _ in range(r.randint(1, 16)):
            i = r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)
    elif kind == "overwrite":
        i = r.randrange(len(b))
        n = r.randint(1, 64)
        b[i:i + n] = bytes(r.randrange(256) for _ in range(min(n, len(b) - i)))
    elif kind == "delete":
        i = r.randrange(len(b))
        del b[i:i + r.randint(1, 64)]
    elif kind == "repeat":
        i = r.randrange(len(b))
        b[i:i] = b[i:i + r.randint(1, 64)]
    elif kind == "truncate":
        del b[r.randrange(len(b)):]
    else:
        b += bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
    return f"damaged:{kind}", bytes(b)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple, value: Any, delete: bool) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if delete and isinstance(obj, dict):
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def _reseal(blob: bytearray, signature: bytes | None) -> bytes:
    """Recompute the SHA-256 (and keep an old signature block, as a forger must)."""
    body = bytes(blob[:-SHA_SIZE])
    sealed = body + hashlib.sha256(body).digest()
    return sealed + signature if signature else sealed


def _forge(data: bytes, r: random.Random) -> tuple[str, bytes]:
    signature = None
    layout = read_container(data)
    if layout.signer is not None:
        signature, data = data[-SIGNATURE_BLOCK_SIZE:], data[:-SIGNATURE_BLOCK_SIZE]
    kind = r.choice(["manifest", "manifest", "manifest", "payload", "header", "table"])
    manifest = {k: v for k, v in layout.manifest.items() if k != "chunks"}
    manifest = json.loads(json.dumps(manifest))
    chunks = {n: bytearray(c) for n, c in layout.chunks.items()}
    if kind == "manifest":
        paths = [p for p in _paths(manifest) if p]
        path = r.choice(paths)
        _set(manifest, path, json.loads(json.dumps(r.choice(INTERESTING))), r.random() < 0.2)
    elif kind == "payload":
        name = r.choice(sorted(chunks))
        c = chunks[name]
        if c and r.random() < 0.7:
            for _ in range(r.randint(1, 4)):
                c[r.randrange(len(c))] ^= 1 << r.randrange(8)
        elif c:
            del c[r.randrange(len(c)):]
        else:
            c += bytes([r.randrange(256)])
    if kind in ("manifest", "payload"):
        try:
            blob = bytearray(write_container(manifest, [(n, bytes(c)) for n, c in
                                                        chunks.items()]))
        except (ArtifactError, ValueError):  # an edit JSON cannot hold: edit the header instead
            kind, blob = "header", bytearray(data)
        else:
            if signature:  # the forger keeps the flags of the signed file
                blob[6] |= 2
            return f"forged:{kind}", _reseal(blob, signature)
    blob = bytearray(data)
    if kind == "table":  # the chunk table itself: swap, drop or resize an entry
        table = [list(t) for t in layout.manifest["chunks"]]
        i = r.randrange(len(table))
        action = r.choice(["len", "drop", "swap", "crc"])
        if action == "len":
            table[i][1] = r.choice(INTERESTING)
        elif action == "drop":
            del table[i]
        elif action == "swap":
            j = r.randrange(len(table))
            table[i], table[j] = table[j], table[i]
        else:
            table[i][2] = r.choice(INTERESTING)
        text = encode_value({**layout.manifest, "chunks": table})
        start = layout.header_size + layout.manifest_size
        c_len = layout.file_size - start - SHA_SIZE - layout.signature_size
        blob = bytearray(_v3_header(data[6] & ~1, len(text), c_len) + text +
                         data[start:start + c_len] + bytes(SHA_SIZE))
        return "forged:table", _reseal(blob, signature)
    field = r.choice(["version", "flags", "manifest_len", "chunk_len"])
    flags, m_len = data[6], layout.manifest_size
    c_len = layout.file_size - layout.header_size - m_len - SHA_SIZE - layout.signature_size
    rest = data[layout.header_size:]
    if field == "version":
        struct.pack_into("<H", blob, 4, r.choice([0, 1, 2, 4, 7, 255, 65535,
                                                  r.randrange(65536)]))
        return f"forged:header-{field}", _reseal(blob, signature)
    # version 3: flags are one byte, then the two lengths as varints
    value = r.choice([0, 1, 2, 3, 4, 7, 127, 128, 255, 2**32, 2**63 - 1, r.randrange(2**40)])
    if field == "flags":
        flags = value & 0xFF
    elif field == "manifest_len":
        m_len = value
    else:
        c_len = value
    blob = bytearray(_v3_header(flags, m_len, c_len) + rest)
    return f"forged:header-{field}", _reseal(blob, signature)


def _v3_header(flags: int, manifest_len: int, chunk_len: int) -> bytes:
    """A format version 3 header: magic, version, one flags byte, the two lengths as varints."""
    return MAGIC + struct.pack("<HB", 3, flags) + encode_varints([manifest_len, chunk_len])


def _fec_damage(data: bytes, r: random.Random) -> tuple[str, bytes]:
    from modelzip.flight.seu import flip_bits

    ber = 10 ** r.uniform(-5, -2)
    rng = np.random.default_rng(r.randrange(2**32))
    return "fec:flips", flip_bits(data, ber, rng).tobytes()


def make_case(bases: dict[str, bytes], r: random.Random) -> tuple[str, str, bytes]:
    """(base name, mutation class, bytes) from a seeded generator."""
    name = r.choice(sorted(bases))
    data = bases[name]
    if name == "fec":
        kind, out = _fec_damage(data, r) if r.random() < 0.7 else _damage(data, r)
    elif r.random() < 0.45:
        kind, out = _damage(data, r)
    else:
        kind, out = _forge(data, r)
    return name, kind, out


# ---------------------------------------------------------------------------- oracle
CHECKS = [("FEC", "fec"), ("signature", "signature"), ("signed", "signature"),
          ("trusted", "signature"), ("SHA-256", "sha256"), ("tensor_crc32", "tensor_crc32"),
          ("decoded_crc32", "tensor_crc32"), ("decoded tensor", "tensor_crc32"),
          ("fails its CRC32", "chunk_crc32"), ("may decode to", "size_bound"),
          ("max_elements", "size_bound"), ("bound", "size_bound"),
          ("format version", "header"), ("not a .mzip", "header"), ("flags", "header"),
          ("header", "header"), ("truncated", "header"), ("after the end", "header"),
          ("tensor '", "tensor_entry"), ("manifest", "manifest")]


def refusal_check(message: str) -> str:
    for needle, check in CHECKS:
        if needle in message:
            return check
    return "other"


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError


def run_case(data: bytes, arrays: dict[str, np.ndarray], trusted: list[bytes] | None,
             measure_memory: bool = True) -> str:
    """The outcome class of reading ``data`` (see the module's docstring)."""
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(HANG_SECONDS)
    if measure_memory:
        tracemalloc.start()
    try:
        art = read_artifact(data, trusted_keys=trusted)
    except ArtifactError as exc:
        outcome = f"refused:{refusal_check(str(exc))}"
    except TimeoutError:
        outcome = "hang"
    except Exception as exc:  # the failures this campaign looks for
        outcome = f"crash:{type(exc).__name__}"
    else:
        same = art.tensors.keys() == arrays.keys() and all(
            art.tensors[k].dtype == v.dtype and art.tensors[k].shape == v.shape
            and art.tensors[k].tobytes() == v.tobytes() for k, v in arrays.items())
        outcome = "accepted_exact" if same else "accepted_wrong"
    finally:
        signal.alarm(0)
        if measure_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    if measure_memory and peak > ALLOC_BOUND_BYTES:
        outcome = "alloc_past_bound"
    return outcome


FAILURES = ("accepted_wrong", "crash", "hang", "alloc_past_bound")


def is_failure(outcome: str) -> bool:
    return outcome.split(":")[0] in FAILURES


def campaign(cases: int, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    bases, arrays, trusted = make_bases()
    counts: dict[str, Counter] = {}
    examples: dict[str, str] = {}
    start = time.monotonic()
    for i in range(cases):
        r = random.Random(seed * 1_000_003 + i)
        name, kind, data = make_case(bases, r)
        outcome = run_case(data, arrays, trusted if name == "signed" else None)
        group = kind.split(":")[0]
        counts.setdefault(group, Counter())[outcome] += 1
        if is_failure(outcome) and outcome not in examples:
            examples[outcome] = f"case {i} (seed {seed}): base {name}, {kind}"
        if progress and (i + 1) % 10000 == 0:
            print(f"{i + 1:,} cases, {time.monotonic() - start:.0f} s", flush=True)
    total = Counter()
    for c in counts.values():
        total.update(c)
    failures = sum(n for o, n in total.items() if is_failure(o))
    return {"cases": cases, "seed": seed, "failures": failures,
            "counts_by_class": {g: dict(sorted(c.items())) for g, c in sorted(counts.items())},
            "counts_total": dict(sorted(total.items())), "failure_examples": examples,
            "base_file_bytes": {k: len(v) for k, v in bases.items()},
            "seconds": round(time.monotonic() - start, 1)}


# ---------------------------------------------------------------------------- runner input
RUNNER_MEAN, RUNNER_STD = [0.5], [0.25]
RUNNER_CLASSES = ["zero", "one", "two"]
_NPY_DTYPES = ["uint8", "float32", "float64", "float16", "int8", "int16", "int32", "int64",
               "uint16", "bool", "complex64"]


def _image_onnx() -> bytes:
    """A one-input image model: (N, 1, 6, 6) float32 -> Conv -> Relu -> Gemm -> (N, 3)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((32, 3)).astype(np.float32), "fc")
    shape = numpy_helper.from_array(np.array([-1, 32], np.int64), "flat")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(
        nodes, "image", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, fc, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _text_onnx() -> bytes:
    """A two-input model: ids (N, 8) int64 and mask (N, 8) float32 -> (N, 3)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 3))
                                .astype(np.float32) * 0.01, "w")
    nodes = [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "mask"], ["m"]),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "text", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8]),
                        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class RunnerBases:
    """The two packed models, their runners, and reference sessions on the original graphs."""

    def __init__(self) -> None:
        from modelzip.runtime.onnx_artifact import pack_onnx
        from modelzip.runtime.ort import make_session
        from modelzip.runtime.runner import Runner

        self.graphs = {"image": _image_onnx(), "text": _text_onnx()}
        self.blobs = {
            "image": pack_onnx(self.graphs["image"], meta={
                "mean": RUNNER_MEAN, "std": RUNNER_STD, "classes": RUNNER_CLASSES}),
            "text": pack_onnx(self.graphs["text"])}
        self.runners = {k: Runner.from_bytes(v) for k, v in self.blobs.items()}
        self.sessions = {k: make_session(v) for k, v in self.graphs.items()}
        self.probe = np.random.default_rng(2).standard_normal((3, 1, 6, 6)).astype(np.float32)

    def reference(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions[name].run(None, feeds)[0]


def _random_array(r: random.Random, model: str, member: str | None = None) -> np.ndarray:
    """An array near the model's contract: the right dtype and shape, or one thing off."""
    rng = np.random.default_rng(r.randrange(2**32))
    n = (r.choice([1, 2, 3, 5]) if r.random() < 0.85 else r.randint(6, 40)
         ) if r.random() < 0.97 else 0
    if model == "image":
        shape = r.choice([(n, 1, 6, 6)] * 10 + [(n, 6, 6), (n, 6, 6, 1), (n, 1, 6, 7),
                                                (n, 3, 6, 6), (n, 36), (n,), (), (n, 1, 6, 6, 1)])
    else:
        shape = r.choice([(n, 8)] * 12 + [(n, 9), (n,), (), (n, 8, 1)])
    want = {"image": "float32", "ids": "int64", "mask": "float32"}[member or model]
    if model == "image" and r.random() < 0.3:
        want = "uint8"  # raw images, normalized by the runner
    dtype = want if r.random() < 0.7 else r.choice(_NPY_DTYPES)
    if np.dtype(dtype).kind == "f":
        a = rng.standard_normal(shape)
        if r.random() < 0.15:
            a = np.rint(rng.uniform(0, 255, shape))  # raw pixels given as floats
        if r.random() < 0.1 and a.size:
            a.ravel()[rng.integers(a.size)] = r.choice([np.nan, np.inf, -np.inf])
    elif dtype == "bool":
        a = rng.random(shape) > 0.5
    elif dtype == "complex64":
        a = rng.standard_normal(shape) + 1j
    else:
        info = np.iinfo(dtype)
        a = rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True)
    return np.asarray(a).astype(dtype)


def expected_feeds(model: str, inputs: Any) -> dict[str, np.ndarray] | None:
    """The feeds the runner's documented contract makes of ``inputs``, or None when the
    contract refuses them (written apart from the runner's code, as the oracle)."""
    def finite(a: np.ndarray) -> bool:
        return a.dtype.kind != "f" or bool(np.isfinite(a).all())

    if model == "image":
        if isinstance(inputs, dict):
            if sorted(inputs) != ["x"]:
                return None
            inputs = inputs["x"]
        if not isinstance(inputs, np.ndarray) or inputs.ndim == 0 or len(inputs) == 0:
            return None
        a = inputs
        if a.dtype == np.float32 and a.shape[1:] == (1, 6, 6):
            top = float(a.max())
            hi = (1 - RUNNER_MEAN[0]) / RUNNER_STD[0]
            raw = top > max(20.0, 2 * hi) or (
                1.5 < top <= 255 and float(a.min()) >= 0 and np.array_equal(a, np.rint(a)))
            return {"x": a} if finite(a) and not raw else None
        if a.dtype == np.uint8:
            if a.shape[1:] == (1, 6, 6):
                nchw = a
            elif a.shape[1:] in ((6, 6), (6, 6, 1)):
                nchw = a.reshape(len(a), 1, 6, 6)
            else:
                return None
            x = ((nchw.astype(np.float32) / np.float32(255.0) - np.float32(RUNNER_MEAN[0]))
                 / np.float32(RUNNER_STD[0]))
            return {"x": x}
        return None
    if not isinstance(inputs, dict) or sorted(inputs) != ["ids", "mask"]:
        return None
    ids, mask = inputs["ids"], inputs["mask"]
    if not all(isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[1] == 8
               for a in (ids, mask)) or len(ids) != len(mask) or len(ids) == 0:
        return None
    if mask.dtype != np.float32 or not finite(mask):
        return None
    if ids.dtype != np.int64 and not (ids.dtype.kind in "iu"
                                      and np.can_cast(ids.dtype, np.int64, "safe")):
        return None
    return {"ids": ids.astype(np.int64), "mask": mask}


def _damage_npy(data: bytes, r: random.Random) -> tuple[str, bytes]:
    """A .npy file's bytes with its header edited (shape, dtype, order) or damaged."""
    kind = r.choice(["shape", "descr", "order", "header-bytes", "truncate", "append",
                     "magic"])
    b = bytearray(data)
    if kind in ("shape", "descr", "order"):
        end = b.index(b"\n") if b"\n" in b else len(b)
        header = bytes(b[10:end]).decode("latin1")
        if kind == "shape":
            dims = r.choice(["(5000000, 1, 6, 6)", "(2**62,)", "(-1, 1, 6, 6)", "()",
                             "(0, 1, 6, 6)", "(3, 1, 6, 6)", "(1, 2, 3, 4, 5)"])
            header = header[:header.index("'shape'")] + f"'shape': {dims}, }}"
        elif kind == "descr":
            descr = r.choice(["'<f4'", "'>f8'", "'|O'", "'<U5'", "'|V3'", "'xyz'", "'<c16'"])
            header = header.replace(header[header.index("'descr'"):header.index(",")],
                                    f"'descr': {descr}")
        else:
            header = header.replace("False", "True")
        text = header.encode("latin1")
        pad = (64 - (10 + len(text) + 1) % 64) % 64
        b[8:] = struct.pack("<H", len(text) + pad + 1) + text + b" " * pad + b"\n" + b[end + 1:]
    elif kind == "header-bytes":
        for _ in range(r.randint(1, 6)):
            b[r.randrange(min(len(b), 80))] = r.randrange(256)
    elif kind == "truncate":
        del b[r.randrange(len(b)):]
    elif kind == "append":
        b += bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
    else:
        b[:6] = b"PK\x03\x04\x00\x00"
    return f"npy-damaged:{kind}", bytes(b)


def _npz_case(r: random.Random) -> tuple[str, bytes, Any]:
    members = {"ids": _random_array(r, "text", "ids"), "mask": _random_array(r, "text", "mask")}
    action = r.choice(["valid", "valid", "missing", "extra", "damaged"])
    if action == "missing":
        del members[r.choice(sorted(members))]
    elif action == "extra":
        members["other"] = np.zeros(2, np.float32)
    buf = __import__("io").BytesIO()
    np.savez(buf, **members)
    data = buf.getvalue()
    if action == "damaged":
        b = bytearray(data)
        for _ in range(r.randint(1, 8)):
            b[r.randrange(len(b))] = r.randrange(256)
        data = bytes(b)
        return "npz:damaged", data, None
    return f"npz:{action}", data, members


def make_runner_case(bases: RunnerBases, r: random.Random) -> tuple[str, str, Any]:
    """(model, case class, payload): payload is ("file", bytes, intended arrays) or
    ("api", inputs) or ("artifact", bytes)."""
    kind = r.choice(["npy", "npy", "npy-damaged", "npz", "api", "api", "manifest"])
    if kind == "npy":
        a = _random_array(r, "image")
        buf = __import__("io").BytesIO()
        np.save(buf, a, allow_pickle=False)
        return "image", "npy:array", ("file", buf.getvalue(), a)
    if kind == "npy-damaged":
        a = _random_array(r, "image")
        buf = __import__("io").BytesIO()
        np.save(buf, a, allow_pickle=False)
        label, data = _damage_npy(buf.getvalue(), r)
        return "image", label, ("file", data, None)
    if kind == "npz":
        label, data, members = _npz_case(r)
        return "text", label, ("file", data, members)
    if kind == "api":
        model = r.choice(["image", "text"])
        if model == "image":
            inputs = r.choice([_random_array(r, "image"), {"x": _random_array(r, "image")},
                               {"y": _random_array(r, "image")}, [1, 2, 3], None, "x.npy"])
        else:
            inputs = {"ids": _random_array(r, "text", "ids"),
                      "mask": _random_array(r, "text", "mask")}
            if r.random() < 0.2:
                inputs = r.choice([inputs["ids"], {"ids": inputs["ids"]}, [inputs], 3])
        return model, "api:inputs", ("api", inputs)
    return "image", "manifest:forged", ("artifact", _forge_runner_artifact(bases, r))


def _forge_runner_artifact(bases: RunnerBases, r: random.Random) -> bytes:
    """The image model's file with a meta or model-record field set to a hostile value,
    every checksum recomputed."""
    art = read_artifact(bases.blobs["image"])
    meta, model = json.loads(json.dumps(art.meta)), json.loads(json.dumps(art.model))
    target = meta if r.random() < 0.5 else model
    paths = [p for p in _paths(target) if p]
    if not paths or r.random() < 0.1:
        target[r.choice(["mean", "std", "classes", "inputs", "batch"])] = None
    else:
        _set(target, r.choice(paths), json.loads(json.dumps(r.choice(INTERESTING))),
             r.random() < 0.2)
    try:
        return write_artifact(dict(art.tensors), model=model, blobs=dict(art.blobs), meta=meta)
    except ArtifactError:
        return bases.blobs["image"]


_RUNNER_CHECKS = [("header declares", "npy_header"), ("not a readable .npy", "npy_format"),
                  (".npy format version", "npy_format"), ("no NUMPY header", "npy_format"),
                  ("stored tensors differ", "manifest"), ("of kind", "manifest"),
                  (".npz", "npz"), ("archive", "npz"), ("NaN or infinite", "non_finite"),
                  ("un-normalized", "raw_pixels"), ("manifest", "manifest"),
                  ("stored graph", "manifest"), ("shape", "shape_dtype"),
                  ("dtype", "shape_dtype"), ("inputs", "shape_dtype"),
                  ("input must be", "shape_dtype"), ("holds one array", "npz")]


def _runner_check(message: str) -> str:
    for needle, check in _RUNNER_CHECKS:
        if needle in message:
            return check
    return "other"


def run_runner_case(bases: RunnerBases, model: str, payload: tuple, folder: Path,
                    measure_memory: bool = True) -> str:
    """The outcome class of one runner input case (see the module docstring). A forged
    file that loads must give the graph's own spec and the original logits on float32
    inputs (the forger may restate mean/std or class names: only a signature stops that)."""
    from modelzip.errors import ModelzipError
    from modelzip.runtime.runner import Runner, load_inputs

    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(HANG_SECONDS)
    if measure_memory:
        tracemalloc.start()
    expected = None
    try:
        if payload[0] == "artifact":
            runner = Runner.from_bytes(payload[1])
            expected = {"x": bases.probe}
            inputs: Any = bases.probe
            if runner.spec != bases.runners["image"].spec:
                raise AssertionError("a forged record changed the spec")
        else:
            runner = bases.runners[model]
            if payload[0] == "file":
                path = folder / ("case.npz" if model == "text" else "case.npy")
                path.write_bytes(payload[1])
                inputs = load_inputs(path, [i.name for i in runner.spec.inputs])
            else:
                inputs = payload[1]
            try:
                expected = expected_feeds(model, inputs)
            except Exception:  # the oracle cannot read it: the runner must refuse it
                expected = None
        got = runner.logits(inputs)
    except ModelzipError as exc:
        valid = expected is not None and payload[0] != "artifact"
        outcome = "refused_valid" if valid else f"refused:{_runner_check(str(exc))}"
    except TimeoutError:
        outcome = "hang"
    except AssertionError:
        outcome = "accepted_wrong"
    except Exception as exc:  # the failures this campaign looks for
        outcome = f"crash:{type(exc).__name__}"
    else:
        same = expected is not None and np.array_equal(
            got, bases.reference("image" if payload[0] == "artifact" else model, expected))
        outcome = "accepted_exact" if same else "accepted_wrong"
    finally:
        signal.alarm(0)
        if measure_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    if measure_memory and peak > ALLOC_BOUND_BYTES:
        outcome = "alloc_past_bound"
    return outcome


def runner_campaign(cases: int, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    bases = RunnerBases()
    counts: dict[str, Counter] = {}
    examples: dict[str, str] = {}
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cases):
            r = random.Random(seed * 1_000_003 + i)
            model, kind, payload = make_runner_case(bases, r)
            outcome = run_runner_case(bases, model, payload, Path(tmp))
            group = kind.split(":")[0]
            counts.setdefault(group, Counter())[outcome] += 1
            if is_runner_failure(outcome) and outcome not in examples:
                examples[outcome] = f"case {i} (seed {seed}): {model}, {kind}"
            if progress and (i + 1) % 5000 == 0:
                print(f"{i + 1:,} runner cases, {time.monotonic() - start:.0f} s", flush=True)
    total = Counter()
    for c in counts.values():
        total.update(c)
    failures = sum(n for o, n in total.items() if is_runner_failure(o))
    return {"cases": cases, "seed": seed, "failures": failures,
            "counts_by_class": {g: dict(sorted(c.items())) for g, c in sorted(counts.items())},
            "counts_total": dict(sorted(total.items())), "failure_examples": examples,
            "seconds": round(time.monotonic() - start, 1)}


def is_runner_failure(outcome: str) -> bool:
    return outcome.split(":")[0] in (*FAILURES, "refused_valid")


def _runner_main(args: argparse.Namespace, cases: int, out_dir: Path) -> None:
    from benchlib import AT_START
    from modelzip.checkpoint import write_atomic

    result = runner_campaign(cases, args.seed, progress=True)
    path = out_dir / "fuzz.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"benchmark": "fuzz",
                                                               "models": []}
    doc["runner_input"] = {
        "description": "the runner's input handling: .npy/.npz files, arrays, forged "
                       "manifests (bench/fuzz.py --target runner)",
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: AT_START[k] for k in ("git_commit", "git_dirty")},
        "settings": {"cases": cases, "seed": args.seed, "hang_seconds": HANG_SECONDS,
                     "alloc_bound_bytes": ALLOC_BOUND_BYTES},
        **{k: result[k] for k in ("failures", "counts_by_class", "counts_total",
                                  "failure_examples", "seconds")}}
    row = {"model": "runner input", "cases": cases, "failures": result["failures"],
           **{f"total_{k.replace(':', '_')}": v for k, v in result["counts_total"].items()}}
    doc["models"] = [m for m in doc.get("models", []) if m.get("model") != "runner input"]
    doc["models"].append(row)
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
    print(json.dumps(result["counts_by_class"], indent=1))
    print(f"{result['failures']} failures in {cases:,} runner cases; wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2,000 cases into a temporary folder")
    p.add_argument("--target", choices=("reader", "runner"), default="reader",
                   help="the artifact reader (default) or the runner's input handling "
                        "(its counts are added to an existing fuzz.json)")
    args = p.parse_args()
    cases = 2000 if args.quick else args.cases
    out_dir = Path(tempfile.mkdtemp()) if args.quick else Path(__file__).parent / "results"
    sys.path.insert(0, str(Path(__file__).parent))
    if args.target == "runner":
        _runner_main(args, cases, out_dir)
        return
    from benchlib import write_results

    result = campaign(cases, args.seed, progress=True)
    row = {"model": "artifact reader", "cases": result["cases"],
           "failures": result["failures"], **{f"total_{k.replace(':', '_')}": v
                                               for k, v in result["counts_total"].items()}}
    path = out_dir / "fuzz.json"
    write_results(path, "fuzz", __doc__.split("\n")[0], [row],
                  settings={"cases": cases, "seed": args.seed, "hang_seconds": HANG_SECONDS,
                            "alloc_bound_bytes": ALLOC_BOUND_BYTES},
                  counts_by_class=result["counts_by_class"],
                  failure_examples=result["failure_examples"],
                  base_file_bytes=result["base_file_bytes"], seconds=result["seconds"])
    print(json.dumps(result["counts_by_class"], indent=1))
    print(f"{result['failures']} failures in {cases:,} cases; wrote {path}")


if __name__ == "__main__":
    main()
