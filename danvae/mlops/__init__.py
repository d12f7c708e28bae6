"""MLflow around the detector: run tracking, model packaging (pyfunc, ONNX), the registry and the promotion gate."""
