"""HTTP serving (BentoML + ONNX Runtime) and batch inference jobs. Imports no torch."""
