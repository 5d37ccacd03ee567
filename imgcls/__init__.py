"""Torch-free core shared by training, the service and batch jobs: decoding, preprocessing, registry, ONNX inference.

A library: it imports no other part of the project and no program machinery (tests/fast/test_imports.py checks).
Each module lists its public names in ``__all__``; names with a leading underscore are internal.
"""
import os

# ONNX Runtime's Linux wheels (1.29 and later) keep usage events (the process, its sessions, models and errors) with
# a device id under ~/.cache/Microsoft and upload them to Microsoft from the moment onnxruntime is imported, unless
# ORT_DISABLE_TELEMETRY=1 is set before that. Programs that serve other people's photos send nothing anywhere
# unasked: off here, before any module of the project imports onnxruntime, unless the operator set the variable.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
