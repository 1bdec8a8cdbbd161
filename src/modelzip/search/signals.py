"""Layer signals that make layers comparable: K-FAC Hessian saliency (MLPrune) and the
adaptive-binning mutual information of each layer's activations (``information_signal``,
the estimators in ``modelzip.search.mutual_info``).

Zeng & Urtasun 2019 (MLPrune) approximate each layer's Hessian block by a Kronecker product
of two small factors, H ~ A (x) G, with A = E[a a^T] over the layer's inputs and G = E[g g^T]
over the gradients at its outputs (K-FAC; for a convolution the inputs are the unfolded
patches and the statistics run over positions, the "KFC" approximation of Grosse & Martens
2016). The Optimal Brain Surgeon saliency of one weight is then

    s_ij = w_ij^2 / (2 [H^-1]_(ij),(ij)) = w_ij^2 / (2 [A^-1]_jj [G^-1]_ii)

which is in units of training loss and so comparable between layers: one global threshold on
it sets every layer's pruning ratio. Approximations made here: the empirical Fisher (gradients
of the true labels' loss) stands in for the Hessian; A and G are damped by 1e-3 of their mean
diagonal before inversion; only the Kronecker factors' diagonals of the inverse are used
(no OBS weight update, the techniques prune by magnitude inside a layer at the ratio the
global threshold gives); statistics come from a few batches of training data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import ConfigError
from modelzip.search.mutual_info import DEFAULT_BINS, layer_information, unit_information

__all__ = ["capture_activations", "information_signal", "kfac_saliency", "ratios_at_fraction"]

DAMPING = 1e-3


def _inverse_diag(factor: torch.Tensor) -> torch.Tensor:
    damp = DAMPING * float(factor.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(len(factor), dtype=factor.dtype)
    return torch.linalg.inv(factor + damp * eye).diagonal()


def kfac_saliency(model: nn.Module, data: Any, layers: list[str], *, batches: int = 4,
                  batch_size: int = 128, loss_fn: Any = None) -> dict[str, torch.Tensor]:
    """Per layer (Linear or Conv2d of ``layers``) the OBS saliency of every weight, shaped as
    the weight, from K-FAC factors on ``batches`` batches of ``data``."""
    model = model.eval()
    modules = dict(model.named_modules())
    stats: dict[str, dict[str, Any]] = {n: {"A": None, "G": None, "n": 0} for n in layers}
    hooks = []

    def save_input(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            output.register_hook(save_grad(name))
            x = args[0].detach()
            if isinstance(module, nn.Conv2d):
                patches = F.unfold(x, module.kernel_size, module.dilation, module.padding,
                                   module.stride)  # (B, Cin*k*k, L)
                a = patches.transpose(1, 2).reshape(-1, patches.shape[1])
            else:
                a = x.reshape(-1, x.shape[-1])
            a = a.double()
            cov = a.T @ a / len(a)
            s = stats[name]
            s["A"] = cov if s["A"] is None else s["A"] + cov
        return hook

    def save_grad(name: str):
        def hook(grad: torch.Tensor) -> None:
            g = grad.detach().double()
            batch = g.shape[0]
            g = g * batch  # per-sample gradients of the mean loss
            if g.dim() == 4:  # (B, C, H, W): sum over positions, mean over samples
                g = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
            else:
                g = g.reshape(-1, g.shape[-1])
            cov = g.T @ g / batch
            s = stats[name]
            s["G"] = cov if s["G"] is None else s["G"] + cov
            s["n"] += 1
        return hook

    for name in layers:
        module = modules[name]
        hooks.append(module.register_forward_hook(save_input(name)))
    loss_fn = loss_fn or F.cross_entropy
    try:
        for i, (x, y) in enumerate(_shuffled_batches(data, batch_size)):
            if i >= batches:
                break
            model.zero_grad()
            loss_fn(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad()
    out = {}
    for name in layers:
        s, module = stats[name], modules[name]
        if s["A"] is None or s["G"] is None or not s["n"]:
            continue
        a_inv = _inverse_diag(s["A"] / s["n"])
        g_inv = _inverse_diag(s["G"] / s["n"])
        w = module.weight.detach().double().reshape(len(g_inv), -1)
        out[name] = (w.pow(2) / (2 * g_inv[:, None] * a_inv[None, :])).reshape(
            module.weight.shape).float()
    return out


def ratios_at_fraction(saliency: dict[str, torch.Tensor], fraction: float, *,
                       channels: bool = False) -> dict[str, float]:
    """Per layer the fraction of its weights (``channels``: of its output channels, a
    channel's saliency being the sum of its weights') below the one global threshold that
    removes ``fraction`` of all of them."""
    scores = {n: (s.reshape(len(s), -1).sum(1) if channels else s.reshape(-1))
              for n, s in saliency.items()}
    everything = torch.cat(list(scores.values()))
    k = round(fraction * len(everything))
    if k <= 0:
        return {n: 0.0 for n in scores}
    threshold = everything.kthvalue(min(k, len(everything))).values
    return {n: float((v <= threshold).float().mean()) for n, v in scores.items()}


def _shuffled_batches(data: Any, batch_size: int) -> Any:
    try:  # a shuffled sample: training data is often stored class by class
        return data.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    except TypeError:
        return data.batches(batch_size)


def capture_activations(model: nn.Module, data: Any, modules: dict[str, str], *,
                        samples: int = 2000, batch_size: int = 250
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per key of ``modules`` the (N, D) outputs of the module it names, on a seeded sample
    of ``samples`` of ``data``, and the N labels. A 4-D (N, C, H, W) output is averaged over
    positions to one value per channel (a whole feature map has far more units than any
    sample can bin)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ConfigError(f"samples must be an integer >= 2, got {samples!r}")
    named = dict(model.named_modules())
    missing = sorted(set(modules.values()) - set(named))
    if missing:
        raise ConfigError(f"no module named {', '.join(missing)} in the model; layers: "
                          f"{', '.join(n for n in named if n)}")
    captured: dict[str, list[torch.Tensor]] = {k: [] for k in modules}

    def save(key: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            out = output.detach()
            out = out.mean(dim=(2, 3)) if out.dim() == 4 else out.reshape(len(out), -1)
            captured[key].append(out.double().clone())  # clone: a later ReLU may be in place
        return hook

    hooks = [named[m].register_forward_hook(save(k)) for k, m in modules.items()]
    labels, seen = [], 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in _shuffled_batches(data, batch_size):
                take = min(len(x), samples - seen)
                model(x[:take])
                labels.append(torch.as_tensor(y[:take]))
                seen += take
                if seen >= samples:
                    break
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ConfigError("no samples to capture activations from: the data is empty")
    return {k: torch.cat(v) for k, v in captured.items()}, torch.cat(labels)


def information_signal(model: nn.Module, data: Any, layers: list[str], *,
                       modules: dict[str, str] | None = None, samples: int = 2000,
                       bins: int = DEFAULT_BINS) -> dict[str, dict[str, Any]]:
    """Per layer of ``layers`` the adaptive-binning estimates (Chelombiev et al. 2019) of
    I(X;T) and I(T;Y) for T the outputs of the layer (or of ``modules[layer]``, e.g. the
    block that applies its ReLU), over the whole layer (``i_xt``, ``i_ty``, ``saturated``)
    and per unit averaged (``unit_i_xt``, ``unit_i_ty``), in bits."""
    modules = {k: (modules or {}).get(k, k) for k in layers}
    acts, labels = capture_activations(model, data, modules, samples=samples)
    out = {}
    for name in layers:
        whole = layer_information(acts[name], labels, bins=bins)
        units = unit_information(acts[name], labels, bins=bins)
        out[name] = {**whole.to_dict(), "module": modules[name],
                     "unit_i_xt": units["i_xt"], "unit_i_ty": units["i_ty"]}
    return out
