"""Strategy ``amc``: AMC (He et al. 2018, "AMC: AutoML for Model Compression"), a DDPG agent
that walks the layers and picks each one's pruning ratio.

What follows the paper:

- the state of layer t is its embedding (t, n, c, h, w, stride, FLOPs[t], reduced, rest,
  a[t-1]): the layer's index, output/input channels, kernel size, stride, its MACs, the cost
  already removed by earlier actions, the cost of the layers after it and the previous
  action, each feature scaled to [0, 1] over the layers;
- actor and critic are two-hidden-layer MLPs (300 units), with target networks (soft
  updates, tau = 0.01) and a replay buffer; the reward of an episode (one full model) is
  minus the validation error *without fine-tuning*, given to every layer's transition, less
  a moving-average baseline;
- exploration: truncated normal noise around the actor's output, sigma 0.5 decayed by 0.95
  per episode after ``WARMUP`` random episodes;
- resource-constrained mode: each action is clipped from below so that, even with every
  later layer at the maximum ratio, the budget stays reachable.

What differs: an episode is one trial of the study (so a study of N trials trains on N
episodes; the paper uses hundreds); the resource the clipping uses is an estimate, the
layers' kept weights (size and parameter budgets) or kept MACs (MAC budgets, l1-filter),
whose target fraction is calibrated on the measured trials (shrunk after a trial over the
budget, relaxed after one well under it); bit widths stay at the space's default width.
The measured budget decides feasibility, never the estimate.
"""

from __future__ import annotations

import copy
import random
import uuid
from typing import Any

import torch
from torch import nn

from modelzip.search.space import Choice
from modelzip.search.strategies import HistoryPoint, Strategy

__all__ = ["AMCStrategy"]

WARMUP = 4  # random episodes before the actor acts
HIDDEN = 300
TAU = 0.01
SIGMA0, SIGMA_DECAY = 0.5, 0.95
UPDATES_PER_EPISODE = 20
BATCH = 32


def _mlp(n_in: int, n_out: int, out: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                               nn.ReLU(), nn.Linear(HIDDEN, n_out)]
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)


def truncated_normal(mean: float, sigma: float, lo: float, hi: float,
                     rng: random.Random) -> float:
    """A draw of N(mean, sigma) restricted to [lo, hi] (rejection, then clipping)."""
    for _ in range(100):
        x = rng.gauss(mean, sigma)
        if lo <= x <= hi:
            return x
    return min(max(mean, lo), hi)


class AMCStrategy(Strategy):
    """DDPG over per-layer pruning ratios; see the module docstring."""

    name = "amc"
    parallel = False

    def prepare(self, evaluator: Any) -> None:
        from modelzip.metrics import profile_model

        torch.manual_seed(self.seed)
        self.rng = random.Random(self.seed)
        profile = profile_model(evaluator.model, example_inputs=evaluator.ctx.example_inputs)
        stats = {layer.name: layer for layer in profile.layers}
        modules = dict(evaluator.model.named_modules())
        rows = []
        for layer in self.space.layers:
            m, s = modules[layer], stats.get(layer)
            k = getattr(m, "kernel_size", (1, 1))
            rows.append([float(getattr(m, "out_channels", getattr(m, "out_features", 1))),
                         float(getattr(m, "in_channels", getattr(m, "in_features", 1))),
                         float(k[0]), float(k[-1]), float(getattr(m, "stride", (1,))[0]),
                         float(s.macs if s else 0), float(m.weight.numel())])
        self.static = torch.tensor(rows)
        uses_macs = self.budget.macs is not None and self.space.prune == "l1-filter"
        self.cost = self.static[:, 5 if uses_macs else 6].clone()
        self.cost_key = "macs" if uses_macs else "params"
        self.target = 0.5  # fraction of the cost estimate kept; calibrated on the trials
        n_state = 10
        self.actor = _mlp(n_state, 1, nn.Sigmoid())
        self.critic = _mlp(n_state + 1, 1)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=1e-4)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=1e-3)
        self.buffer: list[tuple[torch.Tensor, float, float, torch.Tensor, bool]] = []
        self.seen: set[int] = set()
        self.baseline: float | None = None
        self.episodes = 0

    # ------------------------------------------------------------------ environment
    def _state(self, t: int, actions: list[float]) -> torch.Tensor:
        n = len(self.space.layers)
        removed = sum(float(self.cost[i]) * a for i, a in enumerate(actions))
        rest = float(self.cost[t + 1:].sum())
        raw = torch.tensor([t, *self.static[t, :5].tolist(), float(self.static[t, 5]), removed,
                            rest, actions[-1] if actions else 0.0])
        scale = torch.tensor([max(n - 1, 1), *self.static[:, :5].max(0).values.tolist(),
                              float(self.static[:, 5].max()), float(self.cost.sum()),
                              float(self.cost.sum()), 1.0]).clamp_min(1e-9)
        return raw / scale

    def _lowest(self, t: int, actions: list[float]) -> float:
        """The smallest ratio for layer t with which the budget's cost estimate stays
        reachable when every later layer is pruned at the maximum."""
        if not self.budget.bounds:
            return 0.0
        total = float(self.cost.sum())
        allowed = self.target * total
        kept_before = sum(float(self.cost[i]) * (1 - a) for i, a in enumerate(actions))
        kept_after = float(self.cost[t + 1:].sum()) * (1 - self.space.max_ratio)
        need = kept_before + kept_after + float(self.cost[t]) - allowed
        return min(max(need / max(float(self.cost[t]), 1e-9), 0.0), self.space.max_ratio)

    def _reward(self, h: HistoryPoint) -> float:
        error = float(h.user_attrs.get("val_error", 100.0))
        excess = sum(max(c, 0.0) for c in h.user_attrs.get("constraints", [0.0]))
        return -error / 100.0 - excess

    # ------------------------------------------------------------------ learning
    def _learn(self, history: list[HistoryPoint]) -> None:
        for h in history:
            number = h.user_attrs.get("amc_episode")
            if h.user_attrs.get("strategy") != self.name or number in self.seen:
                continue
            self.seen.add(number)
            self._calibrate(h)
            reward = self._reward(h)
            self.baseline = reward if self.baseline is None else \
                0.95 * self.baseline + 0.05 * reward
            actions = [float(a) for a in h.user_attrs["amc_actions"]]
            for t, a in enumerate(actions):
                state = self._state(t, actions[:t])
                last = t == len(actions) - 1
                nxt = state if last else self._state(t + 1, actions[:t + 1])
                self.buffer.append((state, a, reward - self.baseline, nxt, last))
        if len(self.buffer) < BATCH:
            return
        for _ in range(UPDATES_PER_EPISODE):
            batch = self.rng.sample(self.buffer, BATCH)
            s = torch.stack([b[0] for b in batch])
            a = torch.tensor([[b[1]] for b in batch])
            r = torch.tensor([[b[2]] for b in batch])
            s2 = torch.stack([b[3] for b in batch])
            done = torch.tensor([[float(b[4])] for b in batch])
            with torch.no_grad():  # discount 1: the episode's one reward, as in AMC
                q_next = self.critic_target(torch.cat([s2, self.actor_target(s2)], 1))
                y = r + (1 - done) * q_next
            loss = nn.functional.mse_loss(self.critic(torch.cat([s, a], 1)), y)
            self.critic_opt.zero_grad()
            loss.backward()
            self.critic_opt.step()
            actor_loss = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            for net, target in ((self.actor, self.actor_target),
                                (self.critic, self.critic_target)):
                for p, tp in zip(net.parameters(), target.parameters(), strict=True):
                    tp.data.mul_(1 - TAU).add_(TAU * p.data)

    def _calibrate(self, h: HistoryPoint) -> None:
        """Move the estimate's target fraction toward what the measured trial says."""
        excess = h.user_attrs.get("constraints", [0.0])
        worst = max(excess) if excess else 0.0
        if worst > 0:
            self.target *= max(0.5, 1.0 / (1.0 + worst))
        elif worst < -0.1:
            self.target = min(1.0, self.target * 1.05)

    # ------------------------------------------------------------------ acting
    def propose(self, history: list[HistoryPoint]) -> Any:
        self._learn(history)
        sigma = SIGMA0 * SIGMA_DECAY ** max(self.episodes - WARMUP, 0)
        actions: list[float] = []
        for t in range(len(self.space.layers)):
            lo, hi = self._lowest(t, actions), self.space.max_ratio
            if self.episodes < WARMUP:
                a = self.rng.uniform(lo, hi)
            else:
                with torch.no_grad():
                    mean = float(self.actor(self._state(t, actions))) * hi
                a = truncated_normal(mean, sigma, lo, hi, self.rng)
            actions.append(a)
        self.episodes += 1
        bits = {k: self.space.default_bits for k in self.space.layers}
        choice = self.space.choice(self.space.params(Choice(
            dict(zip(self.space.layers, actions, strict=True)), bits, self.space.int8[-1])))
        episode = uuid.uuid4().hex  # names the trial's actions for learning from it once
        return choice, {"strategy": self.name, "amc_actions": actions,
                        "amc_episode": episode}
