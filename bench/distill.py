"""Knowledge distillation: Hinton et al.'s MNIST experiment and distillation as the recovery
step after compression.

    MODELZIP_DATA=../shared/data python bench/distill.py
    MODELZIP_DATA=../shared/data python bench/distill.py --quick   # smoke test

(a) Hinton et al. 2015, section 3: a teacher 784-1200-1200-10 trained with dropout and +/-2
    pixel jitter, and a student 784-800-800-10 trained with no regularisation (no dropout, no
    jitter, no weight decay), once on the labels alone and once with the ``kd`` technique at
    T = 20 (same epochs, seed and initial weights); error counts on the 10,000 test images,
    then a sweep over T (fewer epochs when stated in the row). The teacher is a zoo
    ``lenet300`` with ``hidden=[1200, 1200]`` (dropout after each hidden layer, none on the
    input as the paper had); it is saved under runs/distill/ and reused by later runs.
(b) Recovery after compression, through ``modelzip.compress``: the maximally pruned lenet5
    (bench/checkpoints/pruned/magnitude-lenet5-max) and a 3-bit k-means lenet5 (the
    ``kmeans`` technique on the dense baseline, no fine-tuning of its own), then the same
    ``finetune`` step with and without ``distill: {teacher: original}`` (for the pruned model
    the original is the dense lenet5 checkpoint it was pruned from, passed as a path).
    The structurally pruned eurosat_cnn the same way: the committed checkpoint
    (bench/checkpoints/pruned/eurosat_cnn-l1, already fine-tuned 8 epochs after pruning) and
    the same ``l1-filter`` ratios applied afresh to the dense eurosat_cnn (no fine-tuning
    yet; ``teacher: original``); error counts on the full EuroSAT test split (5,400 images).
(c) FitNets on EuroSAT: the zoo's ``eurosat_thin`` (eight conv layers of at most 48 channels,
    a third of eurosat_cnn's MACs) trained alone, with ``kd`` and with ``hint`` + ``kd`` (hint:
    eurosat_cnn's ``features.4`` from the student's ``features.6`` through a 1x1 convolution),
    the same epochs for all three (plus the hint stage's own epochs); test accuracy,
    parameters, MACs and the batch-1, 1-thread onnxruntime latency ratio to the teacher, both
    timed in the same run.
(d) torchdistill is not run; the JSON says why.

Row groups (``--only``): hinton, sweep, lenet5-recovery, eurosat-recovery, fitnets.
``--only eurosat-recovery,fitnets --merge`` re-runs those rows alone (no Hinton teacher) and
keeps the other rows of the existing results file. Results are written after every stage (a
partial file has "complete": false). ``--quick`` runs every stage on a few hundred images for
one epoch and writes into a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchlib import quick_data, time_interleaved, write_results
from modelzip.checkpoint import load_checkpoint, save_checkpoint
from modelzip.core.registry import list_techniques
from modelzip.data import load_dataset
from modelzip.train import TrainConfig, evaluate, fit
from modelzip.zoo import build_model

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "distill.json"
TEACHER_DIR = ROOT / "runs" / "distill"  # hinton-teacher-e<epochs>, ~10 MB: not committed
SEED = 0
GROUPS = ("hinton", "sweep", "lenet5-recovery", "eurosat-recovery", "fitnets")
TEACHER_HIDDEN = [1200, 1200]
STUDENT_HIDDEN = [800, 800]
TEACHER_EPOCHS = 20  # the paper's schedule is far longer (--teacher-epochs)
TEACHER_TRAIN = TrainConfig(epochs=TEACHER_EPOCHS, batch_size=128, lr=0.05, weight_decay=5e-4,
                            augment="shift", seed=SEED)
TEACHER_DROPOUT = 0.5


def train_teacher(train: Any, test: Any, directory: Path, cfg: TrainConfig) -> tuple[Any, dict]:
    """The Hinton teacher, trained once and kept in ``directory``."""
    if (directory / "modelzip.json").is_file():
        ckpt = load_checkpoint(directory)
        print(f"teacher: reusing {directory}", flush=True)
        return ckpt.model.eval(), ckpt.meta.get("training") or {}
    torch.manual_seed(SEED)
    teacher = build_model("lenet300", hidden=TEACHER_HIDDEN, dropout=TEACHER_DROPOUT)
    hist = fit(teacher, train, cfg, progress=False,
               epoch_callbacks=[lambda _m, e, m: print(f"teacher epoch {e}: {m}", flush=True)])
    training = {**cfg.to_dict(), "wall_time_s": round(hist.wall_time_s, 1)}
    save_checkpoint(teacher, directory, dataset={"name": train.name}, training=training,
                    metrics=evaluate(teacher, test).to_dict())
    return teacher.eval(), training


STUDENT_TRAIN = TrainConfig(epochs=10, batch_size=128, lr=0.05, weight_decay=0.0,
                            augment="none", seed=SEED)
HINTON_T, HINTON_ALPHA = 20.0, 0.9
SWEEP_T = (1.0, 2.0, 5.0, 10.0, 20.0)
SWEEP_EPOCHS = 4
RECOVERY_EPOCHS = 2
RECOVERY_DISTILL = {"teacher": "original", "T": 4.0, "alpha": 0.9}
KMEANS_BITS = 3
KMEANS_LR = 3e-5  # 3-bit clusters are large; at 1e-4 the kd run diverged
# FitNets on EuroSAT: at most ~25 minutes of one core for the three students together
FITNETS_EPOCHS = 4
FITNETS_HINT_EPOCHS = 1
FITNETS_STUDENT = "eurosat_thin"
FITNETS_LAYERS = ("features.6", "features.4")  # (student's guided layer, teacher's hint layer)
FITNETS_T, FITNETS_ALPHA = 4.0, 0.9
TORCHDISTILL = (
    "not installed: torchdistill 1.1.5 (the newest on the package index) declares "
    "Requires-Dist torchvision>=0.27.0; the torchvision that pins the pinned torch (0.28.0: "
    "Requires-Dist torch==2.13.0) is a CUDA build whose _C.so links libc10_cuda.so, which "
    "torch 2.13.0+cpu does not ship, so `import torchvision` fails ('operator "
    "torchvision::nms does not exist'; tried from the unpacked wheels on PYTHONPATH, nothing "
    "installed). torchdistill's model and dataset modules import torchvision, so no "
    "side-by-side run was possible")
NOT_RUN = {"torchdistill": TORCHDISTILL}


def row_group(row: dict[str, Any]) -> str:
    """The group (``GROUPS``) a results row belongs to."""
    if row.get("row") == "T sweep":
        return "sweep"
    if row.get("row") == "fitnets":
        return "fitnets"
    if "recovery" in row:
        return "eurosat-recovery" if row.get("model", "").startswith("eurosat") else \
            "lenet5-recovery"
    return "hinton"


def train_student(train: Any, test: Any, cfg: TrainConfig, teacher: Any,
                  T: float | None) -> dict[str, Any]:
    """A 784-800-800-10 student from the seeded initial weights: on the labels alone
    (``T`` None, ``fit``) or with the ``kd`` technique."""
    from modelzip.core.context import Context
    from modelzip.core.registry import apply
    from modelzip.distill import KDConfig

    torch.manual_seed(SEED)  # the same initial weights for every student
    student = build_model("lenet300", hidden=STUDENT_HIDDEN)
    start = time.perf_counter()
    if T is None:
        fit(student, train, cfg, progress=False)
    else:
        ctx = Context(train_data=train, finetune=cfg, progress=False)
        student = apply(student, KDConfig(teacher=teacher, T=T, alpha=HINTON_ALPHA), ctx)
    result = evaluate(student, test)
    row = {"model": f"student 784-{'-'.join(map(str, STUDENT_HIDDEN))}-10",
           "training": "labels only" if T is None else f"kd T={T:g} alpha={HINTON_ALPHA:g}",
           "T": T, "alpha": None if T is None else HINTON_ALPHA, "epochs": cfg.epochs,
           "seed": cfg.seed, "test_errors": result.errors,
           "test_error_pct": round(result.error_pct, 2),
           "wall_time_s": round(time.perf_counter() - start, 1)}
    print(row, flush=True)
    return row


@dataclasses.dataclass
class RecoveryCase:
    """One compressed model to recover: ``steps`` compress ``model``; the fine-tuning is the
    ``finetune`` option of the step ``own_finetune`` names, else a ``finetune`` step added
    after them. ``with_none``: also a row without fine-tuning (the compressed model as is)."""

    name: str
    model: Any
    steps: list[dict[str, Any]]
    distill: dict[str, Any]
    own_finetune: str | None = None
    with_none: bool = False
    lr: float | None = None
    keep_zeros: bool = True  # unstructured pruning: pruned weights stay zero


def run_recovery(cases: list[RecoveryCase], train: Any, test: Any, base: Any, epochs: int,
                 original_errors: int) -> list[dict[str, Any]]:
    """Plain fine-tuning vs distillation from the original, same epochs and data, through
    ``modelzip.compress``."""
    from modelzip.pipeline import compress, make_context
    from modelzip.prune import masks_from_zeros

    rows = []
    for case in cases:
        tune = {"epochs": epochs, **({"lr": case.lr} if case.lr is not None else {})}
        variants: list[tuple[str, Any]] = [("none", None)] if case.with_none else []
        variants += [("plain fine-tuning", tune),
                     ("distillation", {**tune, "distill": case.distill})]
        for label, finetune in variants:
            ctx = make_context(data=train, test_data=test, finetune=base, seed=SEED,
                               progress=False)
            if case.keep_zeros:
                ctx.masks.update(masks_from_zeros(case.model))
            steps = [{name: dict(opts)} for step in case.steps for name, opts in step.items()]
            if finetune is not None and case.own_finetune is not None:
                next(s for s in steps if case.own_finetune in s)[case.own_finetune][
                    "finetune"] = finetune
            elif finetune is not None:
                steps.append({"finetune": finetune})
            start = time.perf_counter()
            result = compress(case.model, {"steps": steps}, ctx=ctx)
            row = {"model": case.name, "recovery": label,
                   "epochs": 0 if finetune is None else epochs,
                   "distill": case.distill if label == "distillation" else None,
                   "test_errors_original": original_errors,
                   "test_errors_before": result.test_error_before.errors,
                   "test_errors": result.test_error_after.errors,
                   "test_error_pct": round(result.test_error_after.error_pct, 2),
                   "test_images": result.test_error_after.total,
                   "nonzero_weights": result.after.nonzero,
                   "artifact_bytes": result.artifact_bytes,
                   "wall_time_s": round(time.perf_counter() - start, 1)}
            print(row, flush=True)
            rows.append(row)
    return rows


def lenet5_recovery(quick: bool, train: Any, test: Any) -> list[dict[str, Any]]:
    """The maximally pruned lenet5 and a k-means lenet5."""
    from benchlib import quick_baseline
    from modelzip.pipeline import finetune_defaults

    dense_dir = BENCH / "checkpoints" / "lenet5"
    if quick:
        dense = quick_baseline("lenet5", train)
        teacher_dir = Path(tempfile.mkdtemp(prefix="distill-quick-")) / "lenet5"
        save_checkpoint(dense, teacher_dir, dataset={"name": train.name})
        pruned = dense
        base = finetune_defaults(None)
    else:
        teacher_dir = dense_dir
        dense_ckpt = load_checkpoint(dense_dir)
        dense = dense_ckpt.model
        pruned = load_checkpoint(BENCH / "checkpoints" / "pruned" / "magnitude-lenet5-max").model
        base = finetune_defaults(dense_ckpt.meta.get("training"))
    cases = [
        # the pruned model's original is the dense lenet5 it was pruned from: a path
        RecoveryCase("magnitude-lenet5-max", pruned, [],
                     {**RECOVERY_DISTILL, "teacher": str(teacher_dir)}),
        # a centroid's gradient sums its whole cluster's: Deep Compression's small lr
        RecoveryCase(f"kmeans-{KMEANS_BITS}bit-lenet5", dense, [{"kmeans": {"bits": KMEANS_BITS}}],
                     RECOVERY_DISTILL, own_finetune="kmeans", with_none=True, lr=KMEANS_LR),
    ]
    return run_recovery(cases, train, test, base, 1 if quick else RECOVERY_EPOCHS,
                        evaluate(dense, test).errors)


def eurosat_recovery(quick: bool, train: Any, test: Any) -> list[dict[str, Any]]:
    """The structurally pruned eurosat_cnn: the committed checkpoint (fine-tuned after
    pruning) and the same filter-pruning ratios applied afresh to the dense model."""
    from benchlib import quick_baseline
    from modelzip.pipeline import finetune_defaults

    dense_dir = BENCH / "checkpoints" / "eurosat_cnn"
    pruned_dir = BENCH / "checkpoints" / "pruned" / "eurosat_cnn-l1"
    pruned_meta = json.loads((pruned_dir / "modelzip.json").read_text())
    l1 = pruned_meta["compression"]["recipes"][0]["steps"][0]["l1-filter"]
    if quick:
        dense = quick_baseline("eurosat_cnn", train)
        teacher_dir = Path(tempfile.mkdtemp(prefix="distill-quick-")) / "eurosat_cnn"
        save_checkpoint(dense, teacher_dir, dataset={"name": train.name})
        pruned = dense
        base = finetune_defaults(None)
    else:
        teacher_dir = dense_dir
        dense_ckpt = load_checkpoint(dense_dir)
        dense = dense_ckpt.model
        pruned = load_checkpoint(pruned_dir).model
        base = finetune_defaults(dense_ckpt.meta.get("training"))
    cases = [
        RecoveryCase("eurosat_cnn-l1 (checkpoint, fine-tuned 8 epochs after pruning)", pruned,
                     [], {**RECOVERY_DISTILL, "teacher": str(teacher_dir)}, keep_zeros=False),
        RecoveryCase("eurosat_cnn l1-filter, the checkpoint's ratios (not fine-tuned)", dense,
                     [{"l1-filter": l1}], RECOVERY_DISTILL, with_none=True, keep_zeros=False),
    ]
    return run_recovery(cases, train, test, base, 1 if quick else RECOVERY_EPOCHS,
                        evaluate(dense, test).errors)


def ort_latency_ms(models: dict[str, Any], input_shape: tuple[int, ...], quick: bool
                   ) -> dict[str, float]:
    """Median batch-1, 1-thread onnxruntime latency (ms) of each model's fp32 ONNX export,
    timed interleaved in one run."""
    import numpy as np

    from modelzip.runtime.export import export_onnx
    from modelzip.runtime.ort import make_session

    x = np.random.default_rng(SEED).standard_normal((1, *input_shape)).astype(np.float32)
    runners = {}
    for name, model in models.items():
        session = make_session(export_onnx(model.eval(), input_shape=input_shape), threads=1)
        feed = {session.get_inputs()[0].name: x}
        runners[name] = lambda s=session, f=feed: s.run(None, f)
    times = time_interleaved(runners, rounds=3 if quick else 30, per_round=5 if quick else 40)
    return {name: statistics.median(t) for name, t in times.items()}


def fitnets(quick: bool, train: Any, test: Any, epochs: int = FITNETS_EPOCHS
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A thin, deeper student trained alone, with ``kd`` and with ``hint`` + ``kd`` from
    eurosat_cnn; accuracy, size, MACs and latency beside the teacher."""
    from benchlib import quick_baseline
    from modelzip.core.context import Context
    from modelzip.core.registry import apply
    from modelzip.data import train_val_split
    from modelzip.distill import HintConfig, KDConfig
    from modelzip.finetune import FinetuneConfig
    from modelzip.metrics import count_macs

    if quick:
        teacher = quick_baseline("eurosat_cnn", train)
        cfg = TrainConfig(epochs=1, batch_size=64, augment="flips", seed=SEED)
        hint_epochs = 1
    else:
        ckpt = load_checkpoint(BENCH / "checkpoints" / "eurosat_cnn")
        teacher = ckpt.model
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in (ckpt.meta.get("training") or {}).items()
                             if k in known})
        cfg = dataclasses.replace(cfg, epochs=epochs, seed=SEED)
        # the teacher's own training images (its seeded 90%), not its validation tenth
        train, _ = train_val_split(train, 0.1, seed=SEED)
        hint_epochs = FITNETS_HINT_EPOCHS
    teacher.eval()
    student_layer, teacher_layer = FITNETS_LAYERS
    tune = FinetuneConfig(epochs=cfg.epochs)
    runs = [
        ("alone", "labels only", None),
        ("kd", f"kd T={FITNETS_T:g} alpha={FITNETS_ALPHA:g}",
         KDConfig(teacher=teacher, T=FITNETS_T, alpha=FITNETS_ALPHA, finetune=tune)),
        ("hint+kd", f"hint {student_layer} -> teacher {teacher_layer} "
                    f"({hint_epochs} epoch{'s' if hint_epochs > 1 else ''}), then kd "
                    f"T={FITNETS_T:g} alpha={FITNETS_ALPHA:g}",
         HintConfig(student_layer=student_layer, teacher_layer=teacher_layer, teacher=teacher,
                    T=FITNETS_T, alpha=FITNETS_ALPHA, finetune=tune,
                    hint_finetune=FinetuneConfig(epochs=hint_epochs))),
    ]
    students: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for key, training, config in runs:
        torch.manual_seed(SEED)  # the same initial weights for every student
        student = build_model(FITNETS_STUDENT)
        start = time.perf_counter()
        if config is None:
            fit(student, train, cfg, progress=False)
        else:
            ctx = Context(train_data=train, finetune=cfg, progress=False)
            student = apply(student, config, ctx)
        wall = time.perf_counter() - start
        result = evaluate(student, test)
        students[key] = student.eval()
        rows.append({"model": FITNETS_STUDENT, "row": "fitnets", "run": key, "training": training,
                     "epochs": cfg.epochs, "hint_epochs": hint_epochs if key == "hint+kd" else 0,
                     "seed": SEED, "test_errors": result.errors, "test_images": result.total,
                     "test_accuracy_pct": round(100 - result.error_pct, 2),
                     "wall_time_s": round(wall, 1)})
        print(rows[-1], flush=True)
    result = evaluate(teacher, test)
    rows.insert(0, {"model": "eurosat_cnn", "row": "fitnets", "run": "teacher",
                    "training": "teacher (the "
                    "bench checkpoint)", "epochs": None if quick else
                    (ckpt.meta.get("training") or {}).get("epochs"), "seed": SEED,
                    "test_errors": result.errors, "test_images": result.total,
                    "test_accuracy_pct": round(100 - result.error_pct, 2)})
    latency = ort_latency_ms({"teacher": teacher, "student": students["alone"]}, (3, 64, 64),
                             quick)
    teacher_macs = count_macs(teacher, (3, 64, 64))[1]
    student_macs = count_macs(students["alone"], (3, 64, 64))[1]
    for row in rows:
        model = teacher if row["model"] == "eurosat_cnn" else students["alone"]
        role = "teacher" if model is teacher else "student"
        macs = teacher_macs if model is teacher else student_macs
        row.update({"parameters": sum(p.numel() for p in model.parameters()), "macs": macs,
                    "macs_vs_teacher": round(macs / teacher_macs, 3),
                    "ort_latency_ms_b1_1thread": round(latency[role], 4),
                    "latency_vs_teacher": round(latency[role] / latency["teacher"], 3)})
    settings = {"student": FITNETS_STUDENT, "teacher": "bench/checkpoints/eurosat_cnn",
                "student_layer": student_layer, "teacher_layer": teacher_layer,
                "T": FITNETS_T, "alpha": FITNETS_ALPHA, "train": cfg.to_dict(),
                "epochs": cfg.epochs, "hint_epochs": hint_epochs,
                "train_images": len(train), "test_images": len(test),
                "target_macs_vs_teacher_max": round(1 / 3, 3),
                "latency": "median of interleaved batch-1 runs of the fp32 ONNX exports in "
                           "onnxruntime, 1 intra-op thread, teacher and student in the same run"}
    return rows, settings


def earlier_results(path: Path) -> dict[str, Any]:
    """The results file being merged into ({} when there is none)."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--stage", default="all", help="teacher | all")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated row groups to run, of: {', '.join(GROUPS)}")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of the other groups from the existing results file")
    parser.add_argument("--no-sweep", action="store_true", help="leave out the T sweep")
    parser.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    parser.add_argument("--student-epochs", type=int, default=STUDENT_TRAIN.epochs)
    parser.add_argument("--fitnets-epochs", type=int, default=FITNETS_EPOCHS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        parser.error(f"--only: unknown row group(s) {', '.join(unknown) or '(none)'}; "
                     f"choose from {', '.join(GROUPS)}")
    if args.no_sweep and "sweep" in groups:
        groups.remove("sweep")
    torch.set_num_threads(args.threads)
    list_techniques()  # import every module now: a long run must not import edited code later
    out = RESULTS
    if args.quick:
        out = Path(tempfile.mkdtemp(prefix="distill-quick-")) / "distill.json"
    earlier = earlier_results(RESULTS) if args.merge else {}
    kept = [r for r in earlier.get("models", []) if row_group(r) not in groups]
    done: dict[str, list[dict[str, Any]]] = {g: [] for g in GROUPS}
    for row in kept:
        done[row_group(row)].append(row)
    settings: dict[str, Any] = dict(earlier.get("settings", {}))
    prior = settings.pop("rows_rerun", None)
    settings.update({"threads": torch.get_num_threads(), "torchdistill": TORCHDISTILL})
    if args.merge and earlier:
        # merged twice: the kept rows of the first merge are still from the run before it
        rerun = [g for g in (prior or {}).get("rows", []) if g not in groups] + groups
        settings["rows_rerun"] = {"rows": rerun, "earlier_run": (prior or {}).get(
            "earlier_run") or {"generated_utc": earlier.get("generated_utc"),
                               "git_commit": earlier.get("git_commit")}}

    def write(complete: bool) -> None:
        rows = [r for g in GROUPS for r in done[g]]
        hinton = done["hinton"]
        teacher = next((r for r in hinton if r.get("model", "").startswith("teacher")), None)
        distilled = next((r for r in hinton if r.get("T") == HINTON_T), None)
        summary = {
            "teacher_test_errors": teacher and teacher["test_errors"],
            "student_plain_test_errors": next((r["test_errors"] for r in hinton
                                               if r.get("training") == "labels only"), None),
            "student_kd_t20_test_errors": distilled and distilled["test_errors"],
            "target_kd_test_errors_max": 70,
            "target_met": None if distilled is None else distilled["test_errors"] <= 70,
            "paper_test_errors": {"teacher": 67, "student_plain": 146, "student_kd_t20": 74},
        }
        fit_rows = [r for r in done["fitnets"] if r["model"] != "eurosat_cnn"]
        fitnets_summary = None
        if fit_rows:
            macs = fit_rows[0]["macs_vs_teacher"]
            fitnets_summary = {
                "student_macs_vs_teacher": macs,
                "target_macs_vs_teacher_max": round(1 / 3, 3),
                "target_met": macs <= 1 / 3,
                "latency_vs_teacher": fit_rows[0]["latency_vs_teacher"],
                "test_accuracy_pct": {r["run"]: r["test_accuracy_pct"]
                                      for r in fit_rows}}
        not_run = {"torchdistill": TORCHDISTILL}
        write_results(out, "distill", "Knowledge distillation: Hinton et al.'s MNIST "
                      "experiment (error counts on the 10,000 test images), a sweep over T, "
                      "distillation from the original as the recovery step after pruning "
                      "and k-means (lenet5) and structured pruning (eurosat_cnn), and FitNets "
                      "on EuroSAT", rows,
                      complete=complete, quick=args.quick, hinton_summary=summary,
                      fitnets_summary=fitnets_summary or earlier.get("fitnets_summary"),
                      settings=settings, not_run=not_run)
        print(f"wrote {out}", flush=True)

    if {"hinton", "sweep", "lenet5-recovery"} & set(groups):
        train = load_dataset("mnist", "train")
        test = load_dataset("mnist", "test")
        if args.quick:
            train, test = quick_data(train, test, 600, 300)
    if {"hinton", "sweep"} & set(groups):
        teacher_dir = TEACHER_DIR / f"hinton-teacher-e{args.teacher_epochs}"
        cfg = dataclasses.replace(TEACHER_TRAIN, epochs=args.teacher_epochs)
        student_cfg = dataclasses.replace(STUDENT_TRAIN, epochs=args.student_epochs)
        sweep_cfg = dataclasses.replace(STUDENT_TRAIN, epochs=SWEEP_EPOCHS)
        if args.quick:
            teacher_dir = Path(tempfile.mkdtemp(prefix="distill-quick-")) / "teacher"
            cfg = TrainConfig(epochs=1, batch_size=64, augment="shift", seed=SEED)
            student_cfg = sweep_cfg = dataclasses.replace(cfg, augment="none", weight_decay=0.0)
        start = time.perf_counter()
        teacher, teacher_training = train_teacher(train, test, teacher_dir, cfg)
        teacher_result = evaluate(teacher, test)
        print(f"teacher: {teacher_result.errors} test errors "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        if args.stage == "teacher":
            return
        settings.update({"teacher_train": teacher_training,
                         "student_train": student_cfg.to_dict(),
                         "sweep_train": sweep_cfg.to_dict(), "alpha": HINTON_ALPHA,
                         "teacher_logits": "computed on the fly, batch by batch"})
        if "hinton" in groups:
            done["hinton"] = [{
                "model": f"teacher 784-{'-'.join(map(str, TEACHER_HIDDEN))}-10",
                "training": f"labels, dropout {TEACHER_DROPOUT} after each hidden layer, "
                            "+/-2 px jitter",
                "epochs": teacher_training.get("epochs"), "seed": SEED,
                "test_errors": teacher_result.errors,
                "test_error_pct": round(teacher_result.error_pct, 2)}]
            for T in (None, HINTON_T):
                done["hinton"].append(train_student(train, test, student_cfg, teacher, T))
                write(False)
        if "sweep" in groups:
            done["sweep"] = []
            for T in (None, *SWEEP_T):
                row = train_student(train, test, sweep_cfg, teacher, T)
                done["sweep"].append({**row, "row": "T sweep"})
                write(False)
    recovery_settings = {"epochs": RECOVERY_EPOCHS, "distill": RECOVERY_DISTILL,
                         "finetune_base": "the dense model's training settings, a tenth of "
                                          "its lr (finetune_defaults)"}
    if "lenet5-recovery" in groups:
        settings["recovery"] = {**recovery_settings, "kmeans_bits": KMEANS_BITS,
                                "kmeans_centroid_lr": KMEANS_LR}
        done["lenet5-recovery"] = lenet5_recovery(args.quick, train, test)
        write(False)
    if {"eurosat-recovery", "fitnets"} & set(groups):
        eurosat_train = load_dataset("eurosat", "train")
        eurosat_test = load_dataset("eurosat", "test")
        if args.quick:
            eurosat_train, eurosat_test = quick_data(eurosat_train, eurosat_test, 300, 200)
    if "eurosat-recovery" in groups:
        settings["eurosat_recovery"] = {
            **recovery_settings, "test_images": len(eurosat_test),
            "train": "the EuroSAT training split less the pipeline's seeded 10% validation"}
        done["eurosat-recovery"] = eurosat_recovery(args.quick, eurosat_train, eurosat_test)
        write(False)
    if "fitnets" in groups:
        done["fitnets"], settings["fitnets"] = fitnets(args.quick, eurosat_train,
                                                         eurosat_test, args.fitnets_epochs)
        write(False)
    write(True)


if __name__ == "__main__":
    sys.exit(main())
