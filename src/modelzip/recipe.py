"""Recipes: a validated list of technique steps, in YAML.

    name: prune-lenet300
    finetune: {epochs: 4, lr: 0.01, weight_decay: 1.0e-4}   # defaults for fine-tuning steps
    steps:
      - magnitude: {sparsity: 0.9}
      - finetune: {epochs: 3}
    pack: {coder: best}    # how `modelzip compress` codes the .mzip (optional)

Each step names one registered technique (see ``modelzip.registry``) and its options; unknown
techniques, unknown options and values of the wrong type are reported with the step number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from torch import nn

from modelzip.errors import ConfigError
from modelzip.registry import Context, apply_technique, config_from_dict

__all__ = ["Recipe", "builtin_recipe", "builtin_recipes", "load_recipe", "run_recipe"]


class _PackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # state-dict: the weights, unpacked onto the model in PyTorch; onnx: the runnable graph
    # with its weights, for the torch-free `modelzip run`
    format: Literal["state-dict", "onnx"] = "state-dict"
    # best: per tensor, the smallest of the codec's coders (Huffman, rANS, fixed width)
    coder: Literal["best", "huffman", "rans", "raw"] = "best"
    int8: bool = False  # format onnx: static int8 operators, calibrated on training samples
    method: Literal["minmax", "percentile", "entropy"] = "minmax"  # int8 calibration
    # int8 weights in 7 bits (true) or 8 (false); left out: by the CPU packing, 8 bits where
    # VNNI/AMX sum in int32, 7 where AVX2's int16 sums would overflow (modelzip.runtime.cpu)
    reduce_range: bool | None = None
    # Reed-Solomon parity per data byte (0.08: 8%), so that the file survives bit flips
    fec: float | None = Field(default=None, ge=0.01, le=1.0)

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> _PackSettings:
        if self.int8 and self.format != "onnx":
            raise ValueError("int8 operators need format: onnx")
        return self


class _RecipeFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "recipe"
    description: str = ""
    finetune: dict[str, Any] = {}
    steps: list[dict[str, dict[str, Any] | None]]
    pack: _PackSettings = _PackSettings()

    @field_validator("steps")
    @classmethod
    def _one_technique_per_step(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not steps:
            raise ValueError("a recipe needs at least one step")
        for i, step in enumerate(steps, 1):
            if len(step) != 1:
                raise ValueError(f"step {i} must name exactly one technique, got "
                                 f"{', '.join(step) or 'none'}")
        return steps


@dataclass(frozen=True)
class Recipe:
    """A named list of (technique name, config) steps plus fine-tuning defaults."""

    name: str
    steps: tuple[tuple[str, Any], ...]
    finetune: dict[str, Any]
    description: str = ""
    pack: dict[str, Any] = field(default_factory=lambda: _PackSettings().model_dump())

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> Recipe:
        try:
            parsed = _RecipeFile.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{source}: {where or 'recipe'}: {first['msg']}") from None
        steps = []
        for i, step in enumerate(parsed.steps, 1):
            (name, options), = step.items()
            try:
                steps.append((name, config_from_dict(name, options or {})))
            except ConfigError as exc:
                raise ConfigError(f"{source}: step {i}: {exc}") from None
        try:
            config_from_dict("finetune", parsed.finetune)  # checked now, applied when run
        except ConfigError as exc:
            raise ConfigError(f"{source}: finetune defaults: {exc}") from None
        return cls(parsed.name, tuple(steps), dict(parsed.finetune), parsed.description,
                   parsed.pack.model_dump())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON): each step's options that differ from their defaults,
        nested configs (fine-tuning, layer selection) as mappings, tuples as lists."""
        import dataclasses

        def value_of(value: Any) -> Any:
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return plain(value)
            if isinstance(value, tuple | list):
                return [value_of(v) for v in value]
            if isinstance(value, dict):
                return {k: value_of(v) for k, v in value.items()}
            return value

        def plain(config: Any) -> dict[str, Any]:
            out = {}
            for f in dataclasses.fields(config):
                value = getattr(config, f.name)
                default = (f.default if f.default is not dataclasses.MISSING else
                           f.default_factory() if f.default_factory is not dataclasses.MISSING
                           else dataclasses.MISSING)
                if f.init and value != default:
                    out[f.name] = value_of(value)
            return out

        return {"name": self.name, "description": self.description, "finetune": self.finetune,
                "steps": [{name: plain(cfg)} for name, cfg in self.steps],
                "pack": dict(self.pack)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a YAML recipe (safe loader only)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give the recipe's YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with a 'steps' list")
    return Recipe.from_dict(data, source=str(path))


def builtin_recipes() -> list[str]:
    """Names of the recipes that ship with modelzip (package data)."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("modelzip.recipes")
                  .iterdir() if p.name.endswith(".yaml"))


def builtin_recipe(name: str) -> Recipe:
    """A recipe that ships with modelzip, by name (e.g. "deep-compression")."""
    source = resources.files("modelzip.recipes") / f"{name}.yaml"
    if not source.is_file():
        raise ConfigError(f"no built-in recipe {name!r}; built-in: "
                          f"{', '.join(builtin_recipes())}; or pass a YAML file")
    data = yaml.safe_load(source.read_text())
    return Recipe.from_dict(data, source=f"built-in recipe {name}")


def run_recipe(model: nn.Module, recipe: Recipe, ctx: Context) -> nn.Module:
    """Apply every step in order, each on a copy (``modelzip.apply``); the context carries
    data, fine-tuning defaults and masks. ``model`` is not changed."""
    from modelzip.finetune import FinetuneConfig

    if recipe.finetune:
        base = config_from_dict("finetune", recipe.finetune)
        assert isinstance(base, FinetuneConfig)
        ctx.finetune = base.merged(ctx.finetune)
    for i, (name, config) in enumerate(recipe.steps, 1):
        ctx.log(f"step {i}/{len(recipe.steps)}: {name}")
        model = apply_technique(model, config, ctx)
        _check_finite(model, f"{recipe.name}: step {i} ({name})")
    return model


def _check_finite(model: nn.Module, where: str) -> None:
    """A diverged fine-tuning leaves NaN/inf weights; stop before they are packed."""
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"{where} left non-finite values in {key} (training diverged); "
                              "lower the step's learning rate (lr) and run it again")
