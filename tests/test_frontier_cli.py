"""The size frontier's techniques from the command line, on a real pruned checkpoint: each
writes a checkpoint whose .mzip (written by quantize, or packed after prune) unpacks to its
weights bit for bit, and a bad option is one clear error that leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelzip.checkpoint import load_checkpoint
from modelzip.codec.model import unpack
from tests.test_cli import assert_ok, assert_user_error, run_cli

PRUNED = Path(__file__).resolve().parent.parent / "bench" / "checkpoints" / "pruned" / \
    "magnitude-lenet300-12x"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("command", "method", "settings"), [
    ("quantize", "slq", ["bits=3", "portion=1", "bias_bits=5", "bias_grid=true"]),
    ("quantize", "mlq", ["bits=2", "portion=1", "order=largest", "finetune={epochs: 0}"]),
    ("quantize", "transform-coding", ["bits=5", "block=8"]),
    ("quantize", "weightless", ["bits=3", "cell_bits=10"]),
    ("quantize", "kmeans", ["bits=3", "codebook_dtype=float16"]),
    ("prune", "sparse-vd", ["finetune={epochs: 1, lr: 0.001}", "kl_warmup_epochs=0.5"]),
])
def test_each_frontier_technique_from_the_cli_packs_bit_exactly(
        tmp_path: Path, data_root: Path, command: str, method: str, settings: list[str]
) -> None:
    out = tmp_path / method
    args = [a for s in settings for a in ("--set", s)]
    if command == "prune":  # sparse-vd is a training run itself: no fine-tuning after it
        args += ["--finetune-epochs", "0"]
    assert_ok(run_cli(command, PRUNED, "--method", method, *args, "--no-progress", "-o", out))
    if command == "prune":  # a pruned checkpoint is packed on its own
        assert_ok(run_cli("pack", out, "-o", out / "model.mzip"))
    weights = load_checkpoint(out).model.state_dict()
    packed = unpack((out / "model.mzip").read_bytes()).state_dict()
    assert packed.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(packed[key], value), key
    assert (out / "model.mzip").stat().st_size < (PRUNED / "model.safetensors").stat().st_size


@pytest.mark.parametrize(("method", "setting", "words"), [
    ("slq", "bias_grid=true", "bias_grid needs bias_bits"),
    ("kmeans", "codebook_dtype=bfloat16", "codebook_dtype"),
    ("transform-coding", "block=65", "block"),
])
def test_a_bad_frontier_option_is_one_clear_error(tmp_path: Path, data_root: Path, method: str,
                                                  setting: str, words: str) -> None:
    out = tmp_path / "bad"
    assert_user_error(run_cli("quantize", PRUNED, "--method", method, "--set", setting,
                              "--no-progress", "-o", out), words)
    assert not out.exists()
