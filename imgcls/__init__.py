"""Torch-free core shared by training, the service and batch jobs: decoding, preprocessing, registry, ONNX inference.

A library: it imports no other part of the project and no program machinery (tests/fast/test_imports.py checks).
Each module lists its public names in ``__all__``; names with a leading underscore are internal.
"""
