#!/usr/bin/env python3
"""Plots for a bench-results/<timestamp>/ directory (reads results.json, writes PNGs).

    python3 scripts/bench_plots.py bench-results/<timestamp>
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = ["plain", "concentrator", "concentrator-no-offloads", "wireguard-go", "boringtun"]
COLORS = {"plain": "#888888", "concentrator": "#1f77b4", "concentrator-no-offloads": "#9467bd", "wireguard-go": "#2ca02c", "boringtun": "#d62728"}


def metric(results, scenario, system):
    for m in results.get("metrics", []):
        if m["scenario"] == scenario and m["system"] == system:
            return m["value"]
    return None


def present(results):
    have = {m["system"] for m in results.get("metrics", [])}
    return [s for s in SYSTEMS if s in have]


def bars(ax, results, scenarios, unit, title):
    systems = present(results)
    width = 0.8 / max(len(systems), 1)
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, sc in enumerate(scenarios):
            v = metric(results, sc, s)
            if v is not None:
                xs.append(j + i * width)
                ys.append(v)
        ax.bar(xs, ys, width, label=s, color=COLORS.get(s))
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(scenarios))])
    ax.set_xticklabels(scenarios, rotation=15, fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=8)


def main(out):
    out = Path(out)
    r = json.loads((out / "results.json").read_text())
    systems = present(r)

    # Latency percentile distribution per system (idle and loaded).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    names = ["p50", "p90", "p99", "p99.9", "max"]
    for ax, label in zip(axes, ["rtt idle", "rtt loaded"]):
        for s in systems:
            ys = [metric(r, f"{label} {n}", s) for n in names]
            if all(v is not None for v in ys):
                ax.plot(names, ys, marker="o", label=s, color=COLORS.get(s))
        ax.set_yscale("log")
        ax.set_ylabel("round trip (µs, log)")
        ax.set_title(f"UDP round trip, {label.split()[1]}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    bars(ax, r, ["tcp 1 stream up", "tcp 1 stream down", "tcp 4 streams up", "tcp 4 streams down"],
         "Gbit/s", "TCP throughput (iperf3)")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bars(ax, r, ["udp 64 B sent", "udp 64 B received"], "kpps", "UDP 64-byte packets (iperf3 -b 0)")
    fig.tight_layout()
    fig.savefig(out / "pps.png", dpi=110)
    plt.close(fig)

    runs = r.get("loadgen") or []
    if runs:
        # One generator (the first in the run), one line per (packet size, workers).
        blast = runs[0].get("blast", "seal-each")
        runs = [x for x in runs if x.get("blast", "seal-each") == blast]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        shapes = sorted({(x.get("packet_bytes", 92), x["workers"]) for x in runs})
        for size, w in shapes:
            mine = [x for x in runs if x.get("packet_bytes", 92) == size and x["workers"] == w]
            label = f"{size} B, {w} worker(s)"
            pts = sorted((x["clients"], (x.get("backend_sink") or {}).get("pps", 0) / 1e3)
                         for x in mine)
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            pts = sorted((x["clients"], ((x.get("cpu_per_packet_us") or {}).get("server") or {})
                          .get("total") or 0) for x in mine)
            axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        axes[0].set_ylabel("kpps received by the backend")
        axes[0].set_title(f"concentrator ({blast}): pps vs client count")
        axes[1].set_ylabel("server CPU µs per packet")
        axes[1].set_title("concentrator: CPU per packet vs client count")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("emulated clients")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "loadgen.png", dpi=110)
        plt.close(fig)
    print(f"plots written to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
