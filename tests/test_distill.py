"""Knowledge distillation: the loss maths, the hint regressor, the ``kd`` and ``hint``
techniques, distillation as the recovery step of any recipe, unlabeled data and the CLI."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import modelzip
from modelzip.checkpoint import load_checkpoint, save_checkpoint
from modelzip.core.context import Context
from modelzip.core.dataset import Dataset
from modelzip.core.registry import apply, config_from_dict
from modelzip.distill import HintConfig, KDConfig, distill, hint_loss, kd_loss, soft_target_kl
from modelzip.distill.hint import make_regressor
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.train import DistillSettings, TrainConfig
from modelzip.zoo import build_model
from tests.test_cli import assert_ok, assert_user_error, run_cli


# ---------------------------------------------------------------------------- helpers
def _mlp(outputs: int = 10, hidden: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


def _data(n: int = 256, seed: int = 0, labels: bool = True) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Dataset([(x[i:i + 32], y[i:i + 32] if labels else None) for i in range(0, n, 32)],
                   name="random")


def _inputs(data: Dataset) -> torch.Tensor:
    return torch.cat([x for x, _ in data.batches()])


def _kl_to(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(soft_target_kl(student.eval()(x), teacher.eval()(x), 1.0))


TUNE = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="constant", seed=0)


# ---------------------------------------------------------------------------- loss maths
def test_kd_loss_matches_a_hand_computation() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 3.0, -1.0]])
    y = torch.tensor([1])
    T, alpha = 2.0, 0.7
    p_t = [math.exp(v / T) for v in t[0].tolist()]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [math.exp(v / T) for v in s[0].tolist()]
    p_s = [v / sum(p_s) for v in p_s]
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
    z = [math.exp(v) for v in s[0].tolist()]
    ce = -math.log(z[1] / sum(z))
    expected = (1 - alpha) * ce + alpha * T * T * kl
    assert float(soft_target_kl(s, t, T)) == pytest.approx(kl, rel=1e-6)
    assert float(kd_loss(s, t, y, T, alpha)) == pytest.approx(expected, rel=1e-6)


def test_soft_term_is_scaled_by_t_squared_and_alpha_zero_is_the_task_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    for T in (1.0, 3.0, 20.0):
        assert float(kd_loss(s, t, y, T, 1.0)) == pytest.approx(
            T * T * float(soft_target_kl(s, t, T)), rel=1e-6)
    assert torch.equal(kd_loss(s, t, y, 5.0, 0.0), F.cross_entropy(s, y))
    assert float(soft_target_kl(t, t, 4.0)) == pytest.approx(0.0, abs=1e-7)
    # alpha = 1 never reads the targets
    assert float(kd_loss(s, t, None, 2.0, 1.0)) > 0
    assert float(hint_loss(torch.ones(2, 3), torch.zeros(2, 3))) == 1.0


def test_soft_targets_give_no_gradient_to_the_teacher() -> None:
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10, requires_grad=True)
    kd_loss(s, t, torch.zeros(4, dtype=torch.long), 4.0, 0.5).backward()
    assert s.grad is not None and t.grad is None


# ---------------------------------------------------------------------------- hint regressor
def test_hint_regressor_maps_each_shape_or_says_why_not() -> None:
    same = make_regressor((2, 8, 16, 16), (2, 32, 16, 16), "s to t")
    assert isinstance(same, nn.Conv2d) and same.kernel_size == (1, 1)
    assert same(torch.randn(2, 8, 16, 16)).shape == (2, 32, 16, 16)
    larger = make_regressor((2, 8, 16, 12), (2, 4, 8, 8), "s to t")
    assert larger.kernel_size == (9, 5)
    assert larger(torch.randn(2, 8, 16, 12)).shape == (2, 4, 8, 8)
    vec = make_regressor((2, 20), (2, 50), "s to t")
    assert isinstance(vec, nn.Linear) and vec(torch.randn(2, 20)).shape == (2, 50)
    with pytest.raises(ConfigError, match=r"no regressor maps s to t: .* smaller"):
        make_regressor((2, 8, 4, 4), (2, 8, 8, 8), "s to t")
    with pytest.raises(ConfigError, match=r"no regressor maps s to t: .*both"):
        make_regressor((2, 8, 4, 4), (2, 128), "s to t")


def test_the_thin_eurosat_student_is_deeper_a_third_of_the_macs_and_hint_ready() -> None:
    from modelzip.metrics import count_macs

    teacher, student = build_model("eurosat_cnn"), build_model("eurosat_thin")
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > sum(isinstance(m, nn.Conv2d) for m in teacher.modules())
    assert max(c.out_channels for c in convs) < 128
    assert count_macs(student)[1] * 3 <= count_macs(teacher)[1]
    # the guided / hint layer pair the benchmark uses: same map size, a 1x1 regressor
    ctx = Context(train_data=Dataset([(torch.randn(4, 3, 64, 64), torch.arange(4))]),
                  finetune=TrainConfig(epochs=1, batch_size=4), progress=False)
    apply(student, HintConfig(student_layer="features.6", teacher_layer="features.4",
                              teacher=teacher, finetune=FinetuneConfig(epochs=0)), ctx)
    (record,) = ctx.records
    assert record["student_shape"] == [24, 16, 16] and record["teacher_shape"] == [64, 16, 16]
    assert "kernel_size=(1, 1)" in record["regressor"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("values", "message"), [
    ({"T": 0}, r"kd: T \(the temperature\) must be > 0"),
    ({"T": -2}, r"kd: T \(the temperature\) must be > 0"),
    ({"alpha": 1.5}, r"kd: alpha .* must be in \[0, 1\]"),
    ({"alpha": -0.1}, r"kd: alpha .* must be in \[0, 1\]"),
    ({"teacher": ""}, "kd: teacher must be"),
    ({"finetune": {"distill": {"T": 2}}}, "give the teacher, T and alpha as kd's own"),
])
def test_bad_kd_settings_are_one_clear_error(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict("kd", values)


def test_bad_recovery_settings_name_the_step() -> None:
    with pytest.raises(ConfigError, match="kmeans: finetune: distill: alpha"):
        config_from_dict("kmeans", {"bits": 4, "finetune": {"distill": {"alpha": 2}}})
    with pytest.raises(ConfigError, match=r"unknown option.*tau"):
        config_from_dict("finetune", {"distill": {"tau": 2}})


def test_teacher_with_other_outputs_and_teachers_that_do_not_load(tmp_path: Path) -> None:
    data = _data(64)
    student = _mlp(outputs=5)
    before = copy.deepcopy(student.state_dict())
    ctx = Context(train_data=data, progress=False)
    with pytest.raises(ConfigError, match=r"kd: distill: the teacher and the student give "
                                          r"different outputs: teacher \(2, 10\), student "
                                          r"\(2, 5\)"):
        apply(student, KDConfig(teacher=_mlp(), finetune=FinetuneConfig(epochs=1)), ctx)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert ctx.records == []
    with pytest.raises(ConfigError, match="teacher 'original' is the model as compress"):
        apply(student, KDConfig(finetune=FinetuneConfig(epochs=1)), ctx)
    with pytest.raises(ConfigError, match="does not exist"):
        apply(student, KDConfig(teacher=str(tmp_path / "nowhere")), ctx)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "modelzip.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"teacher '.*broken' does not load as a modelzip "
                                          "checkpoint"):
        apply(student, KDConfig(teacher=str(broken)), ctx)


def test_hint_layers_that_do_not_exist_are_listed_and_unmappable_shapes_named() -> None:
    teacher, student = _conv_net(16, pool=False), _conv_net(8, pool=True)
    ctx = Context(train_data=_data(64), progress=False)
    with pytest.raises(ConfigError, match=r"the student has no layer 'conv9'; its layers: "
                                          r"conv1, relu1, .*head"):
        apply(student, HintConfig(student_layer="conv9", teacher_layer="conv2",
                                  teacher=teacher), ctx)
    with pytest.raises(ConfigError, match="the teacher has no layer 'nope'"):
        apply(student, HintConfig(student_layer="conv2", teacher_layer="nope",
                                  teacher=teacher), ctx)
    with pytest.raises(ConfigError, match=r"no regressor maps student layer 'conv2' to "
                                          r"teacher layer 'conv2': .*smaller"):
        apply(student, HintConfig(student_layer="conv2", teacher_layer="conv2",
                                  teacher=teacher), ctx)
    with pytest.raises(ConfigError, match="hint: student_layer"):
        HintConfig(teacher_layer="conv2")


# ---------------------------------------------------------------------------- kd and hint
class _ConvNet(nn.Module):
    def __init__(self, width: int, pool: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.head(self.flatten(self.gap(x)))


def _conv_net(width: int, pool: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _ConvNet(width, pool)


def test_kd_pulls_the_student_towards_the_teacher_and_leaves_the_teacher_alone() -> None:
    data = _data(256)
    x = _inputs(data)
    teacher, student = _mlp(seed=1), _mlp(hidden=16, seed=2)
    teacher_state = copy.deepcopy(teacher.state_dict())
    start = _kl_to(teacher, student, x)
    ctx = Context(train_data=data, finetune=TUNE, progress=False)
    trained = apply(student, KDConfig(teacher=teacher, T=2.0, alpha=1.0), ctx)
    assert _kl_to(teacher, trained, x) < 0.5 * start
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    record = ctx.records[-1]
    assert record["step"] == "kd" and record["T"] == 2.0 and record["alpha"] == 1.0
    assert record["epochs"] == 3


def test_kd_and_hint_keep_the_zeros_of_a_student_that_comes_pruned() -> None:
    teacher = _conv_net(16, pool=True, seed=1)
    for config in (KDConfig(teacher=teacher, T=2.0, alpha=0.5),
                   HintConfig(student_layer="relu1", teacher_layer="conv2", teacher=teacher,
                              finetune=FinetuneConfig(epochs=1))):
        student = _conv_net(8, pool=False, seed=2)
        with torch.no_grad():  # pruned elsewhere: zeros, no masks in the context
            student.conv2.weight[:, ::2] = 0.0
        zeros = student.conv2.weight == 0
        ctx = Context(train_data=_data(128), finetune=TUNE, progress=False)
        trained = apply(student, config, ctx)
        assert bool((trained.conv2.weight[zeros] == 0).all()), type(config).__name__
        assert not torch.equal(trained.conv2.weight, student.conv2.weight)  # the rest trained


def test_hint_stage_trains_the_student_up_to_the_guided_layer_only() -> None:
    teacher, student = _conv_net(16, pool=True, seed=1), _conv_net(8, pool=False, seed=2)
    ctx = Context(train_data=_data(128), finetune=TUNE, progress=False)
    config = HintConfig(student_layer="relu1", teacher_layer="conv2", teacher=teacher,
                        finetune=FinetuneConfig(epochs=0))
    trained = apply(student, config, ctx)
    before, after = student.state_dict(), trained.state_dict()
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    for key in ("conv2.weight", "conv2.bias", "head.weight", "head.bias"):
        assert torch.equal(before[key], after[key]), key  # past the guided layer
    record = ctx.records[-1]
    assert record["student_shape"] == [8, 8, 8] and record["teacher_shape"] == [16, 4, 4]
    assert "kernel_size=(5, 5)" in record["regressor"]
    assert "kd_stage" not in record
    assert set(dict(trained.named_modules())) == set(dict(student.named_modules()))


def test_hint_then_kd_brings_the_student_close_to_the_teacher() -> None:
    data = _data(128)
    teacher, student = _conv_net(16, pool=False, seed=1), _conv_net(8, pool=False, seed=2)
    start = _kl_to(teacher, student, _inputs(data))
    trained = distill(student, teacher, data, T=2.0, alpha=1.0, epochs=3, lr=0.05,
                      hint_layers=("conv2", "conv2"), hint_epochs=1, batch_size=32)
    assert _kl_to(teacher, trained, _inputs(data)) < start


# ---------------------------------------------------------------------------- unlabeled data
def test_distillation_needs_no_labels_with_alpha_one() -> None:
    unlabeled = _data(256, labels=False)
    teacher, student = _mlp(seed=1), _mlp(hidden=16, seed=2)
    x = _inputs(unlabeled)
    start = _kl_to(teacher, student, x)
    trained = distill(student, teacher, unlabeled, T=2.0, alpha=1.0, epochs=3, lr=0.05,
                      schedule="constant")
    assert _kl_to(teacher, trained, x) < 0.5 * start
    with pytest.raises(ConfigError, match=r"no labels; with alpha < 1 .* set alpha: 1"):
        distill(student, teacher, unlabeled, alpha=0.5, epochs=1)


# ---------------------------------------------------------------------------- recovery
def _mnist_like(n: int = 256, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)  # noise: only the teacher carries signal
    return Dataset([(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)], name="random")


def _recovery(steps: list, data: Dataset) -> tuple[float, list]:
    torch.manual_seed(0)
    model = build_model("lenet300", hidden=[64, 32]).eval()
    with torch.no_grad():  # confident outputs, as a trained model gives
        model.fc3.weight.mul_(20)
    result = modelzip.compress(model, {"steps": steps}, data=data, val_data=data,
                               finetune=TUNE, progress=False)
    return _kl_to(model, result.model, _inputs(data)), result.records


def test_a_recipe_recovers_with_distillation_after_pruning() -> None:
    data = _mnist_like()
    prune = {"magnitude": {"sparsity": 0.8}}
    pruned_kl, _ = _recovery([prune], data)
    plain_kl, _ = _recovery([prune, {"finetune": {"epochs": 3}}], data)
    kd_kl, records = _recovery(
        [prune, {"finetune": {"epochs": 3, "distill": {"teacher": "original", "T": 2,
                                                       "alpha": 1}}}], data)
    assert kd_kl < 0.5 * pruned_kl
    assert kd_kl < plain_kl
    assert records[-1]["distill"] == {"teacher": "original", "T": 2.0, "alpha": 1.0}
    assert records[0]["step"] == "magnitude"


def test_a_recipe_recovers_with_distillation_after_kmeans() -> None:
    data = _mnist_like()
    shared_kl, _ = _recovery([{"kmeans": {"bits": 2}}], data)
    tune = {"epochs": 3, "lr": 1e-4}  # centroid gradients sum over many weights
    plain_kl, _ = _recovery([{"kmeans": {"bits": 2, "finetune": tune}}], data)
    kd_kl, records = _recovery([{"kmeans": {"bits": 2, "finetune": {
        **tune, "distill": {"teacher": "original", "T": 1, "alpha": 1}}}}], data)
    assert kd_kl < shared_kl
    assert kd_kl < plain_kl
    assert records[0]["train"]["distill"] == {"teacher": "original", "T": 1.0, "alpha": 1.0}


def test_quantization_aware_training_distills_too() -> None:
    data = _mnist_like()
    ptq_kl, _ = _recovery([{"uniform": {"bits": 2}}], data)
    qat_kl, records = _recovery([{"uniform": {"bits": 2, "finetune": {
        "epochs": 3, "lr": 0.001, "distill": {"teacher": "original", "T": 1, "alpha": 1}}}}],
        data)
    assert qat_kl < 0.5 * ptq_kl
    assert records[0]["train"]["distill"]["teacher"] == "original"


def test_a_checkpoint_folder_is_a_teacher(tmp_path: Path) -> None:
    data = _mnist_like(128)
    teacher = build_model("lenet300", hidden=[64]).eval()
    save_checkpoint(teacher, tmp_path / "teacher")
    student = build_model("lenet300", hidden=[16])
    start = _kl_to(teacher, student, _inputs(data))
    trained = distill(student, str(tmp_path / "teacher"), data, T=2.0, alpha=1.0, epochs=3,
                      lr=0.05, schedule="constant")
    assert _kl_to(teacher, trained, _inputs(data)) < start


def test_settings_survive_a_recorded_training_dict() -> None:
    cfg = TrainConfig(distill={"teacher": "original", "T": 3, "alpha": 0.5})
    assert cfg.distill == DistillSettings("original", 3.0, 0.5)
    assert TrainConfig(**cfg.to_dict()) == cfg
    tune = FinetuneConfig(epochs=1, distill=DistillSettings(T=2.0))
    assert tune.merged(None).distill == DistillSettings(T=2.0)


# ---------------------------------------------------------------------------- CLI
def test_cli_trains_a_zoo_student_from_a_teacher(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = build_model("lenet300", hidden=[48])
    save_checkpoint(teacher, tmp_path / "teacher", dataset={"name": "mnist-sample"})
    out = tmp_path / "student"
    result = run_cli("distill", tmp_path / "teacher", "--student", "lenet300", "--set",
                     "hidden=24,12", "-T", "3", "--epochs", "1", "--limit", "200",
                     "--no-progress", "-o", out)
    assert_ok(result)
    assert "student" in result.stdout and "teacher" in result.stdout
    ckpt = load_checkpoint(out)
    assert ckpt.meta["model"]["kwargs"]["hidden"] == [24, 12]
    assert ckpt.model.fc2.out_features == 12
    record = ckpt.meta["distillation"]["records"][-1]
    assert record["step"] == "kd" and record["T"] == 3.0
    assert ckpt.meta["training"]["distill"] is None  # later fine-tuning starts plain
    assert_user_error(run_cli("distill", tmp_path / "teacher", "--student", "lenet300",
                              "--alpha", "2", "-o", tmp_path / "x"), "kd: alpha")
