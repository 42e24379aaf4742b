"""Deployment: export a run's model to ONNX / torch.export / TorchScript / safetensors, with a parity check."""
