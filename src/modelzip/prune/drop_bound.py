"""Data-driven filter pruning under an accuracy-drop bound (Huang et al. 2018, "Learning to
Prune Filters in Convolutional Neural Networks").

For each prunable conv layer in turn, first to last (one per channel group: a residual pair
or concatenated branches are pruned through their first layer), a small pruning agent maps
each filter's descriptors to a keep-probability. It is trained by REINFORCE with a baseline
("try and learn"): sample keep/remove actions, evaluate the model with the removed filters
masked out on a fixed validation subset, reward each action, update the agent. Its
deterministic choice (keep-probability > 0.5) is then removed physically
(``modelzip.prune.structured``) and the model is fine-tuned briefly before the next layer.

The reward (``drop_bound_reward``), with d the validation accuracy drop in points against the
model before any pruning (so with fine-tuning off, the bound holds for the whole model), b
the bound in points, N the layer's filters and C the filters the action keeps:

    R = psi(d, b) * phi(N, C)
    psi(d, b) = (b - d) / b      if d <= b   (Huang et al.'s accuracy term: 1 at no drop,
                                              0 at the bound)
    psi(d, b) = -ln(d / b)       if d >  b   (our penalty: same value and slope at d = b; it
                                              grows slowly, so that one collapsed sample does
                                              not drown the signal of the others in a batch)
    phi(N, C) = ln(N / max(C, 1))            (Huang et al.'s efficiency term: 0 when all
                                              filters are kept)

Inside the bound the reward is >= 0 and grows with the filters removed; outside it is < 0 and
falls with the filters removed, so removing is only ever worth it within the bound.

Two safeguards that the paper does not have, both recorded: an action that keeps fewer than
``min_keep`` filters is not evaluated but scored as a total loss (d = 100 points), since a
layer without filters cannot be built; and with ``enforce_bound`` the agent's final choice is
checked on the validation subset and, if it breaks the bound, the removed filters with the
highest keep-probabilities are put back (bisection on how many) until it holds.

Speed: rewards are cached per distinct action; and while one layer is searched, what runs
before it inside ``nn.Sequential`` containers is computed once (``_ValSet.skip_prefix``).

The math (``accuracy_term``, ``efficiency_term``, ``drop_bound_reward``, ``filter_features``,
``FilterPolicy``, ``train_policy``) works on plain tensors and callables; the module surgery
(masking a filter's channels, physical removal, fine-tuning) lives in ``ChannelMasker`` and
``drop_bound_prune``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.selection import LayerSelector, select
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.registry import Context, normalise_layers, register_technique
from modelzip.train import TrainConfig

__all__ = [
    "ChannelMasker",
    "DropBoundConfig",
    "FilterPolicy",
    "PolicyResult",
    "accuracy_term",
    "drop_bound_prune",
    "drop_bound_reward",
    "efficiency_term",
    "filter_features",
    "train_policy",
    "validation_subset",
]

TOTAL_LOSS_POINTS = 100.0  # the drop charged to an action that leaves too few filters
SHARED_LR_FACTOR = 0.3  # learning rate of the agent's shared network relative to its biases
SHARED_LOGIT_RANGE = 3.0  # the shared network moves a logit by at most this much


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DropBoundConfig:
    """Settings of drop-bound pruning. Validated on creation.

    ``layers``: the conv layers to prune (a ``LayerSelector``), first to last; None: the
    first layer of every prunable channel group. ``finetune``: the fine-tuning after each
    layer (None: 1 epoch; settings left out come from the context's fine-tuning; ``{epochs:
    0}``: none); ``finetune_samples``: it trains on a seeded subset of that many training
    samples (None: all)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "finetune_epochs": "finetune: {epochs: N}",
        "finetune_lr": "finetune: {lr: X}",
        "finetune_images": "finetune_samples",
    }
    DEFAULT_FINETUNE: ClassVar[FinetuneConfig] = FinetuneConfig(epochs=1)

    bound_points: float = 2.0  # b: the validation accuracy drop allowed, in points
    iterations: int = 30  # policy-gradient updates per layer
    samples_per_iteration: int = 6  # actions sampled (and evaluated) per update
    val_images: int = 1000  # fixed, seeded subset of the validation data for the rewards
    layers: LayerSelector | None = None
    agent_lr: float = 0.3  # Adam learning rate of the agent (its shared network: 0.3x)
    hidden: int = 32  # hidden units of the agent's per-filter network
    # Where every keep-probability starts. Near 1: on a trained CNN a random 20% of a layer's
    # filters usually costs more than b (eurosat_cnn: removing even the 10% of lowest L1 norm
    # costs 2.8-16 points in three of its five conv layers), so from 0.8 nearly every sample
    # breaks the bound and the agent learns only "keep everything"; from 0.95 it tries a few
    # removals at a time and finds those that are free.
    init_keep_prob: float = 0.95
    min_keep: int = 1  # filters a layer always keeps
    enforce_bound: bool = True  # put filters back until the final choice holds the bound
    finetune: FinetuneConfig | None = None  # after each layer; None: 1 epoch
    finetune_samples: int | None = None  # seeded subset of the training data per fine-tune
    eval_batch_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.bound_points) and self.bound_points > 0,
             f"bound_points must be > 0 (accuracy points), got {self.bound_points}"),
            (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
            (self.samples_per_iteration >= 1,
             f"samples_per_iteration must be >= 1, got {self.samples_per_iteration}"),
            (self.val_images >= 1, f"val_images must be >= 1, got {self.val_images}"),
            (self.agent_lr > 0, f"agent_lr must be > 0, got {self.agent_lr}"),
            (self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}"),
            (0 < self.init_keep_prob < 1,
             f"init_keep_prob must be in (0, 1), got {self.init_keep_prob}"),
            (self.min_keep >= 1, f"min_keep must be >= 1, got {self.min_keep}"),
            (self.finetune_samples is None or self.finetune_samples >= 1,
             f"finetune_samples must be >= 1, got {self.finetune_samples}"),
            (self.eval_batch_size >= 1,
             f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"drop-bound: {message}")
        normalise_layers(self, "drop-bound", verb="prune")

    def finetune_config(self, base: TrainConfig | None) -> TrainConfig | None:
        """The fine-tuning after each layer (None: none)."""
        return resolve_finetune(self.finetune, self.DEFAULT_FINETUNE, base)


# ---------------------------------------------------------------------------- reward
def accuracy_term(drop_points: float, bound_points: float) -> float:
    """psi(d, b): (b - d) / b within the bound, -ln(d / b) beyond it (see module docstring)."""
    if bound_points <= 0:
        raise ValueError(f"bound_points must be > 0, got {bound_points}")
    if drop_points <= bound_points:
        return (bound_points - drop_points) / bound_points
    return -math.log(drop_points / bound_points)


def efficiency_term(num_filters: int, num_kept: int) -> float:
    """phi(N, C) = ln(N / max(C, 1)): 0 when every filter is kept."""
    if num_filters < 1 or not 0 <= num_kept <= num_filters:
        raise ValueError(f"need 0 <= kept <= filters and filters >= 1, got {num_kept} of "
                         f"{num_filters}")
    return math.log(num_filters / max(num_kept, 1))


def drop_bound_reward(drop_points: float, bound_points: float, num_filters: int,
                      num_kept: int) -> float:
    """Huang et al.'s reward R = psi(d, b) * phi(N, C)."""
    return accuracy_term(drop_points, bound_points) * efficiency_term(num_filters, num_kept)


# ---------------------------------------------------------------------------- agent
def _zscore(v: torch.Tensor) -> torch.Tensor:
    if v.numel() < 2:
        return torch.zeros_like(v)
    return (v - v.mean()) / v.std().clamp_min(1e-6)


def filter_features(weight: torch.Tensor, norm_weight: torch.Tensor | None = None,
                    norm_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-filter inputs of the agent, shape (N, 2) or (N, 4): the log L1 and log L2 norms of
    each filter's weights and, when a BatchNorm scales the channel, log |gamma| and beta;
    each z-scored over the layer's filters, so that the agent sees where a filter stands
    among its neighbours, whatever the layer's scale.

    Huang et al. feed the raw weights. With the ~100-200 evaluations per layer that a CPU
    budget allows, an agent reading the 9-1,152 raw weights of each filter learned too slowly
    to use: on the small CNN of the tests with four all-zero filters added, 25 updates found
    1 of the 4 (two seeds), against 3-4 of 4 with these descriptors."""
    w = weight.detach().to(torch.float32).flatten(1)
    tiny = 1e-12 * float(w.pow(2).mean().sqrt().clamp_min(1e-30))
    cols = [w.abs().sum(1).clamp_min(tiny).log(), w.norm(dim=1).clamp_min(tiny).log()]
    if norm_weight is not None:
        gamma = norm_weight.detach().to(torch.float32).abs()
        cols.append(gamma.clamp_min(1e-12 * float(gamma.max().clamp_min(1e-30))).log())
        beta = (norm_bias.detach().to(torch.float32) if norm_bias is not None
                else torch.zeros_like(gamma))
        cols.append(beta)
    return torch.stack([_zscore(c) for c in cols], dim=1)


class FilterPolicy(nn.Module):
    """The pruning agent of one layer: keep-logit_i = R tanh(MLP(features_i) / R) + bias_i + c.

    The MLP is shared by all filters, so that one sample teaches about every filter with
    similar descriptors (e.g. "filters with the smallest BatchNorm scale can go"); the
    per-filter bias gives it the capacity of the paper's fully connected output layer, so
    a filter can be kept or removed against the trend. The output weights and the biases
    start at zero: every filter starts at exactly ``init_keep_prob`` (logit c)."""

    def __init__(self, features: torch.Tensor, *, hidden: int = 32,
                 init_keep_prob: float = 0.95, seed: int = 0) -> None:
        super().__init__()
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"features must be (filters, inputs), got {tuple(features.shape)}")
        self.register_buffer("features", features.detach().to(torch.float32).clone())
        gen = torch.Generator().manual_seed(seed)
        n, m = features.shape
        self.hidden = nn.Linear(m, hidden)
        with torch.no_grad():  # seeded init, independent of the global RNG
            bound = 1.0 / math.sqrt(m)
            self.hidden.weight.uniform_(-bound, bound, generator=gen)
            self.hidden.bias.uniform_(-bound, bound, generator=gen)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.filter_bias = nn.Parameter(torch.zeros(n))
        p = float(init_keep_prob)
        self.register_buffer("offset", torch.tensor(math.log(p / (1.0 - p))))

    @property
    def num_filters(self) -> int:
        return int(self.features.shape[0])

    def logits(self) -> torch.Tensor:
        h = torch.relu(self.hidden(self.features))
        shared = SHARED_LOGIT_RANGE * torch.tanh(self.out(h).squeeze(1) / SHARED_LOGIT_RANGE)
        return shared + self.filter_bias + self.offset

    def keep_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits())

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam parameter groups: the shared network learns at ``SHARED_LR_FACTOR`` x ``lr``,
        and its contribution to a logit is bounded by ``SHARED_LOGIT_RANGE``. Each of its
        weights moves every filter's logit at once; at the full rate and unbounded it drove
        filters whose descriptors resemble others' to a saturated, wrong probability within
        a few noisy updates, where the gradient vanishes and they stayed (2-5 of 20 seeds of
        the synthetic reward of the tests; 0 of 20 with these settings)."""
        shared = [*self.hidden.parameters(), *self.out.parameters()]
        return [{"params": [self.filter_bias], "lr": lr},
                {"params": shared, "lr": lr * SHARED_LR_FACTOR}]

    def decide(self, min_keep: int = 1) -> torch.Tensor:
        """The deterministic choice: keep where p > 0.5, and at least the ``min_keep``
        filters of highest probability."""
        with torch.no_grad():
            probs = self.keep_probs()
        keep = probs > 0.5
        if int(keep.sum()) < min_keep:
            keep[probs.argsort(descending=True)[:min_keep]] = True
        return keep


@dataclass
class PolicyResult:
    """What ``train_policy`` found: the final choice, probabilities, and a per-iteration log."""

    keep: torch.Tensor  # bool (N,)
    keep_probs: torch.Tensor  # (N,)
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: int = 0  # distinct actions evaluated (repeats come from a cache)


def train_policy(policy: FilterPolicy, reward_fn: Callable[[torch.Tensor], float], *,
                 iterations: int, samples: int, lr: float = 0.1, seed: int = 0,
                 min_keep: int = 1,
                 on_iteration: Callable[[int, dict[str, float]], None] | None = None
                 ) -> PolicyResult:
    """REINFORCE with a baseline: each iteration samples ``samples`` keep-vectors from the
    policy's Bernoulli distribution, scores each with ``reward_fn(keep) -> float`` (cached per
    distinct action, so the reward must be deterministic), and ascends
    sum_s (R_s - baseline_s) / std(R) * grad log pi(A_s). The baseline is the mean reward of
    the other samples of the same iteration (leave-one-out, unbiased), and std(R) the spread
    of the iteration's rewards; with one sample per iteration the baseline is a running mean
    of earlier rewards and there is no scaling."""
    if iterations < 1 or samples < 1:
        raise ValueError("iterations and samples must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.param_groups(lr))
    cache: dict[bytes, float] = {}
    running: float | None = None
    history = []
    for it in range(iterations):
        logits = policy.logits()
        probs = torch.sigmoid(logits.detach())
        actions = torch.rand(samples, policy.num_filters, generator=gen) < probs
        rewards = []
        for a in actions:
            key = a.numpy().tobytes()
            if key not in cache:
                cache[key] = float(reward_fn(a.clone()))
            rewards.append(cache[key])
        r = torch.tensor(rewards, dtype=torch.float32)
        if samples > 1:
            baseline = (r.sum() - r) / (samples - 1)
        else:
            baseline = torch.full_like(r, running if running is not None else 0.0)
        running = float(r.mean()) if running is None else 0.9 * running + 0.1 * float(r.mean())
        advantage = r - baseline
        if samples > 1:
            # Unit-scale advantages: the updates of an iteration whose samples all broke the
            # bound (large, spread-out penalties) no longer swamp the small rewards of free
            # removals; on a small CNN with four dead filters added this found all four in 6
            # of 6 seeds, against 3 of 6 without.
            advantage = advantage / r.std().clamp_min(1e-8)
        a = actions.to(torch.float32)
        log_prob = (a * nn.functional.logsigmoid(logits)
                    + (1 - a) * nn.functional.logsigmoid(-logits)).sum(1)
        loss = -(advantage * log_prob).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row = {"iteration": it + 1, "mean_reward": float(r.mean()),
               "max_reward": float(r.max()), "mean_kept": float(a.sum(1).mean()),
               "mean_keep_prob": float(probs.mean())}
        history.append(row)
        if on_iteration is not None:
            on_iteration(it + 1, row)
    with torch.no_grad():
        final_probs = policy.keep_probs()
    return PolicyResult(keep=policy.decide(min_keep), keep_probs=final_probs, history=history,
                        evaluations=len(cache))


# ---------------------------------------------------------------------------- masking
def _conv_by_name(model: nn.Module, name: str) -> nn.Conv2d:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"drop-bound: the model has no layer {name!r}") from None
    if not isinstance(module, nn.Conv2d):
        raise ConfigError(f"drop-bound: {name!r} is a {type(module).__name__}, not a Conv2d")
    return module


class ChannelMasker:
    """Simulates removing output channels of one conv layer without changing any shape:
    the inputs that the removed channels feed are zeroed where they are consumed.

    Torch-Pruning's dependency graph names every layer that would lose input channels if
    the filters were removed (next convs, Linear layers, through residual additions and
    concatenations); a forward pre-hook on each zeroes exactly those input slices. A zeroed
    input slice of a Conv (groups=1) or Linear computes what the layer without that slice
    computes, so the masked model gives the logits of the physically pruned one (checked in
    tests/test_drop_bound.py). Use as a context manager; ``set_removed`` picks the filters."""

    def __init__(self, model: nn.Module, layer_name: str, example_input: Any) -> None:
        from modelzip.prune.structured import _build_graph

        self.layer = _conv_by_name(model, layer_name)
        self.num_filters = self.layer.out_channels
        # One batch of the model's inputs: a tensor, a tuple or a dict of keyword tensors.
        self._graph = _build_graph(model, example_input)
        self._prune_fn = self._graph.get_pruner_of_module(self.layer).prune_out_channels
        self._masks: dict[nn.Module, torch.Tensor | None] = {}
        self._handles: list[Any] = []
        for module in self._consumers(list(range(self.num_filters))):
            plain_conv = (isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
                          and module.groups == 1)
            if not (plain_conv or isinstance(module, nn.Linear)):
                raise ConfigError(
                    f"drop-bound: the channels of {layer_name} feed a {type(module).__name__}, "
                    "whose input channels cannot be masked; leave the layer out (layers=...)")
            self._masks[module] = None

    def _consumers(self, indices: Sequence[int]) -> dict[nn.Module, list[int]]:
        group = self._graph.get_pruning_group(self.layer, self._prune_fn, idxs=list(indices))
        out: dict[nn.Module, list[int]] = {}
        for item in group:
            module = item.dep.target.module
            if self._graph.is_out_channel_pruning_fn(item.dep.handler) \
                    or not isinstance(module, nn.Module):
                continue
            out.setdefault(module, []).extend(int(i) for i in item.idxs)
        return out

    def batchnorm_params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Scale and shift (gamma, beta) per filter of the first BatchNorm that the filters'
        channels pass through, indexed like the filters; (None, None) without one."""
        group = self._graph.get_pruning_group(self.layer, self._prune_fn,
                                              idxs=list(range(self.num_filters)))
        for item in group:
            module = item.dep.target.module
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                order = torch.empty(self.num_filters, dtype=torch.int64)
                order[torch.as_tensor([int(r) for r in item.root_idxs])] = torch.as_tensor(
                    [int(i) for i in item.idxs])
                return module.weight.detach()[order], module.bias.detach()[order]
        return None, None

    def set_removed(self, removed: Sequence[int]) -> None:
        """Mask these output channels (an empty sequence masks nothing)."""
        for module in self._masks:
            self._masks[module] = None
        if len(removed) == 0:
            return
        for module, idxs in self._consumers(sorted(int(i) for i in removed)).items():
            if isinstance(module, nn.Linear):  # features are the last dim of a Linear's input
                mask = torch.ones(module.in_features)
            else:  # channels are dim 1 of a conv's input
                mask = torch.ones(module.in_channels)
            mask[idxs] = 0.0
            self._masks[module] = mask

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        mask = self._masks.get(module)
        if mask is None:
            return None
        x = args[0]
        if isinstance(module, nn.Linear):
            shape = (1,) * (x.ndim - 1) + (-1,)
        else:
            shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x * mask.view(shape).to(x.dtype), *args[1:])  # new tensor: inputs may be shared

    def __enter__(self) -> ChannelMasker:
        for module in self._masks:
            self._handles.append(module.register_forward_pre_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module in self._masks:
            self._masks[module] = None


# ---------------------------------------------------------------------------- evaluation
def validation_subset(data: Any, n: int, seed: int = 0) -> Any:
    """The fixed, seeded subset of ``n`` images (all if fewer) that the agent is rewarded on."""
    total = len(data)
    if n >= total:
        return data
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return data.subset(idx.sort().values)


class _ValSet:
    """A fixed validation subset held as normalised float tensors (decoded once)."""

    def __init__(self, data: Any, n: int, seed: int, batch_size: int) -> None:
        data = validation_subset(data, n, seed)
        self.x = data.normalize(data.images).contiguous(memory_format=torch.channels_last)
        self.y = data.labels
        self.batch_size = batch_size
        self.batch = 0  # the batch being evaluated, for the prefix cache

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @torch.inference_mode()
    def accuracy_pct(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            correct = 0
            for i, start in enumerate(range(0, len(self), self.batch_size)):
                self.batch = i
                logits = model(self.x[start:start + self.batch_size])
                correct += int((logits.argmax(1) == self.y[start:start + self.batch_size]).sum())
        finally:
            model.train(was_training)
        return 100.0 * correct / max(len(self), 1)

    @contextmanager
    def skip_prefix(self, model: nn.Module, layer_name: str) -> Iterator[int]:
        """While searching one layer, do not recompute what comes before it.

        Masks act only where the layer's channels are consumed, after the layer, so the
        input of every module on the path to the layer is the same in every evaluation. In
        each ``nn.Sequential`` on that path the children before the path's child only feed
        it; their result is cached per batch and the Sequential starts from it. Yields the
        number of Sequentials shortened (0 where the path has none, e.g. custom forwards);
        a Sequential that is called more than once per forward pass is left alone, and so
        is everything if the shortened model's accuracy differs from the full one's."""
        plan: list[tuple[nn.Sequential, int]] = []
        module = model
        for part in layer_name.split("."):
            children = dict(module.named_children())
            position = list(children).index(part)
            if isinstance(module, nn.Sequential) and position > 0:
                plan.append((module, position))
            module = children[part]
        caches: list[list[torch.Tensor]] = [[] for _ in plan]
        calls = [0 for _ in plan]

        def recorder(j: int) -> Callable[..., None]:
            def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                calls[j] += 1
                caches[j].append(args[0].detach() if len(args) == 1 else None)
            return hook

        handles = [seq[k].register_forward_pre_hook(recorder(j))
                   for j, (seq, k) in enumerate(plan)]
        try:
            full = self.accuracy_pct(model)
        finally:
            for h in handles:
                h.remove()
        batches = math.ceil(len(self) / self.batch_size)
        usable = [(seq, k, cache) for (seq, k), cache, n in zip(plan, caches, calls, strict=True)
                  if n == batches and all(isinstance(c, torch.Tensor) for c in cache)]

        def shortened(seq: nn.Sequential, k: int, cache: list[torch.Tensor]) -> Callable:
            rest = list(seq)[k:]

            def forward(_x: Any) -> Any:
                h: Any = cache[self.batch]
                for child in rest:
                    h = child(h)
                return h
            return forward

        for seq, k, cache in usable:
            seq.forward = shortened(seq, k, cache)  # type: ignore[method-assign]
        if usable and self.accuracy_pct(model) != full:  # a forward we misread: play safe
            for seq, _, _ in usable:
                del seq.forward
            usable = []
        try:
            yield len(usable)
        finally:
            for seq, _, _ in usable:
                del seq.forward


@contextmanager
def _channels_last(model: nn.Module) -> Iterator[None]:
    # Convolutions run markedly faster in channels-last layout on CPU; restored afterwards.
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def _bisect_restore(order: torch.Tensor, keep: torch.Tensor,
                    drop_of: Callable[[torch.Tensor], float], bound: float
                    ) -> tuple[torch.Tensor, int]:
    """Put back removed filters, those the agent was least sure about first (``order``: the
    removed indices by decreasing keep-probability), until the drop is within ``bound``.
    Bisection on how many to put back, then a linear walk in case the drop is not monotone.
    Returns the new keep vector and how many were put back."""
    removed = [int(i) for i in order]

    def with_back(k: int) -> torch.Tensor:
        out = keep.clone()
        out[removed[:k]] = True
        return out

    lo, hi = 0, len(removed)  # invariant: k = hi satisfies (keeping all gives drop 0 or the
    while hi - lo > 1:        # drop of the unpruned layer, the best that can be had)
        mid = (lo + hi) // 2
        if drop_of(with_back(mid)) <= bound:
            hi = mid
        else:
            lo = mid
    k = hi if drop_of(with_back(lo)) > bound else lo
    while k < len(removed) and drop_of(with_back(k)) > bound:
        k += 1
    return with_back(k), k


# ---------------------------------------------------------------------------- technique
def _finetune(model: nn.Module, config: DropBoundConfig, tune: TrainConfig, ctx: Context,
              layer_index: int) -> None:
    from modelzip.prune.masks import MaskKeeper

    train = ctx.require("train_data", "drop-bound (fine-tuning after each layer)")
    cfg = dataclasses.replace(tune, seed=tune.seed + layer_index)  # a new shuffle per layer
    if config.finetune_samples is not None and config.finetune_samples < len(train):
        gen = torch.Generator().manual_seed(config.seed * 1000 + layer_index)
        idx = torch.randperm(len(train), generator=gen)[:config.finetune_samples].sort().values
        train = train.subset(idx)
    with MaskKeeper(model, ctx.masks) as keeper:  # unstructured masks stay applied
        ctx.train(model, cfg, data=train, step_callbacks=[keeper], technique="drop-bound",
                  validate=False)


def _layer_order(model: nn.Module, example: Any, selector: LayerSelector | None) -> list[str]:
    """The conv layers to prune, first to last: by default the root of every prunable
    channel group (a residual pair or a concatenation feeding a depthwise conv is one group,
    so it gets one agent, not one per member); with ``selector``'s names, the conv layers
    they take. Groups whose channels only go in sets (across a grouped convolution) are left
    out: the agent picks single filters; so are groups holding a layer of ``ignore``."""
    from modelzip.prune.structured import channel_groups

    modules = dict(model.named_modules())
    groups = [g for g in channel_groups(model, example) if g.prunable and g.channelwise]
    members = {n for g in groups for n in g.layers}
    convs = {n: m for n, m in modules.items() if n in members and isinstance(m, nn.Conv2d)}
    chosen = select(selector, convs, technique="drop-bound", model=model,
                    kind="prunable conv layers", takes="Conv2d layers whose filters can be "
                    "removed one by one")
    if selector is not None and selector.names:
        return chosen
    return [g.root for g in groups if g.root in chosen
            and not (selector is not None and any(selector.ignores(n) for n in g.layers))]


@register_technique("drop-bound", DropBoundConfig, kind="prune")
def drop_bound_prune(model: nn.Module, config: DropBoundConfig, ctx: Context) -> nn.Module:
    """Remove conv filters layer by layer where a learned agent finds the validation accuracy
    drop stays within the bound (Huang et al. 2018)."""
    val_data = ctx.val_data
    if val_data is None:
        raise ConfigError("drop-bound needs validation data to measure the accuracy drop: set "
                          "Context(val_data=...) to a split held out from training (e.g. from "
                          "modelzip.data.train_val_split), or pass a dataset to the CLI")
    tune = config.finetune_config(ctx.finetune)
    if tune is not None:
        ctx.require("train_data", "drop-bound (fine-tuning after each layer; set "
                                  "finetune: {epochs: 0} to skip it)")
    from modelzip.prune.structured import remove_output_channels

    model.eval()
    example = getattr(ctx, "example_inputs", None)
    if example is None:
        example = torch.randn(1, *val_data.input_shape,
                              generator=torch.Generator().manual_seed(0))
    order = _layer_order(model, example, config.layers)
    val = _ValSet(val_data, config.val_images, config.seed, config.eval_batch_size)
    b = config.bound_points
    with _channels_last(model):
        reference = val.accuracy_pct(model)
    if ctx.progress:
        ctx.log(f"drop-bound: b = {b} points, reference val accuracy {reference:.2f}% on "
                f"{len(val)} images, layers: {', '.join(order)}")

    for li, name in enumerate(order):
        t0 = time.perf_counter()
        conv = _conv_by_name(model, name)
        n = conv.out_channels
        masker = ChannelMasker(model, name, example)

        def drop_of(keep: torch.Tensor, masker: ChannelMasker = masker) -> float:
            masker.set_removed((~keep).nonzero().flatten().tolist())
            return reference - val.accuracy_pct(model)

        def reward_of(keep: torch.Tensor, n: int = n, drop_of: Callable = drop_of) -> float:
            kept = int(keep.sum())
            d = TOTAL_LOSS_POINTS if kept < config.min_keep else drop_of(keep)
            return drop_bound_reward(d, b, n, kept)

        policy = FilterPolicy(filter_features(conv.weight, *masker.batchnorm_params()),
                              hidden=config.hidden,
                              init_keep_prob=config.init_keep_prob, seed=config.seed + li)

        def report(it: int, row: dict[str, float], name: str = name, n: int = n) -> None:
            if ctx.progress and (it % 10 == 0 or it == config.iterations):
                ctx.log(f"  {name}: iteration {it}/{config.iterations}, mean reward "
                        f"{row['mean_reward']:+.3f}, mean kept {row['mean_kept']:.1f}/{n}")

        with _channels_last(model), masker, val.skip_prefix(model, name) as shortened:
            result = train_policy(policy, reward_of, iterations=config.iterations,
                                  samples=config.samples_per_iteration, lr=config.agent_lr,
                                  seed=config.seed + li, min_keep=config.min_keep,
                                  on_iteration=report)
            keep = result.keep
            agent_drop = drop_of(keep)
            put_back = 0
            if config.enforce_bound and agent_drop > b:
                removed = (~keep).nonzero().flatten()
                by_prob = removed[result.keep_probs[removed].argsort(descending=True)]
                keep, put_back = _bisect_restore(by_prob, keep, drop_of, b)
        removed_idx = (~keep).nonzero().flatten().tolist()
        kept = n - len(removed_idx)
        if removed_idx:
            remove_output_channels(model, name, removed_idx, example, masks=ctx.masks)
        with _channels_last(model):
            pruned_acc = val.accuracy_pct(model)  # the pruned model itself, not a mask
        drop = reference - pruned_acc
        record: dict[str, Any] = {
            "step": "drop-bound", "layer": name, "bound_points": b,
            "filters_before": n, "filters_after": kept, "removed": removed_idx,
            "reference_val_accuracy_pct": reference, "val_accuracy_pct": pruned_acc,
            "val_drop_points": drop, "reward": drop_bound_reward(drop, b, n, kept),
            "agent_val_drop_points": agent_drop, "filters_put_back": put_back,
            "keep_probs": [round(float(p), 4) for p in result.keep_probs],
            "val_images": len(val), "iterations": config.iterations,
            "samples_per_iteration": config.samples_per_iteration,
            "evaluations": result.evaluations, "prefix_cached": bool(shortened),
            "final_mean_reward": result.history[-1]["mean_reward"],
        }
        if tune is not None:
            _finetune(model, config, tune, ctx, li)
            with _channels_last(model):
                tuned = val.accuracy_pct(model)
            record["val_accuracy_after_finetune_pct"] = tuned
            record["val_drop_after_finetune_points"] = reference - tuned
        record["wall_time_s"] = round(time.perf_counter() - t0, 2)
        ctx.records.append(record)
        if ctx.progress:
            ctx.log(f"  {name}: kept {kept}/{n} filters, val drop {drop:+.2f} points before "
                    f"fine-tuning (agent's choice {agent_drop:+.2f}, {put_back} put back), "
                    f"{record['wall_time_s']:.0f} s")
    model.eval()
    return model
