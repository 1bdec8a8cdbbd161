"""The compression workflow, in one place: ``compress(model, recipe, data=...)``.

    result = modelzip.compress(model, "deep-compression", data=train, test_data=test,
                               out="runs/m.mzip")
    result.artifact_bytes, result.after_error, result.records

What it does, in order: choose the validation split, the calibration set and the fine-tuning
defaults (seeded, recorded in ``result.settings``); measure and evaluate the model as it comes;
run the recipe's steps (each on a copy, see ``modelzip.apply``); pack the result (the weights
as a .mzip, or the runnable ONNX graph when the recipe's pack step says ``format: onnx``);
read the packed bytes back and evaluate *that* model, so every figure is of what the file
holds. The CLI and the benchmarks call this; nothing else implements the workflow.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.atomic import write_atomic
from modelzip.core.context import Context, logger
from modelzip.core.dataset import first_batch_inputs
from modelzip.errors import ConfigError

__all__ = ["CALIBRATION_SAMPLES", "VAL_FRACTION", "CompressionResult", "calibration_subset",
           "compress", "finetune_defaults", "make_context", "seeded_subset"]

VAL_FRACTION = 0.1  # of the training data, held out for choices made on accuracy
CALIBRATION_SAMPLES = 300  # seeded training samples for int8 calibration
FINETUNE_EPOCHS = 3  # fine-tuning a trained model: fewer epochs ...
FINETUNE_LR_FACTOR = 0.1  # ... and a tenth of its training learning rate


@dataclass
class CompressionResult:
    """What ``compress`` did and measured. Errors are the evaluator's scores (error % for
    classifiers) of the model as it came and of the model read back from the artifact."""

    model: nn.Module
    recipe: Any
    before: Any  # ModelProfile of the input model
    after: Any  # ModelProfile of the compressed model (read back from the artifact)
    test_error_before: Any = None  # EvalResult (or the evaluator's result) on test_data
    test_error_after: Any = None
    val_error_before: float | None = None
    val_error_after: float | None = None
    artifact: bytes | None = None
    artifact_path: Path | None = None
    artifact_kind: str | None = None  # "state-dict" or "onnx-graph"
    records: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0

    @property
    def artifact_bytes(self) -> int | None:
        return None if self.artifact is None else len(self.artifact)

    @property
    def ratio(self) -> float | None:
        """Dense fp32 bytes of the input model's parameters / artifact bytes."""
        if self.artifact is None:
            return None
        return self.before.dense_bytes / max(len(self.artifact), 1)

    def to_dict(self) -> dict[str, Any]:
        def score(value: Any) -> Any:
            if value is None or isinstance(value, int | float):
                return value
            return value.to_dict() if hasattr(value, "to_dict") else repr(value)

        return {
            "recipe": self.recipe.to_dict() if hasattr(self.recipe, "to_dict") else None,
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "test_before": score(self.test_error_before),
            "test_after": score(self.test_error_after),
            "val_error_before": self.val_error_before, "val_error_after": self.val_error_after,
            "artifact_bytes": self.artifact_bytes, "artifact_kind": self.artifact_kind,
            "artifact_path": str(self.artifact_path) if self.artifact_path else None,
            "ratio_vs_dense_fp32": self.ratio, "records": self.records,
            "settings": self.settings, "wall_time_s": self.wall_time_s,
        }


def finetune_defaults(training: Any = None) -> Any:
    """Fine-tuning settings for a trained model: its training settings (a TrainConfig, or the
    dict a checkpoint records) with ``FINETUNE_EPOCHS`` epochs and a tenth of the learning
    rate."""
    from modelzip.train import TrainConfig

    if isinstance(training, dict):
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        training = TrainConfig(**{k: v for k, v in training.items() if k in known})
    base = training if isinstance(training, TrainConfig) else TrainConfig()
    return dataclasses.replace(base, epochs=FINETUNE_EPOCHS, lr=base.lr * FINETUNE_LR_FACTOR)


def seeded_subset(data: Any, n: int, seed: int = 0) -> Any:
    """A seeded ``n`` of ``data``'s samples in their original order (all of them when it
    holds no more; data without ``subset`` as it is)."""
    if not hasattr(data, "subset") or len(data) <= n:
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.subset(idx.sort().values)


def calibration_subset(data: Any, n: int = CALIBRATION_SAMPLES, *,
                       val_fraction: float = VAL_FRACTION, seed: int = 0) -> Any:
    """The int8 calibration samples of full training data: a seeded ``n`` of the training
    split less its held-out validation part (the split ``make_context`` makes)."""
    from modelzip.data import train_val_split

    if n < 1:
        raise ConfigError(f"the calibration set needs >= 1 sample, got {n}")
    train, _ = train_val_split(data, val_fraction, seed=seed)
    return seeded_subset(train, n, seed)


def make_context(*, data: Any = None, val_data: Any = None, test_data: Any = None,
                 calibration_data: Any = None, example_inputs: Any = None,
                 finetune: Any = None, trainer: Any = None, evaluator: Any = None,
                 loss_fn: Any = None, val_fraction: float = VAL_FRACTION, seed: int = 0,
                 progress: bool = True) -> Context:
    """The one place where the validation split, the calibration set and the fine-tuning
    defaults are chosen. ``data`` is the training data; without ``val_data`` a seeded
    ``val_fraction`` of it is held out (for a dataset with ``subset``, e.g. ImageDataset)."""
    settings: dict[str, Any] = {"seed": seed}
    train = data
    if data is not None and val_data is None:
        if hasattr(data, "subset"):
            from modelzip.data import train_val_split

            train, val_data = train_val_split(data, val_fraction, seed=seed)
            settings["validation"] = (f"seeded {val_fraction:.0%} of the training data "
                                      f"({len(val_data)} samples), held out from fine-tuning")
        else:
            settings["validation"] = "none (pass val_data)"
    elif val_data is not None:
        settings["validation"] = f"given ({len(val_data)} samples)"
    if calibration_data is None and train is not None:
        calibration_data = seeded_subset(train, CALIBRATION_SAMPLES, seed)
    if calibration_data is not None:
        settings["calibration_samples"] = len(calibration_data)
    if example_inputs is None and train is not None:
        example_inputs = first_batch_inputs(train, 2)
    finetune = finetune if finetune is not None else finetune_defaults()
    settings["finetune_defaults"] = finetune.to_dict() if hasattr(finetune, "to_dict") else None
    return Context(train_data=train, val_data=val_data, test_data=test_data,
                   calibration_data=calibration_data, example_inputs=example_inputs,
                   finetune=finetune, trainer=trainer, evaluator=evaluator, loss_fn=loss_fn,
                   progress=progress, settings=settings)


def _recipe(recipe: Any) -> Any:
    from modelzip.recipe import Recipe, builtin_recipe, load_recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, str | Path):
        path = Path(recipe)
        if path.suffix in (".yaml", ".yml") or path.exists():
            return load_recipe(path)
        return builtin_recipe(str(recipe))
    raise ConfigError(f"a recipe is a Recipe, a mapping, a YAML path or a built-in name, not "
                      f"{type(recipe).__name__}")


def _input_shape(example_inputs: Any) -> tuple[int, ...] | None:
    if isinstance(example_inputs, torch.Tensor):
        return tuple(example_inputs.shape[1:])
    return None


def _profile(model: nn.Module, example_inputs: Any) -> Any:
    from modelzip.metrics import profile_model

    return profile_model(model, example_inputs=example_inputs)


def _pack(model: nn.Module, original: nn.Module, recipe: Any, ctx: Context,
          skeleton: nn.Module | None, meta: dict[str, Any]) -> tuple[bytes, nn.Module | None,
                                                                    str]:
    """The recipe's pack step: bytes, the model read back from them (None for a graph) and
    the artifact kind."""
    settings = dict(recipe.pack)
    fmt = settings.get("format", "state-dict")
    if fmt == "onnx":
        from modelzip.runtime.onnx_artifact import pack_model_onnx

        # the runner normalises uint8 images itself with these, and names the classes
        dataset = meta.get("dataset", {})
        meta = {**{k: dataset[k] for k in ("mean", "std", "classes") if k in dataset},
                "model": _model_name(model), "dataset": dataset.get("name")}
        calibration = None
        if settings.get("int8"):
            calib = ctx.require("calibration_data", "pack (int8)")
            calibration = _as_arrays(first_batch_inputs(calib, len(calib)))
        example = ctx.example_inputs
        blob = pack_model_onnx(model, int8=bool(settings.get("int8")), calibration=calibration,
                               meta=meta, calibration_method=settings.get("method", "minmax"),
                               coder=settings.get("coder", "best"), example_inputs=example,
                               reduce_range=settings.get("reduce_range"))
        return _protect(blob, settings), None, "onnx-graph"
    from modelzip.codec.model import pack, unpack

    blob = _protect(pack(model, coder=settings.get("coder", "best"), meta=meta,
                         skeleton=skeleton), settings)
    return blob, unpack(blob, model=_fresh_skeleton(original, skeleton)), "state-dict"


def _protect(blob: bytes, settings: dict[str, Any]) -> bytes:
    """The pack step's ``fec``: Reed-Solomon parity around the artifact (read back as is)."""
    if settings.get("fec") is None:
        return blob
    from modelzip.codec.artifact import protect_artifact

    return protect_artifact(blob, fec=settings["fec"])


def _fresh_skeleton(original: nn.Module, skeleton: nn.Module | None) -> nn.Module:
    """A model as freshly built, to read the artifact back onto: the given skeleton, a new
    build from the model's zoo entry or builder, or the input model itself when no technique
    had changed its structure before it came in."""
    from modelzip.codec.model import _fresh
    from modelzip.core.builders import source_of
    from modelzip.core.modelrec import architecture, base_architecture

    if skeleton is not None:
        return copy.deepcopy(skeleton)
    fresh = _fresh(source_of(original))
    if fresh is not None:
        return fresh
    base = base_architecture(original)
    if base is None or base == architecture(original):
        return copy.deepcopy(original)
    raise ConfigError("this model was structurally changed before compress() got it and "
                      "modelzip cannot build it afresh; pass skeleton= a freshly built copy")


def _model_name(model: nn.Module) -> str:
    from modelzip.core.builders import source_of

    source = source_of(model) or {}
    return str(source.get("zoo") or source.get("builder") or type(model).__name__)


def _as_arrays(inputs: Any) -> Any:
    """Calibration inputs as the int8 quantizer takes them: one array, or a dict of arrays by
    the graph's input names (the model's keyword names)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.detach().numpy()
    if isinstance(inputs, dict):
        return {k: v.detach().numpy() for k, v in inputs.items()}
    raise ConfigError("int8 calibration takes a tensor or a dict of keyword tensors as inputs; "
                      f"got {type(inputs).__name__}")


def _artifact_meta(data: Any, example_inputs: Any) -> dict[str, Any]:
    """What the artifact says about its data: the dataset (name, normalisation, classes,
    per-sample input shape) as far as the data tells."""
    dataset: dict[str, Any] = {}
    if hasattr(data, "name"):
        dataset["name"] = data.name
    for key in ("mean", "std", "classes"):
        if hasattr(data, key):
            dataset[key] = list(getattr(data, key))
    shape = _input_shape(example_inputs)
    if shape:
        dataset["input_shape"] = list(shape)
    return {"dataset": dataset} if dataset else {}


def compress(model: nn.Module, recipe: Any = None, *, target: Any = None,
             max_drop: float | None = None, search: Any = None, data: Any = None,
             val_data: Any = None,
             test_data: Any = None, calibration_data: Any = None, example_inputs: Any = None,
             finetune: Any = None, trainer: Any = None, evaluator: Any = None,
             loss_fn: Any = None, skeleton: nn.Module | None = None,
             out: str | Path | None = None, force: bool = False,
             val_fraction: float = VAL_FRACTION, seed: int = 0, progress: bool = True,
             ctx: Context | None = None) -> CompressionResult:
    """Compress ``model`` with ``recipe`` (a Recipe, a mapping, a YAML file or a built-in
    recipe's name) and pack it; returns a ``CompressionResult``. ``model`` is not changed.

    ``data``: training data (the data protocol); ``val_data`` defaults to a seeded
    ``val_fraction`` of it; ``test_data`` is only evaluated for the report. ``trainer``,
    ``evaluator``, ``loss_fn``: the user's loop (defaults: classification). ``out``: where to
    write the artifact (refused if it exists, unless ``force``). ``ctx``: a ready Context
    instead of the data arguments.

    With ``target`` (``"size=32KB"``, a list of such, or a ``Budget``) and/or ``max_drop``
    (validation accuracy points) the per-layer recipe is found by ``modelzip.search``
    (``search``: a ``SearchConfig`` or a mapping of its options); the result's
    ``settings["search"]`` describes the search."""
    if target is not None or max_drop is not None:
        return _search(model, recipe, target, max_drop, search, out=out, force=force,
                       skeleton=skeleton, ctx=ctx, data=data, val_data=val_data,
                       test_data=test_data, calibration_data=calibration_data,
                       example_inputs=example_inputs, finetune=finetune, trainer=trainer,
                       evaluator=evaluator, loss_fn=loss_fn, val_fraction=val_fraction,
                       seed=seed, progress=progress)
    if recipe is None:
        raise ConfigError("compress() needs a recipe, or a target/max_drop to search for one")
    start = time.perf_counter()
    recipe = _recipe(recipe)
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.exists() and not force:
        raise ConfigError(f"{out_path} exists; pass force=True (CLI: --force) to replace it")
    if ctx is None:
        ctx = make_context(data=data, val_data=val_data, test_data=test_data,
                           calibration_data=calibration_data, example_inputs=example_inputs,
                           finetune=finetune, trainer=trainer, evaluator=evaluator,
                           loss_fn=loss_fn, val_fraction=val_fraction, seed=seed,
                           progress=progress)
    if ctx.example_inputs is None:
        ctx.example_inputs = _zoo_example(model)
    model = model.eval()
    if ctx.original_model is None:
        # distillation's teacher "original": every recipe step works on a copy, so the input
        # model stays as it was and needs no copy of its own (teachers run under no_grad)
        ctx.original_model = model
    before = _profile(model, ctx.example_inputs)
    test_before = ctx.evaluate(model, ctx.test_data) if ctx.test_data is not None else None
    val_before = ctx.val_error(model)
    logger.info("compressing with recipe %s (%d steps)", recipe.name, len(recipe.steps))
    from modelzip.recipe import run_recipe

    compressed = run_recipe(model, recipe, ctx)
    meta = _artifact_meta(ctx.train_data if ctx.train_data is not None else ctx.test_data,
                          ctx.example_inputs)
    blob, read_back, kind = _pack(compressed, model, recipe, ctx, skeleton, meta)
    if out_path is not None:
        write_atomic(out_path, blob)
    if read_back is not None:
        after_model = read_back
        test_after = (ctx.evaluate(after_model, ctx.test_data) if ctx.test_data is not None
                      else None)
        val_after = ctx.val_error(after_model)
    else:  # a graph: evaluate it as the on-board runner runs it
        after_model = compressed
        test_after, val_after = _evaluate_graph(blob, ctx)
    after = _profile(after_model, ctx.example_inputs)
    return CompressionResult(
        model=after_model, recipe=recipe, before=before, after=after,
        test_error_before=test_before, test_error_after=test_after,
        val_error_before=val_before, val_error_after=val_after, artifact=blob,
        artifact_path=out_path, artifact_kind=kind, records=list(ctx.records),
        settings=dict(ctx.settings), wall_time_s=time.perf_counter() - start)


def _search(model: nn.Module, recipe: Any, target: Any, max_drop: float | None,
            search: Any, *, out: Any, force: bool, skeleton: nn.Module | None,
            ctx: Context | None, seed: int, progress: bool, **data: Any) -> CompressionResult:
    """compress() with a budget: modelzip.search finds the recipe's per-layer choices."""
    from modelzip.search import Budget, SearchConfig, parse_budget
    from modelzip.search import search as run_search

    if recipe is not None:
        raise ConfigError("give either a recipe or a target/max_drop to search for one")
    budget = target if isinstance(target, Budget) else parse_budget(target, max_drop)
    if isinstance(target, Budget) and max_drop is not None:
        budget = dataclasses.replace(budget, max_drop=max_drop)
    config = search if isinstance(search, SearchConfig) else SearchConfig(
        **{"seed": seed, "progress": progress, **dict(search or {})})
    if ctx is None:
        ctx = make_context(seed=seed, progress=progress, **data)
    return run_search(model, budget, ctx=ctx, config=config, out=out, skeleton=skeleton,
                      force=force).compression


def _evaluate_graph(blob: bytes, ctx: Context) -> tuple[Any, float | None]:
    from modelzip.codec.artifact import read_artifact
    from modelzip.runtime.onnx_artifact import GRAPH_BLOB

    artifact = read_artifact(blob)
    graph = artifact.blobs.get(GRAPH_BLOB) if hasattr(artifact, "blobs") else None
    if graph is None or ctx.evaluator is not None:
        return None, None
    test = _evaluate_runner(blob, ctx.test_data) if ctx.test_data is not None else None
    val = (_evaluate_runner(blob, ctx.val_data).error_pct if ctx.val_data is not None
           else None)
    return test, val


def _evaluate_runner(blob: bytes, data: Any) -> Any:
    """``evaluate_onnx`` of a .mzip graph artifact: its weights are put in place by the
    on-board runner's session (onnxruntime cannot parse the .mzip bytes themselves)."""
    import numpy as np

    from modelzip.runtime.export import eval_result
    from modelzip.runtime.runner import Runner

    runner = Runner.from_bytes(blob)
    logits = np.concatenate([runner.logits(x.numpy()) for x, _ in data.batches(500)])
    return eval_result(logits, data.labels.numpy())


def _zoo_example(model: nn.Module) -> Any:
    spec = getattr(model, "modelzip_spec", None)
    if spec is not None and getattr(spec, "input_shape", None):
        return torch.zeros(2, *spec.input_shape)
    return None
