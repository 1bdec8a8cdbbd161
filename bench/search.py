"""Budget-driven search (``modelzip.search``) through ``modelzip.compress(model, target=...)``.

    MODELZIP_DATA=../shared/data python bench/search.py [--part eurosat lenet5 workers]
    MODELZIP_DATA=../shared/data python bench/search.py --quick   # smoke test

Parts (each writes its rows into bench/results/search.json as soon as it is done):

- ``eurosat``: bench/checkpoints/eurosat_cnn to a whole .mzip of <= 32 KB (the runnable ONNX
  graph, for ``modelzip run``) at >= 95.5% test accuracy: a strategy (``--eurosat-strategy``,
  default BO/TPE) over per-layer magnitude pruning ratios and k-means bits, trials scored on a
  seeded part of the validation split without fine-tuning (BatchNorm statistics
  re-estimated); the chosen point fine-tuned (prune -> finetune -> fold BatchNorm -> k-means,
  whose centroids are not fine-tuned on the folded network) and measured: file bytes, test
  accuracy, runner batch-1 latency over fp32 eager batch-1 latency (same process, 1 thread),
  search wall time. ``--eurosat-study`` resumes a study (its trials are kept; the search
  time is then that of the resumed call). Writes the HTML report and, with Chromium, its
  screenshot;
- ``lenet5``: every strategy at the same number of evaluated configurations and the same
  final fine-tuning, to a size target;
- ``workers``: one BO study run by one ``modelzip search-worker`` process and by two, against a
  throwaway PostgreSQL server: wall time, trial count, lost or duplicated trials.

Trial counts are small (2 shared CPU cores) and stated in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchlib import quick_baseline, quick_data, write_results
from modelzip.checkpoint import load_checkpoint
from modelzip.data import load_dataset
from modelzip.pipeline import compress, finetune_defaults, make_context

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "scripts"))

EUROSAT_TARGET = "size=32KB"
EUROSAT_MIN_ACCURACY = 95.5
LENET5_TARGET = "size=30KB"
STRATEGIES = ("uniform", "random", "sensitivity", "bo", "bo-gp", "mlprune", "amc")


def _test_acc(result: Any) -> float:
    return round(100.0 - float(result.test_error_after.error_pct), 4)


def _load(name: str, quick: bool) -> tuple[Any, Any, Any]:
    train = load_dataset("eurosat" if name == "eurosat_cnn" else "mnist", "train")
    test = load_dataset("eurosat" if name == "eurosat_cnn" else "mnist", "test")
    if quick:
        train, test = quick_data(train, test, 600, 300)
        return quick_baseline(name, train, "flips" if name == "eurosat_cnn" else "none"), \
            train, test
    ckpt = load_checkpoint(ROOT / "bench" / "checkpoints" / name)
    return ckpt, train, test


def _context(ckpt: Any, train: Any, test: Any, quick: bool) -> Any:
    training = None if quick else ckpt.meta.get("training")
    return make_context(data=train, test_data=test, finetune=finetune_defaults(training),
                        progress=False)


def _model(ckpt: Any) -> Any:
    return ckpt.model if hasattr(ckpt, "model") else ckpt


def part_eurosat(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from modelzip.metrics import measure_latency
    from modelzip.search.evaluate import runner_latency_ms

    ckpt, train, test = _load("eurosat_cnn", args.quick)
    model = _model(ckpt)
    ctx = _context(ckpt, train, test, args.quick)
    trials = 3 if args.quick else args.eurosat_trials
    mzip = out_dir / "eurosat_cnn-32KB.mzip"
    report = out_dir / "search_report.html"
    search = {"strategy": args.eurosat_strategy, "trials": trials,
              "val_samples": 300 if args.quick else 500,
              "storage": f"sqlite:///{out_dir}/search_studies.db",
              "study": args.eurosat_study or f"eurosat_cnn-32KB-{int(time.time())}",
              "finetune_epochs": 1 if args.quick else args.finetune_epochs,
              "quant_finetune": {"epochs": 1, "lr": 0.001}, "report": _shown(report),
              "progress": args.progress,
              "space": {"format": "onnx", "bits": args.eurosat_bits, "max_ratio": 0.96,
                        "ratio_step": 0.02, "default_bits": 4}}
    start = time.perf_counter()
    result = compress(model, target=EUROSAT_TARGET, max_drop=1.0, ctx=ctx, out=mzip,
                      force=True, search=search)
    wall = time.perf_counter() - start
    info = result.settings["search"]
    torch.set_num_threads(1)
    eager = measure_latency(model, example_inputs=ctx.example_inputs[:1], runs=100).median_ms
    runner = runner_latency_ms(result.artifact, threads=1, runs=100)
    acc = _test_acc(result)
    base_acc = round(100.0 - float(result.test_error_before.error_pct), 4)
    return {
        "model": "eurosat_cnn", "start": "bench/checkpoints/eurosat_cnn",
        "strategy": args.eurosat_strategy,
        "target": EUROSAT_TARGET, "min_test_accuracy_pct": EUROSAT_MIN_ACCURACY,
        "trials_requested": trials, "trials_run": info["trials_run"],
        "file_bytes": result.artifact_bytes, "artifact_kind": result.artifact_kind,
        "test_accuracy_pct": acc, "baseline_test_accuracy_pct": base_acc,
        "accuracy_drop_points": round(base_acc - acc, 4),
        "val_drop_points": info["drop_points"],
        "size_met": result.artifact_bytes <= 32000,
        "accuracy_met": acc >= EUROSAT_MIN_ACCURACY,
        "target_met": result.artifact_bytes <= 32000 and acc >= EUROSAT_MIN_ACCURACY,
        "budget_met_search": info["budget_met"], "message": info["message"],
        "runner_latency_batch1_1thread_ms": runner, "fp32_eager_latency_batch1_1thread_ms": eager,
        "speedup_vs_fp32_eager": round(eager / runner, 3),
        "chosen": info["chosen"], "chosen_trial": info["chosen_trial"],
        "search_wall_time_s": round(info["search_wall_time_s"], 1),
        "final_finetune_wall_time_s": round(info["final_wall_time_s"], 1),
        "total_wall_time_s": round(wall, 1), "mzip": str(mzip.relative_to(ROOT))
        if mzip.is_relative_to(ROOT) else str(mzip), "report": _shown(report),
        "finetune_epochs": search["finetune_epochs"],
        "kmeans_finetune": "none (the BatchNorm-folded graph's clustering is not fine-tuned)",
        "study": search["study"],
        "val_samples_per_trial": search["val_samples"], "bits_choices": args.eurosat_bits,
    }


def part_lenet5(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    ckpt, train, test = _load("lenet5", args.quick)
    model = _model(ckpt)
    rows = []
    trials = 3 if args.quick else args.lenet5_trials
    for strategy in STRATEGIES:
        ctx = _context(ckpt, train, test, args.quick)
        search = {"strategy": strategy, "trials": trials,
                  "val_samples": 300 if args.quick else 1000,
                  "storage": f"sqlite:///{out_dir}/search_studies.db",
                  "study": f"lenet5-{strategy}-{int(time.time())}", "finetune_epochs": 1,
                  "quant_finetune": None, "progress": args.progress,
                  "space": {"bits": [2, 3, 4, 5, 6], "default_bits": 4, "max_ratio": 0.96,
                            "ratio_step": 0.02}}
        start = time.perf_counter()
        result = compress(model, target=LENET5_TARGET, max_drop=1.0, ctx=ctx, force=True,
                          search=search)
        info = result.settings["search"]
        rows.append({"model": "lenet5", "strategy": strategy, "target": LENET5_TARGET,
                     "trials_requested": trials, "trials_run": info["trials_run"],
                     "file_bytes": result.artifact_bytes, "test_accuracy_pct": _test_acc(result),
                     "test_error_pct": round(float(result.test_error_after.error_pct), 4),
                     "baseline_test_error_pct": round(float(
                         result.test_error_before.error_pct), 4),
                     "val_drop_points": info["drop_points"], "budget_met": info["budget_met"],
                     "chosen_trial_feasible": info["chosen_trial"]["feasible"],
                     "search_wall_time_s": round(info["search_wall_time_s"], 1),
                     "total_wall_time_s": round(time.perf_counter() - start, 1),
                     "chosen": info["chosen"]})
        print(json.dumps(rows[-1])[:300], flush=True)
    return rows


def _worker(url: str, study: str, trials: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "modelzip.cli", "search-worker", "--study",
                             study, "--storage", url, "--trials", str(trials), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def part_workers(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import optuna
    from throwaway_postgres import missing_reason, throwaway_postgres

    from modelzip.checkpoint import save_checkpoint
    from modelzip.search import SearchConfig, parse_budget
    from modelzip.search.core import build_space
    from modelzip.search.study import open_study

    reason = missing_reason()
    if reason:
        return {"skipped": reason}
    ckpt, train, _ = _load("lenet5", args.quick)
    path = ROOT / "bench" / "checkpoints" / "lenet5"
    if args.quick:  # the stand-in baseline, saved where the workers can load it
        path = Path(tempfile.mkdtemp()) / "lenet5"
        save_checkpoint(ckpt, path, dataset={"name": "mnist"})
    model = load_checkpoint(path).model
    trials = 4 if args.quick else args.worker_trials
    budget = parse_budget(LENET5_TARGET)
    out: dict[str, Any] = {"model": "lenet5", "strategy": "bo", "trials": trials,
                           "storage": "PostgreSQL 15, throwaway cluster on a unix socket"}
    with throwaway_postgres() as url:
        for workers in (1, 2):
            name = f"lenet5-workers{workers}"
            ctx = make_context(data=train, progress=False)
            config = SearchConfig(strategy="bo", trials=trials, val_samples=1000,
                                  source={"checkpoint": str(path), "dataset": "mnist"},
                                  space={"bits": [2, 3, 4, 5, 6], "default_bits": 4,
                                         "max_ratio": 0.96, "ratio_step": 0.02})
            space = build_space(model, config, ctx)
            open_study(name, url, space_hash=space.space_hash(model), attrs={
                "space": space.to_dict(), "budget": budget.to_dict(), "strategy": "bo",
                "seed": 0, "trials": trials, "val_samples": 1000, "source": config.source})
            start = time.perf_counter()
            procs = [_worker(url, name, trials) for _ in range(workers)]
            logs = [p.communicate()[0].decode(errors="replace")[-400:] for p in procs]
            wall = time.perf_counter() - start
            study = optuna.load_study(study_name=name, storage=url.replace(
                "postgresql://", "postgresql+psycopg2://"))
            numbers = [t.number for t in study.trials]
            params = [json.dumps(t.params, sort_keys=True) for t in study.trials]
            out[f"workers{workers}"] = {
                "wall_time_s": round(wall, 1), "trials": len(study.trials),
                "complete": sum(t.state.name == "COMPLETE" for t in study.trials),
                "failed": sum(t.state.name == "FAIL" for t in study.trials),
                "duplicate_numbers": len(numbers) - len(set(numbers)),
                "duplicate_points": len(params) - len(set(params)),
                "exit_codes": [p.returncode for p in procs], "log_tail": logs[-1][-200:]}
            print(json.dumps(out[f"workers{workers}"])[:300], flush=True)
    one, two = out["workers1"]["wall_time_s"], out["workers2"]["wall_time_s"]
    out["speedup_two_vs_one"] = round(one / two, 3) if two else None
    return out


def _shown(path: Path) -> str:
    """A path as the results record it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def screenshot(report: Path, png: Path) -> str | None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,2400"):
        opts.add_argument(flag)
    opts.binary_location = "/usr/bin/chromium"
    try:
        driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    except Exception as exc:  # no browser: say why, keep the results
        return f"no screenshot: {exc}"
    try:
        driver.get(report.resolve().as_uri())
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--part", nargs="+", default=["eurosat", "lenet5", "workers"])
    parser.add_argument("--eurosat-trials", type=int, default=30)
    parser.add_argument("--eurosat-strategy", default="bo")
    parser.add_argument("--eurosat-study", help="resume this study (its trials are kept)")
    parser.add_argument("--eurosat-bits", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--lenet5-trials", type=int, default=10)
    parser.add_argument("--worker-trials", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = Path(tempfile.mkdtemp()) if args.quick else RESULTS
    path = out_dir / "search.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    sections = {k: v for k, v in doc.items() if k in ("eurosat_32KB", "strategies_lenet5",
                                                       "two_workers")}
    description = ("budget-driven search through modelzip.compress(model, target=...): "
                   "eurosat_cnn to a runnable .mzip <= 32 KB, the strategies side by side on "
                   "lenet5 at equal trial counts, one vs two search-worker processes on "
                   "PostgreSQL")

    def save() -> None:  # other parts may run in another process: keep what they wrote
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if key in ("eurosat_32KB", "strategies_lenet5", "two_workers") \
                        and key not in mine:
                    sections[key] = value
        write_results(path, "search", description, [], settings={
            "quick": args.quick, "threads": 1, "eurosat_trials": args.eurosat_trials,
            "lenet5_trials": args.lenet5_trials, "worker_trials": args.worker_trials,
            "eurosat_finetune_epochs": args.finetune_epochs}, **sections)

    mine = {"eurosat": "eurosat_32KB", "lenet5": "strategies_lenet5",
            "workers": "two_workers"}
    mine = {mine[p] for p in args.part}
    if "eurosat" in args.part:
        sections["eurosat_32KB"] = part_eurosat(args, out_dir)
        save()
        png = out_dir / "search_report.png"
        why = screenshot(Path(sections["eurosat_32KB"]["report"]), png)
        sections["eurosat_32KB"]["screenshot"] = why or _shown(png)
        save()
    if "lenet5" in args.part:
        sections["strategies_lenet5"] = part_lenet5(args, out_dir)
        save()
    if "workers" in args.part:
        sections["two_workers"] = part_workers(args, out_dir)
        save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
