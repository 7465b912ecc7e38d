"""What every part of the project shares: the user-error type, flags declared from dataclasses, and the
graph contract (input/output names, metadata, the model's shape) that export, runtime and onnx2om.py use."""
