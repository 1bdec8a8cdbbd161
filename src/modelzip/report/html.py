"""``report.html`` of a search: one self-contained file (charts are inline base64 PNGs, no
script, no external resource).

It shows the Pareto front of validation accuracy vs file bytes and vs latency (or MACs when
latency was not measured) with every trial and the chosen point, the chosen per-layer ratios
and bit widths, the before/after table of the finished result, its per-step records, every
trial, and the versions of what ran.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
from pathlib import Path
from typing import Any

from modelzip.atomic import write_atomic

__all__ = ["pareto_front", "render_report", "write_report"]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (cost, accuracy) that no other point beats on both (lower cost, higher
    accuracy), by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pareto_chart(trials: list[dict[str, Any]], key: str, label: str, limit: float | None,
                  chosen: dict[str, Any], final: dict[str, Any], final_acc: float | None
                  ) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in trials if t.get("measured") and t["measured"].get(key) is not None
            and t.get("val_error") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for feasible, color, name in ((True, "tab:blue", "trial, within budget"),
                                  (False, "tab:gray", "trial, over budget")):
        pts = [(t["measured"][key], 100 - t["val_error"]) for t in rows
               if bool(t.get("feasible")) == feasible]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=18, color=color, label=name, alpha=0.8)
    front = pareto_front([(t["measured"][key], 100 - t["val_error"]) for t in rows])
    ax.plot(*zip(*front, strict=True), color="tab:orange", lw=1.2, label="Pareto front")
    cm = chosen.get("measured") or {}
    if cm.get(key) is not None:
        ax.scatter([cm[key]], [100 - chosen["val_error"]], marker="*", s=160, color="tab:red",
                   label="chosen (no fine-tuning)", zorder=5)
    if final.get(key) is not None and final_acc is not None:
        ax.scatter([final[key]], [final_acc], marker="D", s=50, color="tab:green",
                   label="chosen, fine-tuned", zorder=5)
    if limit is not None:
        ax.axvline(limit, color="tab:red", ls="--", lw=1, label="budget")
    ax.set_xlabel(label)
    ax.set_ylabel("validation accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _layer_chart(choice: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(choice.get("ratio") or choice.get("bits") or {})
    if not layers:
        return None
    fig, ax1 = plt.subplots(figsize=(6.4, 0.5 + 0.35 * len(layers) + 1.5))
    y = range(len(layers))
    ratios = [choice.get("ratio", {}).get(k, 0.0) for k in layers]
    ax1.barh([i - 0.2 for i in y], ratios, height=0.4, color="tab:blue", label="pruned ratio")
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("pruned ratio")
    ax1.set_yticks(list(y), layers)
    ax1.invert_yaxis()
    if choice.get("bits"):
        ax2 = ax1.twiny()
        ax2.barh([i + 0.2 for i in y], [choice["bits"].get(k, 0) for k in layers],
                 height=0.4, color="tab:orange", label="bits")
        ax2.set_xlim(0, 8.5)
        ax2.set_xlabel("bits (orange)")
    ax1.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _table(header: list[str], rows: list[list[Any]], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _score(value: Any) -> float | None:
    if value is None:
        return None
    return float(getattr(value, "error_pct", value))


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("modelzip", "torch", "optuna", "onnxruntime", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def render_report(result: Any) -> str:
    """The HTML text for a ``SearchResult``."""
    data = result.to_dict()
    comp = result.compression
    budget = result.budget
    trials = data["trials"]
    final = data["final_measured"]
    val_after = comp.val_error_after if comp is not None else None
    final_acc = None if val_after is None else 100 - val_after
    charts = []
    size = _pareto_chart(trials, "size_bytes", "file bytes (.mzip)", budget.size_bytes,
                         data["chosen_trial"], final, final_acc)
    if size:
        charts.append(("Accuracy vs file bytes", size))
    latency = _pareto_chart(trials, "latency_ms", "latency ms (runner, batch 1)",
                            budget.latency_ms, data["chosen_trial"], final, final_acc)
    if latency:
        charts.append(("Accuracy vs latency", latency))
    else:
        macs = _pareto_chart(trials, "macs", "MACs per sample", budget.macs,
                             data["chosen_trial"], final, final_acc)
        if macs:
            charts.append(("Accuracy vs MACs (latency was not measured)", macs))
    layers = _layer_chart(data["chosen"])
    parts = [f"<h1>modelzip search: {html.escape(result.strategy)}</h1>",
             f'<p class="{"met" if result.budget_met else "missed"}" id="verdict">'
             f"{html.escape(result.message)}</p>",
             f"<p>Budget: {html.escape(budget.describe())}. Study "
             f"<code>{html.escape(result.study)}</code>, {len(trials)} trials, search "
             f"{result.search_wall_time_s:.1f} s, final fine-tune and check "
             f"{result.final_wall_time_s:.1f} s.</p>"]
    for title, png in charts:
        parts.append(f'<h2>{html.escape(title)}</h2><img class="chart" alt="{html.escape(title)}"'
                     f' src="data:image/png;base64,{png}">')
    if layers:
        parts.append('<h2>Chosen per-layer ratio and bits</h2><img class="chart" '
                     f'alt="per-layer choices" src="data:image/png;base64,{layers}">')
    if comp is not None:
        b, a = comp.before, comp.after
        rows = [["parameters", b.params, a.params], ["non-zero", b.nonzero, a.nonzero],
                ["MACs / sample", b.total_macs, a.total_macs],
                ["bytes", f"{b.dense_bytes:,} (dense fp32)", f"{comp.artifact_bytes:,} (.mzip)"],
                ["latency ms", data["baseline"].get("latency_ms"), final.get("latency_ms")],
                ["validation error %", comp.val_error_before, comp.val_error_after],
                ["test error %", _score(comp.test_error_before), _score(comp.test_error_after)]]
        parts.append("<h2>Before / after</h2>" + _table(["", "before", "after"], rows,
                                                         "before-after"))
        steps = [[r.get("step"), json.dumps({k: v for k, v in r.items()
                                             if k not in ("step", "layers")}, default=str)[:300]]
                 for r in comp.records]
        parts.append("<h2>Steps of the finished result</h2>" + _table(["step", "record"], steps))
    trial_rows = [[t["number"], t["state"], t.get("strategy"), t.get("val_error"),
                   (t.get("measured") or {}).get("size_bytes"),
                   (t.get("measured") or {}).get("latency_ms"),
                   (t.get("measured") or {}).get("macs"), t.get("feasible")] for t in trials]
    parts.append("<h2>Trials</h2>" + _table(
        ["#", "state", "proposed by", "val error %", "bytes", "latency ms", "MACs",
         "within budget"], trial_rows, "trials"))
    parts.append("<h2>Versions</h2>" + _table(["", "version"],
                                               [[k, v] for k, v in _versions().items()]))
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:right}th{background:#eee}.met{color:#060}"
             ".missed{color:#a00;font-weight:bold}img.chart{max-width:100%}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>modelzip search report</title><style>{style}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


def write_report(result: Any, path: str | Path) -> Path:
    """Write ``render_report(result)`` to ``path`` atomically."""
    path = Path(path)
    write_atomic(path, render_report(result).encode("utf-8"))
    return path
