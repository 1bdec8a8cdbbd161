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
from modelzip.codec.container import (
    HEADER_SIZE,
    SHA_SIZE,
    SIGNATURE_BLOCK_SIZE,
    read_container,
    write_container,
)
from modelzip.errors import ArtifactError

ALLOC_BOUND_BYTES = 256 << 20  # reading a file of a few KB may never allocate more
HANG_SECONDS = 10
INTERESTING = [-1, 0, 1, 2, 3, 7, 8, 16, 17, 255, 256, 65536, 65537, 2**31, 2**32, 2**62,
               2**63, 2**64, 10**30, 1.5, -0.0, "x", "", None, True, False, [], {}, [0],
               [2**62, 0], [1] * 40, [2**28], [4, 4], "float32", "int32", "bool", "float16",
               "uint64", "dense", "sparse-gaps", "sparse-fixed", "huffman", "rans", "raw",
               "plain", {"coder": "raw", "bytes": 0}, {"size": 1, "bytes": 4}]


def base_arrays() -> dict[str, np.ndarray]:
    """Small tensors that make the writer choose every layout and value coding."""
    rng = np.random.default_rng(0)
    sparse = np.zeros(300, np.float32)
    sparse[rng.choice(300, 20, replace=False)] = rng.choice([-0.5, 0.25, 1.0], 20)
    far = np.zeros(2000, np.int8)
    far[[3, 900, 1999]] = [1, -2, 3]
    grid = (rng.integers(-7, 8, (4, 10)) * np.float32(0.125)).astype(np.float32)
    return {"dense": rng.standard_normal((6, 7)).astype(np.float32), "sparse": sparse,
            "far": far, "shared": rng.choice([-1.0, 0.0, 2.0], (5, 8)).astype(np.float32),
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
                flags = struct.unpack_from("<H", blob, 6)[0] | 2
                struct.pack_into("<H", blob, 6, flags)
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
        text = json.dumps({**layout.manifest, "chunks": table}, sort_keys=True,
                          separators=(",", ":")).encode()
        magic, version, flags, _, c_len = struct.unpack_from("<4sHHIQ", data, 0)
        chunk_area = data[HEADER_SIZE + layout.manifest_size:
                          HEADER_SIZE + layout.manifest_size + c_len]
        header = struct.pack("<4sHHIQ", magic, version, flags & ~1, len(text), c_len)
        blob = bytearray(header + text + chunk_area + bytes(SHA_SIZE))
        return "forged:table", _reseal(blob, signature)
    field = r.choice(["version", "flags", "manifest_len", "chunk_len"])
    fmt, at = {"version": ("<H", 4), "flags": ("<H", 6), "manifest_len": ("<I", 8),
               "chunk_len": ("<Q", 12)}[field]
    limit = 1 << (8 * struct.calcsize(fmt))
    value = r.choice([0, 1, 2, 3, 4, 7, 255, limit - 1, r.randrange(limit)])
    struct.pack_into(fmt, blob, at, value)
    return f"forged:header-{field}", _reseal(blob, signature)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2,000 cases into a temporary folder")
    args = p.parse_args()
    cases = 2000 if args.quick else args.cases
    out_dir = Path(tempfile.mkdtemp()) if args.quick else Path(__file__).parent / "results"
    sys.path.insert(0, str(Path(__file__).parent))
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
