"""Transfer learning: frozen ImageNet backbone + new head, evaluation, ONNX export, registry CLI."""
