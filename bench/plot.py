"""Draws bench/results/throughput.png from the JSON files the benchmarks wrote (python -m bench.plot)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    serving = json.loads((RESULTS / "serving.json").read_text())
    batch = json.loads((RESULTS / "batch.json").read_text())
    bars = {
        "naive FastAPI\n+ torch eager": serving["naive"]["rps"],
        "BentoML service\n(HTTP, 16 clients)": serving["http"]["rps"],
        f"in-process\n(batch {serving['in_process']['batch_size']})": serving["in_process"]["images_per_s"],
        "batch job\n(local engine)": batch["job_images_per_s"],
        f"ONNX Runtime only\n(batch {batch['batch_size']})": batch["model_only_images_per_s"],
    }
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(list(bars), list(bars.values()), color=["#bbb", "#2a7", "#7bd", "#2a7", "#7bd"])
    for i, v in enumerate(bars.values()):
        ax.text(i, v + 2, f"{v:.0f}", ha="center")
    ax.set_ylabel("images / s")
    ax.set_title(f"EfficientNet-Lite0 on {serving['cpus']} CPU cores (ONNX Runtime, {serving['providers'][0]})",
                 fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput.png", dpi=100)


if __name__ == "__main__":
    main()
