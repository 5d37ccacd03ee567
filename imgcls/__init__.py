"""Torch-free core shared by training, the service and batch jobs: decoding, preprocessing, registry, ONNX inference."""
