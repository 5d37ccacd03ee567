"""Draws the peers chart from bench_peers' JSON: python -m bench.plot_peers [bench/results/peers.json]."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def draw(results: dict, png: Path) -> None:
    """Requests/s per server at each client count, bars labelled with their p99 latency."""
    peers = [p for p in results["peers"] if p.get("available")]
    clients = results["clients"]
    width = 0.8 / len(clients)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for i, n in enumerate(clients):
        xs = [j + (i - (len(clients) - 1) / 2) * width for j in range(len(peers))]
        rps = [p[f"clients_{n}"]["rps"] for p in peers]
        bars = ax.bar(xs, rps, width, label=f"{n} clients")
        for bar, p in zip(bars, peers):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"p99\n{p[f'clients_{n}']['p99_ms']:.0f}ms",
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(peers)), [p["name"] for p in peers], fontsize=8)
    ax.set_ylabel("requests / s")
    ax.margins(y=0.2)
    ax.legend(fontsize=8)
    ax.set_title(f"Same photos, model {results['model']}, {results['cpus']} CPU cores "
                 f"({results['duration_s']:.0f} s per run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "peers.json")
    draw(json.loads(path.read_text()), path.with_suffix(".png"))
