"""A scenario's JSON report and its PNG: requests/s and error rate per version, weights, events.

matplotlib (the `load` extra) draws off-screen with the Agg backend; nothing here needs locust.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from loadtests import analysis
from loadtests.analysis import Sample

# One colour per version name, stable across panels and runs.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_KNOWN = {"stable": "#1f77b4", "blue": "#1f77b4", "canary": "#ff7f0e", "green": "#2ca02c",
          analysis.NO_VERSION: "#d62728"}
PINNED_SUFFIX = " (pinned)"  # analysis.series_key keeps pinned traffic apart
_EVENT_STYLE = {"edit": ("#555555", "--"), "fault": ("#ff7f0e", ":"), "abort": ("#d62728", "-"),
                "event": ("#999999", ":")}


def colour(version: str, order: list[str]) -> str:
    if version in _KNOWN:
        return _KNOWN[version]
    return _PALETTE[order.index(version) % len(_PALETTE)] if version in order else "#000000"


def write_json(path: Path, report: dict[str, Any]) -> None:
    def clean(value: Any) -> Any:  # NaN and infinity are not JSON
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(report), indent=2) + "\n")


def plot(path: Path, title: str, samples: list[Sample], t0: float, t1: float,
         weight_steps: list[tuple[float, dict[str, int]]], events: list[dict[str, Any]]) -> None:
    """Four panels over seconds since the load started: requests/s, error rate and p99 latency
    per version (pinned traffic dashed), and the effective weights the proxy reported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = analysis.timeseries(samples, t0, t1, bin_s=1.0)
    order = sorted({k.removesuffix(PINNED_SUFFIX) for k in series}
                   | {v for _, w in weight_steps for v in w})
    fig, axes = plt.subplots(4, 1, figsize=(9, 8), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 2, 2]})
    ax_rps, ax_err, ax_lat, ax_w = axes
    for key, data in series.items():
        v = key.removesuffix(PINNED_SUFFIX)
        style = {"color": colour(v, order), "ls": "--" if key != v else "-",
                 "lw": 1.0 if key != v else 1.6}
        xs = [i + 0.5 for i in range(len(data["rps"]))]
        ax_rps.plot(xs, data["rps"], label=key, **style)
        ax_err.plot(xs, [100 * e for e in data["error_rate"]], label=key, marker=".", ms=3,
                    **style)
        ax_lat.plot(xs, data["p99_ms"], label=key, **style)
    ax_rps.set_ylabel("requests/s")
    ax_lat.set_ylabel("p99 ms")
    ax_lat.set_yscale("symlog", linthresh=10)
    ax_err.set_ylabel("errors %")
    ax_err.set_ylim(-3, 103)
    if weight_steps:
        span = t1 - t0
        for v in order:
            xs = [t - t0 for t, _ in weight_steps] + [span]
            ys = [100 * w.get(v, 0) / (sum(w.values()) or 1) for _, w in weight_steps]
            ax_w.step(xs, ys + ys[-1:], where="post", label=v, color=colour(v, order), lw=1.8)
    ax_w.set_ylabel("weight %")
    ax_w.set_ylim(-3, 103)
    ax_w.set_xlabel("seconds since the load started")
    ax_w.set_xlim(0, max(1.0, t1 - t0))
    shown = [e for e in events if e["kind"] != "load"]
    for i, e in enumerate(shown):
        col, ls = _EVENT_STYLE.get(e["kind"], _EVENT_STYLE["event"])
        x = e["t"] - t0
        for ax in axes:
            ax.axvline(x, color=col, ls=ls, lw=1.2)
        # Staggered, so events close together stay readable.
        ax_rps.annotate(e["label"], (x, 1.0 - 0.09 * (i % 3)), xycoords=("data", "axes fraction"),
                        xytext=(3, -3), textcoords="offset points", va="top", fontsize=7.5,
                        color=col, clip_on=True)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    ax_rps.legend(loc="center left", fontsize=8, framealpha=0.8)
    ax_rps.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
