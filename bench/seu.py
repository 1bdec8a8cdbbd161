"""Single-event upsets: what random bit flips do to a stored .mzip and to weights in memory,
and what Reed-Solomon parity (``pack --fec``) keeps.

    MODELZIP_DATA=../shared/data python bench/seu.py
    MODELZIP_DATA=../shared/data python bench/seu.py --quick   # smoke test

Bit error rates 1e-9 .. 1e-3, every bit flipping independently (``modelzip.flight.seu``).

(i) Stored file, before decoding: lenet5 as Deep Compression left it
(bench/results/mzip/dc-lenet5.mzip, re-packed in the current format), as a plain .mzip and
with 8% FEC parity (``modelzip.codec.protect_artifact``): per trial the reader either returns
bit-exact weights or refuses the file (a wrong weight is counted apart and must never occur).
Beside them, a raw fp32 weight file (the dense lenet5 checkpoint's bytes, read without any
check) and its test accuracy.

(ii) In memory, after loading: flips in the weights as each representation holds them, then
test accuracy: fp32 (every parameter and buffer), int8 (per-channel symmetric 8-bit codes of
every weight with ndim >= 2, from ``modelzip.quant.uniform``, their float32 scales; other
tensors fp32), k-means (every weight as a codebook of float32 centroids and one index per
weight in ceil(log2 K) bits: lenet5's Deep Compression codebooks, eurosat_cnn with
``modelzip.quant.kmeans.kmeans_1d`` at K=16; an index flipped past the codebook wraps
modulo K). Which bits matter: accuracy after exactly one flipped bit per field (fp32 sign,
exponent, mantissa; int8 codes and scales; k-means indices and codebook), and per fp32 bit
position (each weight's bit b flipped with probability 1e-4).

(iii) eurosat_cnn on the on-board runner (``modelzip.runtime.runner``), in place of (ii) for
that model: three variants packed with their ONNX graph (``pack_model_onnx``): fp32, int8
(static QDQ, the runner's int8 path) and k-means (``modelzip.quantize`` with
``WeightSharingConfig(bits=4)``, 16 shared values per layer, which the runner holds decoded
as fp32), each also packed with ``clip_activations`` (``modelzip.flight.ranger``: every
activation bounded to its range on the 300 calibration images). Flips hit the weight arrays
the runner holds (fp32 arrays; int8 codes and zero points, float32 scales, int32 biases), the
session is built on them, and accuracy is measured without protection, with clipping, and
after ``Runner.scrub()``: the flips made in the runner's own arrays, the scrub's checksums
must find them, and the arrays after it must equal the clean ones bit for bit (accuracy
after the scrub is measured on the first such trial per rate). Which bits matter: one flipped
bit per field, and fp32 bit positions at 1e-4 per weight, as in (ii).

Accuracy is measured on a seeded subset of each test split (lenet5: 2,000 MNIST images,
eurosat_cnn: 1,000 EuroSAT images; --quick: 300 and 100), stated in the results.
Writes bench/results/seu.json and seu.png. ``--part FILE`` runs only ``--models`` and writes
their rows to FILE; ``--merge FILE...`` writes seu.json and seu.png from such parts (so that
the models can run in parallel); ``--reuse FILE`` takes the rows of the models not run from
an earlier seu.json (recorded in the settings with that file's commit).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchlib import write_results
from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import protect_artifact, read_artifact
from modelzip.codec.model import pack, unpack
from modelzip.data import load_dataset
from modelzip.errors import ArtifactError
from modelzip.flight.fec import capacity
from modelzip.flight.seu import FLOAT32_FIELDS, flip_array_bits, flip_bits, flip_positions
from modelzip.pipeline import calibration_subset, seeded_subset
from modelzip.quant.kmeans import kmeans_1d
from modelzip.quant.uniform import quant_params, quantize

ROOT = Path(__file__).resolve().parent
RATES = [1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3]
FEC_PARITY = 0.08


# ---------------------------------------------------------------------------- evaluation
class Evaluator:
    """Test accuracy of a model whose state is swapped per trial."""

    def __init__(self, model: torch.nn.Module, dataset: str, n: int) -> None:
        data = seeded_subset(load_dataset(dataset, "test"), n, seed=0)
        self.x = data.normalize(data.images)
        self.y = data.labels
        self.model = copy.deepcopy(model).eval()
        self.calls = 0

    @torch.no_grad()
    def accuracy(self, state: dict[str, np.ndarray]) -> float:
        self.calls += 1
        self.model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                    for k, v in state.items()})
        with np.errstate(all="ignore"):
            pred = torch.cat([self.model(self.x[i:i + 500]).argmax(1)
                              for i in range(0, len(self.x), 500)])
        return 100.0 * float((pred == self.y).float().mean())


# ---------------------------------------------------------------------------- representations
class Representation:
    """Weights as held in memory: named fields of arrays (flipped), rebuilt into a state."""

    name = "fp32"

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state
        self.fields: dict[str, dict[str, np.ndarray]] = {"fp32": dict(state)}
        self.bit_ranges: dict[str, tuple[int, int] | None] = {"fp32": None}

    def rebuild(self, fields: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return dict(fields["fp32"])

    def bits(self) -> int:
        return sum(_field_bits(arrs, self.bit_ranges[f]) for f, arrs in self.fields.items())

    def flipped(self, ber: float, rng: np.random.Generator,
                only: str | None = None) -> tuple[dict[str, np.ndarray], int]:
        """The state after flips at ``ber`` (in field ``only``, or everywhere), and how many."""
        out, flips = {}, 0
        for field, arrays in self.fields.items():
            out[field] = {}
            for key, a in arrays.items():
                if only is not None and field != only:
                    out[field][key] = a
                    continue
                b = flip_array_bits(a, ber, rng, self.bit_ranges[field])
                flips += int(np.count_nonzero(b.view(f"u{a.dtype.itemsize}")
                                              != a.view(f"u{a.dtype.itemsize}")))
                out[field][key] = b
        return self.rebuild(out), flips

    def one_flip(self, field: str, rng: np.random.Generator,
                 bits: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The state with exactly one bit flipped, uniformly among the field's bits (within
        ``bits`` of each element when given)."""
        arrays = self.fields[field]
        span = bits or self.bit_ranges[field] or None
        sizes = np.array([a.size * ((span[1] - span[0]) if span else a.dtype.itemsize * 8)
                          for a in arrays.values()])
        pick = int(rng.integers(sizes.sum()))
        i = int(np.searchsorted(np.cumsum(sizes), pick, side="right"))
        key = list(arrays)[i]
        a = arrays[key]
        offset = pick - int(np.cumsum(sizes)[i - 1] if i else 0)
        width = (span[1] - span[0]) if span else a.dtype.itemsize * 8
        element, bit = divmod(offset, width)
        bit += span[0] if span else 0
        words = a.view(f"u{a.dtype.itemsize}").ravel().copy()
        words[element] ^= np.array(1, words.dtype) << np.array(bit, words.dtype)
        changed = {f: dict(arrs) for f, arrs in self.fields.items()}
        changed[field][key] = words.view(a.dtype).reshape(a.shape)
        return self.rebuild(changed)


def _field_bits(arrays: dict[str, np.ndarray], bits: tuple[int, int] | None) -> int:
    return sum(a.size * ((bits[1] - bits[0]) if bits else a.dtype.itemsize * 8)
               for a in arrays.values())


def _is_weight(key: str, a: np.ndarray) -> bool:
    return a.ndim >= 2 and a.dtype == np.float32


class Int8(Representation):
    name = "int8"

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        super().__init__(state)
        self.params = {}
        codes, scales, rest = {}, {}, {}
        for key, a in state.items():
            if not _is_weight(key, a):
                rest[key] = a
                continue
            p = quant_params(torch.from_numpy(a), "symmetric", 8, per_channel=True)
            codes[key] = quantize(torch.from_numpy(a), p).numpy().astype(np.int8)
            scales[key] = p.scale.numpy().astype(np.float32)
            self.params[key] = p
        self.fields = {"codes": codes, "scales": scales, "fp32": rest}
        self.bit_ranges = {"codes": None, "scales": None, "fp32": None}

    def rebuild(self, fields: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        out = dict(fields["fp32"])
        for key, c in fields["codes"].items():
            scale = fields["scales"][key].astype(np.float64)
            w = c.astype(np.float64) * scale.reshape(-1, *[1] * (c.ndim - 1))
            with np.errstate(all="ignore"):
                out[key] = w.astype(np.float32)
        return out


class KMeans(Representation):
    name = "kmeans"

    def __init__(self, state: dict[str, np.ndarray], k: int = 16) -> None:
        super().__init__(state)
        books, indices, rest = {}, {}, {}
        widths = []
        for key, a in state.items():
            if not _is_weight(key, a):
                rest[key] = a
                continue
            distinct, inverse = np.unique(a, return_inverse=True)
            if distinct.size > 256:  # not weight-shared yet: cluster it
                centroids, labels = kmeans_1d(torch.from_numpy(a.ravel()), k)
                distinct = centroids.numpy().astype(np.float32)
                inverse = labels.numpy()
            books[key] = distinct.astype(np.float32)
            indices[key] = inverse.reshape(a.shape).astype(np.uint8)
            widths.append(max(1, int(distinct.size - 1).bit_length()))
        self.width = max(widths)
        self.fields = {"indices": indices, "codebook": books, "fp32": rest}
        self.bit_ranges = {"indices": (0, self.width), "codebook": None, "fp32": None}

    def rebuild(self, fields: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        out = dict(fields["fp32"])
        for key, idx in fields["indices"].items():
            book = fields["codebook"][key]
            out[key] = book[idx.astype(np.int64) % book.size]
        return out


# ---------------------------------------------------------------------------- experiments
def stored_file_study(blob: bytes, raw_state: dict[str, np.ndarray], ev: Evaluator,
                      trials: dict[float, int], raw_trials: int, seed: int) -> list[dict]:
    """(i): a plain and an FEC .mzip, and a raw fp32 file, hit at each rate."""
    expected = read_artifact(blob).tensors
    protected = protect_artifact(blob, fec=FEC_PARITY)
    keys = list(raw_state)
    raw = b"".join(raw_state[k].astype("<f4").tobytes() for k in keys)
    rows = []
    for ber in RATES:
        row: dict[str, Any] = {"ber": ber}
        for label, data in (("plain", blob), ("fec", protected)):
            rng = np.random.default_rng([seed, int(-np.log10(ber)), label == "fec"])
            counts = {"exact": 0, "refused": 0, "wrong": 0}
            corrected = 0
            for _ in range(trials[ber]):
                hit = flip_bits(data, ber, rng).tobytes()
                try:
                    art = read_artifact(hit)
                except ArtifactError:
                    counts["refused"] += 1
                    continue
                same = all(art.tensors[k].tobytes() == v.tobytes() for k, v in expected.items())
                counts["exact" if same else "wrong"] += 1
                if art.fec is not None:
                    corrected += art.fec.corrected_bytes
            n = trials[ber]
            row.update({f"{label}_trials": n, f"{label}_exact_pct": 100 * counts["exact"] / n,
                        f"{label}_refused_pct": 100 * counts["refused"] / n,
                        f"{label}_wrong_weights": counts["wrong"]})
            if label == "fec":
                row["fec_corrected_bytes_mean"] = corrected / max(1, counts["exact"])
        rng = np.random.default_rng([seed, int(-np.log10(ber)), 7])
        accs = []
        for _ in range(raw_trials):
            hit = flip_bits(raw, ber, rng)
            if np.array_equal(hit, np.frombuffer(raw, np.uint8)):
                accs.append(ev.baseline)
                continue
            arrays, at = {}, 0
            for k in keys:
                n = raw_state[k].nbytes
                arrays[k] = hit[at:at + n].view("<f4").reshape(raw_state[k].shape)
                at += n
            accs.append(ev.accuracy(arrays))
        row.update(raw_fp32_accuracy_mean=float(np.mean(accs)),
                   raw_fp32_accuracy_min=float(np.min(accs)), raw_fp32_trials=raw_trials)
        rows.append(row)
        print(f"  stored ber {ber:g}: {row}", flush=True)
    return rows


def memory_study(reps: list[Representation], ev: Evaluator, trials: int,
                 seed: int) -> list[dict]:
    """(ii): flips in each representation's memory image at each rate."""
    rows = []
    for rep in reps:
        base = ev.accuracy(rep.rebuild(rep.fields))
        for ber in RATES:
            rng = np.random.default_rng([seed, int(-np.log10(ber)), len(rep.name)])
            accs = []
            for _ in range(trials):
                # no flip at all (likely at low rates): the clean accuracy, no evaluation
                if flip_positions(rep.bits(), ber, np.random.default_rng(rng.integers(2**32))
                                  ).size == 0:
                    accs.append(base)
                    continue
                state, _ = rep.flipped(ber, rng)
                accs.append(ev.accuracy(state))
            rows.append({"representation": rep.name, "ber": ber, "trials": trials,
                         "bits": rep.bits(), "clean_accuracy": base,
                         "accuracy_mean": float(np.mean(accs)),
                         "accuracy_min": float(np.min(accs)),
                         "expected_flips": rep.bits() * ber})
        print(f"  memory {rep.name}: " + ", ".join(
            f"{r['ber']:g}:{r['accuracy_mean']:.1f}" for r in rows if r["representation"]
            == rep.name), flush=True)
    return rows


def which_bits(reps: list[Representation], ev: Evaluator, trials: int, bit_trials: int,
               seed: int) -> tuple[list[dict], list[dict]]:
    """One flipped bit per field; and each fp32 bit position flipped at 1e-4 per weight."""
    fp32, int8, km = reps
    fields = [("fp32 sign", fp32, "fp32", FLOAT32_FIELDS["sign"]),
              ("fp32 exponent", fp32, "fp32", FLOAT32_FIELDS["exponent"]),
              ("fp32 mantissa", fp32, "fp32", FLOAT32_FIELDS["mantissa"]),
              ("int8 codes", int8, "codes", None), ("int8 scales", int8, "scales", None),
              ("kmeans indices", km, "indices", None),
              ("kmeans codebook", km, "codebook", None)]
    rows = []
    for label, rep, field, bits in fields:
        rng = np.random.default_rng([seed, len(label)])
        base = ev.accuracy(rep.rebuild(rep.fields))
        accs = [ev.accuracy(rep.one_flip(field, rng, bits)) for _ in range(trials)]
        rows.append({"field": label, "trials": trials, "clean_accuracy": base,
                     "accuracy_mean": float(np.mean(accs)), "accuracy_min": float(np.min(accs)),
                     "trials_losing_over_1_point_pct":
                         100 * float(np.mean([a < base - 1 for a in accs]))})
    per_bit = []
    for b in range(32):
        rng = np.random.default_rng([seed, 100 + b])
        accs = []
        for _ in range(bit_trials):
            state = {k: flip_array_bits(v, 1e-4, rng, (b, b + 1)) if v.dtype == np.float32
                     else v for k, v in fp32.state.items()}
            accs.append(ev.accuracy(state))
        per_bit.append({"bit": b, "field": next(n for n, (lo, hi) in FLOAT32_FIELDS.items()
                                                if lo <= b < hi),
                        "accuracy_mean": float(np.mean(accs)),
                        "accuracy_min": float(np.min(accs))})
    return rows, per_bit


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def study_model(name: str, dataset: str, model: torch.nn.Module, shared: torch.nn.Module | None,
                n_test: int, args: argparse.Namespace, stored_blob: bytes | None) -> dict:
    ev = Evaluator(model, dataset, n_test)
    state = numpy_state(model)
    ev.baseline = ev.accuracy(state)
    reps = [Representation(state), Int8(state),
            KMeans(numpy_state(shared) if shared is not None else state)]
    out: dict[str, Any] = {"model": name, "dataset": dataset, "test_images": len(ev.y),
                           "fp32_accuracy": ev.baseline,
                           "int8_accuracy": ev.accuracy(reps[1].rebuild(reps[1].fields)),
                           "kmeans_accuracy": ev.accuracy(reps[2].rebuild(reps[2].fields)),
                           "kmeans_index_bits": reps[2].width}
    t0 = time.monotonic()
    if stored_blob is not None:
        trials = {ber: args.stored_trials for ber in RATES}
        trials[1e-4] = args.target_trials
        trials[1e-3] = args.fec_1e3_trials  # ~360 flips: every trial corrects ~360 codewords
        out["stored"] = stored_file_study(stored_blob, state, ev, trials, args.raw_trials,
                                          args.seed)
        out["stored_file_bytes"] = len(stored_blob)
        out["fec_file_bytes"] = len(protect_artifact(stored_blob, fec=FEC_PARITY))
        out["fec_capacity"] = capacity(FEC_PARITY, len(stored_blob))
    out["memory"] = memory_study(reps, ev, args.memory_trials, args.seed)
    out["single_flip"], out["fp32_bit_position"] = which_bits(
        reps, ev, args.flip_trials, args.bit_trials, args.seed)
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["evaluations"] = ev.calls
    return out


# ---------------------------------------------------------------------------- on the runner
class RunnerVariant:
    """One packed artifact on the on-board runner: its clean arrays, grouped into fields by
    what they hold, and the accuracy of a session built on given arrays."""

    def __init__(self, name: str, blob: bytes, x: np.ndarray, y: np.ndarray) -> None:
        from modelzip.runtime.onnx_artifact import load_onnx_package

        self.name, self.blob, self.x, self.y = name, blob, x, y
        self.package = load_onnx_package(read_artifact(blob))
        self.arrays = {k: v.copy() for k, v in self.package.initializers.items()}
        self.fields: dict[str, list[str]] = {}
        for key, a in self.arrays.items():
            kind = {"i": "int8 codes" if a.dtype.itemsize == 1 else "int32 biases",
                    "u": "int8 codes", "f": "fp32" if name != "int8" else "scales"
                    }[a.dtype.kind]
            self.fields.setdefault(kind, []).append(key)
        self.bits = sum(a.nbytes * 8 for a in self.arrays.values())
        self.calls = 0
        self.clean = self.accuracy(self.arrays)

    def accuracy(self, arrays: dict[str, np.ndarray]) -> float:
        from modelzip.runtime.runner import Runner

        self.calls += 1
        runner = Runner(dataclasses.replace(self.package, initializers=arrays))
        with np.errstate(all="ignore"):
            pred, _ = runner.predict(self.x, batch_size=500)
        return 100.0 * float(np.mean(pred == self.y))

    def flipped(self, ber: float, rng: np.random.Generator, field: str | None = None,
                bits: tuple[int, int] | None = None) -> tuple[dict[str, np.ndarray], int]:
        """The arrays after flips at ``ber`` (in ``field`` only when given), and how many."""
        out, flips = dict(self.arrays), 0
        for kind, keys in self.fields.items():
            if field is not None and kind != field:
                continue
            for key in keys:
                a = self.arrays[key]
                b = flip_array_bits(a, ber, rng, bits if a.dtype == np.float32 else None)
                flips += int(np.count_nonzero(b.view(f"u{a.dtype.itemsize}")
                                              != a.view(f"u{a.dtype.itemsize}")))
                out[key] = b
        return out, flips

    def one_flip(self, field: str, rng: np.random.Generator,
                 bits: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The arrays with exactly one bit of ``field`` flipped (within ``bits``)."""
        keys = self.fields[field]
        span = bits or (0, 0)
        sizes = np.array([self.arrays[k].size * ((span[1] - span[0]) or
                                                 self.arrays[k].dtype.itemsize * 8)
                          for k in keys])
        pick = int(rng.integers(sizes.sum()))
        i = int(np.searchsorted(np.cumsum(sizes), pick, side="right"))
        a = self.arrays[keys[i]]
        width = (span[1] - span[0]) or a.dtype.itemsize * 8
        element, bit = divmod(pick - int(np.cumsum(sizes)[i - 1] if i else 0), width)
        words = a.view(f"u{a.dtype.itemsize}").ravel().copy()
        words[element] ^= np.array(1, words.dtype) << np.array(bit + span[0], words.dtype)
        return {**self.arrays, keys[i]: words.view(a.dtype).reshape(a.shape)}


def runner_variants(model: torch.nn.Module, x: np.ndarray, y: np.ndarray,
                    calibration: np.ndarray) -> dict[tuple[str, bool], RunnerVariant]:
    """fp32, int8 and k-means eurosat_cnn packed for the runner, without and with clipping."""
    import modelzip
    from modelzip.quant.weight_sharing import WeightSharingConfig
    from modelzip.runtime.onnx_artifact import pack_model_onnx

    shared = modelzip.quantize(copy.deepcopy(model), WeightSharingConfig(bits=4))
    out = {}
    for name, net, int8 in (("fp32", model, False), ("int8", model, True),
                            ("kmeans", shared, False)):
        for clip in (False, True):
            blob = pack_model_onnx(net, int8=int8, calibration=calibration,
                                   clip_activations=clip)
            out[name, clip] = RunnerVariant(name, blob, x, y)
    return out


def protection_study(variants: dict[tuple[str, bool], RunnerVariant], trials: int,
                     seed: int) -> list[dict]:
    """Flips in the runner's arrays at each rate: accuracy without protection, with clipped
    activations (the same flips), and what a scrub finds and restores."""
    from modelzip.runtime.runner import Runner

    rows = []
    for name in ("fp32", "int8", "kmeans"):
        plain, clipped = variants[name, False], variants[name, True]
        runner = Runner.from_bytes(plain.blob)
        for ber in RATES:
            accs, clip_accs, flipped_trials, detected, restored = [], [], 0, 0, 0
            scrub_acc = None
            for t in range(trials):
                rng_seed = [seed, int(-np.log10(ber)), t, len(name)]
                arrays, flips = plain.flipped(ber, np.random.default_rng(rng_seed))
                if flips == 0:  # no flip at all (likely at low rates): nothing to evaluate
                    accs.append(plain.clean)
                    clip_accs.append(clipped.clean)
                    continue
                flipped_trials += 1
                accs.append(plain.accuracy(arrays))
                clip_arrays, _ = clipped.flipped(ber, np.random.default_rng(rng_seed))
                clip_accs.append(clipped.accuracy(clip_arrays))
                # the same flips in the arrays the runner holds, then its scrub
                for key, value in arrays.items():
                    np.copyto(runner.package.initializers[key], value)
                report = runner.scrub()
                detected += bool(report.damaged)
                restored += all(np.array_equal(runner.package.initializers[k].view(np.uint8),
                                               v.view(np.uint8))
                                for k, v in plain.arrays.items())
                if scrub_acc is None:
                    with np.errstate(all="ignore"):
                        pred, _ = runner.predict(plain.x, batch_size=500)
                    scrub_acc = 100.0 * float(np.mean(pred == plain.y))
            rows.append({
                "representation": name, "ber": ber, "trials": trials, "bits": plain.bits,
                "expected_flips": plain.bits * ber, "clean_accuracy": plain.clean,
                "accuracy_mean": float(np.mean(accs)), "accuracy_min": float(np.min(accs)),
                "clip_clean_accuracy": clipped.clean,
                "clip_accuracy_mean": float(np.mean(clip_accs)),
                "clip_accuracy_min": float(np.min(clip_accs)),
                "scrub_trials_with_flips": flipped_trials,
                "scrub_detected_pct": 100 * detected / flipped_trials if flipped_trials else None,
                "scrub_restored_exact_pct":
                    100 * restored / flipped_trials if flipped_trials else None,
                "scrub_accuracy": scrub_acc if scrub_acc is not None else plain.clean})
            r = rows[-1]
            print(f"  runner {name} ber {ber:g}: none {r['accuracy_mean']:.1f}, clip "
                  f"{r['clip_accuracy_mean']:.1f}, scrub {r['scrub_accuracy']:.1f} "
                  f"(found {detected}/{flipped_trials})", flush=True)
    return rows


def runner_which_bits(variants: dict[tuple[str, bool], RunnerVariant], trials: int,
                      bit_trials: int, seed: int) -> tuple[list[dict], list[dict]]:
    """One flipped bit per field of each variant as the runner holds it (clipping off and
    on), and each fp32 bit position flipped at 1e-4 per weight."""
    fp32 = variants["fp32", False]
    fields = [("fp32 sign", "fp32", "fp32", FLOAT32_FIELDS["sign"]),
              ("fp32 exponent", "fp32", "fp32", FLOAT32_FIELDS["exponent"]),
              ("fp32 mantissa", "fp32", "fp32", FLOAT32_FIELDS["mantissa"]),
              ("int8 codes", "int8", "int8 codes", None),
              ("int8 scales", "int8", "scales", None),
              ("int8 biases (int32)", "int8", "int32 biases", None),
              ("kmeans (decoded fp32) exponent", "kmeans", "fp32", FLOAT32_FIELDS["exponent"])]
    rows = []
    for label, name, field, bits in fields:
        row: dict[str, Any] = {"field": label, "trials": trials}
        for clip in (False, True):
            v = variants[name, clip]
            if field not in v.fields:
                break
            rng = np.random.default_rng([seed, len(label)])  # the same bits with and without
            accs = [v.accuracy(v.one_flip(field, rng, bits)) for _ in range(trials)]
            prefix = "clip_" if clip else ""
            row.update({f"{prefix}clean_accuracy": v.clean,
                        f"{prefix}accuracy_mean": float(np.mean(accs)),
                        f"{prefix}accuracy_min": float(np.min(accs)),
                        f"{prefix}trials_losing_over_1_point_pct":
                            100 * float(np.mean([a < v.clean - 1 for a in accs]))})
        if "accuracy_mean" in row:
            rows.append(row)
    per_bit = []
    for b in range(32):
        rng = np.random.default_rng([seed, 100 + b])
        accs = [fp32.accuracy(fp32.flipped(1e-4, rng, "fp32", (b, b + 1))[0])
                for _ in range(bit_trials)]
        per_bit.append({"bit": b, "field": next(n for n, (lo, hi) in FLOAT32_FIELDS.items()
                                                if lo <= b < hi),
                        "accuracy_mean": float(np.mean(accs)),
                        "accuracy_min": float(np.min(accs))})
    return rows, per_bit


def study_on_runner(name: str, dataset: str, model: torch.nn.Module, n_test: int,
                    args: argparse.Namespace) -> dict:
    """(iii): the model's fp32, int8 and k-means variants on the runner."""
    data = seeded_subset(load_dataset(dataset, "test"), n_test, seed=0)
    x, y = data.normalize(data.images).numpy(), data.labels.numpy()
    calib = calibration_subset(load_dataset(dataset, "train"), 300)
    t0 = time.monotonic()
    variants = runner_variants(model, x, y, calib.normalize(calib.images).numpy())
    out: dict[str, Any] = {"model": name, "dataset": dataset, "test_images": len(y),
                           "evaluated_on": "modelzip.runtime.runner (onnxruntime)",
                           "kmeans_held_as": "decoded fp32 arrays (16 shared values per layer)"}
    for (vname, clip), v in variants.items():
        out[f"{vname}{'_clip' if clip else ''}_accuracy"] = v.clean
        out[f"{vname}{'_clip' if clip else ''}_file_bytes"] = len(v.blob)
        out[f"{vname}_weight_bits"] = v.bits
    out["protection"] = protection_study(variants, args.memory_trials, args.seed)
    keep = ("representation", "ber", "trials", "bits", "clean_accuracy", "accuracy_mean",
            "accuracy_min", "expected_flips")
    out["memory"] = [{k: r[k] for k in keep} for r in out["protection"]]
    out["single_flip"], out["fp32_bit_position"] = runner_which_bits(
        variants, args.flip_trials, args.bit_trials, args.seed)
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["evaluations"] = sum(v.calls for v in variants.values())
    return out


# ---------------------------------------------------------------------------- plot
def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protected = [r for r in results if r.get("protection")]
    fig, axes = plt.subplots(1, 3 + bool(protected), figsize=(17 + 6 * bool(protected), 4.8))
    ax = axes[0]
    for r in results:
        if "stored" not in r:
            continue
        s = r["stored"]
        ber = [x["ber"] for x in s]
        ax.plot(ber, [x["plain_exact_pct"] for x in s], "o-", label=".mzip: bit-exact %")
        ax.plot(ber, [x["plain_refused_pct"] for x in s], "o--", label=".mzip: refused %")
        ax.plot(ber, [x["fec_exact_pct"] for x in s], "s-",
                label=f".mzip + {FEC_PARITY:.0%} FEC: bit-exact %")
        ax.plot(ber, [x["raw_fp32_accuracy_mean"] for x in s], "^-",
                label="raw fp32 file: accuracy %")
        ax.set_title(f"stored file hit before decoding ({r['model']})")
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate")
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax = axes[1]
    for r in results:
        for rep in ("fp32", "int8", "kmeans"):
            rows = [x for x in r["memory"] if x["representation"] == rep]
            ax.plot([x["ber"] for x in rows], [x["accuracy_mean"] for x in rows], "o-",
                    label=f"{r['model']} {rep}")
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate (weights in memory)")
    ax.set_ylabel("test accuracy % (mean over trials)")
    ax.set_title("weights hit in memory after loading")
    ax.legend(fontsize=8)
    ax = axes[2]
    for r in results:
        rows = r["fp32_bit_position"]
        ax.plot([x["bit"] for x in rows], [x["accuracy_mean"] for x in rows], "o-",
                label=r["model"])
    ax.axvspan(22.5, 30.5, color="orange", alpha=0.15, label="exponent bits")
    ax.set_xlabel("fp32 bit position (0 = mantissa LSB, 31 = sign)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("which fp32 bit: each weight's bit b flips with p = 1e-4")
    ax.legend(fontsize=8)
    for r in protected:
        ax = axes[3]
        for rep, color in (("fp32", "C0"), ("int8", "C1"), ("kmeans", "C2")):
            rows = [x for x in r["protection"] if x["representation"] == rep]
            ber = [x["ber"] for x in rows]
            ax.plot(ber, [x["accuracy_mean"] for x in rows], "o-", color=color,
                    label=f"{rep}: no protection")
            ax.plot(ber, [x["clip_accuracy_mean"] for x in rows], "s--", color=color,
                    label=f"{rep}: clipped activations")
            ax.plot(ber, [x["scrub_accuracy"] for x in rows], "^:", color=color,
                    label=f"{rep}: after scrub")
        ax.set_xscale("log")
        ax.set_xlabel("bit error rate (weights the runner holds)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{r['model']} on the runner: protection in memory")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="lenet5,eurosat_cnn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", type=Path, default=None)
    p.add_argument("--merge", type=Path, nargs="+", default=None)
    p.add_argument("--reuse", type=Path, default=None,
                   help="an earlier seu.json: its rows of the models not in --models are kept")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    q = args.quick
    args.stored_trials = 20 if q else 100
    args.target_trials = 50 if q else 1000
    args.fec_1e3_trials = 10 if q else 50
    args.raw_trials = 3 if q else 10
    args.memory_trials = 3 if q else 10
    args.runner_trials = 1 if q else 8
    args.flip_trials = 3 if q else 16
    args.bit_trials = 1 if q else 2
    out_dir = Path(tempfile.mkdtemp()) if q else ROOT / "results"
    results = []
    if args.merge:
        results = [r for part in args.merge for r in json.loads(part.read_text())]
    for name in args.models.split(",") if not args.merge else []:
        ckpt = load_checkpoint(ROOT / "checkpoints" / name)
        if name == "lenet5":
            dc = unpack((ROOT / "results" / "mzip" / "dc-lenet5.mzip").read_bytes())
            blob = pack(dc)  # the Deep Compression artifact in the current format
            results.append(study_model(name, "mnist", ckpt.model, dc, 300 if q else 2000,
                                       args, blob))
            results[-1]["test_subset_note"] = "seeded subset of the MNIST test split"
        else:
            sub = argparse.Namespace(**{**vars(args), "memory_trials": args.runner_trials,
                                        "flip_trials": 2 if q else 8, "bit_trials": 1})
            results.append(study_on_runner(name, ckpt.meta["dataset"]["name"], ckpt.model,
                                           100 if q else 1000, sub))
            results[-1]["test_subset_note"] = (f"seeded subset of {results[-1]['test_images']:,}"
                                               " images of the EuroSAT test split")
    reused = {}
    if args.reuse is not None and not args.merge:
        earlier = json.loads(args.reuse.read_text())
        ran = {r["model"] for r in results}
        for row in earlier["models"]:
            if row["model"] not in ran:
                results.append(row)
                reused[row["model"]] = {"from": str(args.reuse.name),
                                        "git_commit": earlier.get("git_commit"),
                                        "generated_utc": earlier.get("generated_utc")}
    if args.part is not None:
        args.part.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.part}")
        return
    target = next((x for r in results for x in r.get("stored", []) if x["ber"] == 1e-4), None)
    summary = {}
    if target is not None:
        fec_row = next(r for r in results if "stored" in r)
        summary = {"target_ber": 1e-4, "fec_exact_pct_at_1e-4": target["fec_exact_pct"],
                   "fec_trials_at_1e-4": target["fec_trials"],
                   "fec_wrong_weights_at_1e-4": target["fec_wrong_weights"],
                   "plain_refused_pct_at_1e-4": target["plain_refused_pct"],
                   "raw_fp32_accuracy_mean_at_1e-4": target["raw_fp32_accuracy_mean"],
                   "fec_size_overhead_pct": 100 * (fec_row["fec_file_bytes"]
                                                   / fec_row["stored_file_bytes"] - 1),
                   "target_met": bool(target["fec_exact_pct"] >= 99.9
                                      and fec_row["fec_file_bytes"]
                                      <= 1.10 * fec_row["stored_file_bytes"])}
    write_results(out_dir / "seu.json", "seu", __doc__.split("\n")[0], results,
                  settings={"rates": RATES, "fec_parity": FEC_PARITY, "seed": args.seed,
                            "quick": q, "trials": {k: v for k, v in vars(args).items()
                                                   if k.endswith("_trials")},
                            "eurosat_cnn": "on the runner: runner_trials per rate, 8 single "
                                           "flips per field, 1 trial per fp32 bit position",
                            "reused_rows": reused},
                  summary=summary)
    plot(results, out_dir / "seu.png")
    print(summary)
    print(f"wrote {out_dir / 'seu.json'} and seu.png")


if __name__ == "__main__":
    sys.exit(main())
