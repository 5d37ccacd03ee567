"""The naive baseline the service is measured against: FastAPI + uvicorn, torch eager, one image per request.

Run: ``python -m bench.naive_server VERSION_DIR PORT`` (the same model, rebuilt from the version's checkpoint).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

from training.checkpoint import load_model


def create_app(model_dir: Path) -> FastAPI:
    model = load_model(model_dir)
    labels = __import__("json").loads((model_dir / "metadata.json").read_text())["labels"]
    torch.set_num_threads(2)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"ok": True}

    @app.post("/classify")
    async def classify(request: Request) -> dict:
        img = Image.open(io.BytesIO(await request.body())).convert("RGB")
        x = torch.from_numpy(model.preprocess(img))[None]
        with torch.inference_mode():
            probs = torch.softmax(model(x), 1)[0]
        k = int(probs.argmax())
        return {"label": labels[k], "score": float(probs[k])}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
