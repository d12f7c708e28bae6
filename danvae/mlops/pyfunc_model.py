"""The detector as an MLflow pyfunc, logged as "models from code" by :func:`danvae.mlops.packaging.log_detector`.

MLflow runs this file when it loads the model: nothing is pickled. The model folder
carries the trained detector (``artifacts/detector``: ``detector.pt`` + ``detector.json``)
and a copy of the ``danvae`` package (``code/danvae``, put on ``sys.path`` before this
file runs), so a fresh process needs only mlflow and the pinned requirements.
"""
# No ``from __future__ import annotations``: MLflow reads predict's type hints at load time.
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class DetectorModel(PythonModel):
    """Input: images N×H×W×C of any size, integers 0..255; output: one row of scores per image."""

    def load_context(self, context) -> None:
        from danvae.detector import Detector

        self.detector = Detector.load(context.artifacts["detector"], device="cpu")
        limits = context.model_config or {}
        self.max_pixels, self.max_batch = limits.get("max_pixels"), limits.get("max_batch")

    def predict(self, context, model_input: np.ndarray, params=None):  # checked by predict_frame, not the signature
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from danvae.mlops.packaging import predict_frame

        try:
            nuisance = (params or {}).get("nuisance")  # a recorded nuisance factor, one value per image
            return predict_frame(self.detector, model_input, self.max_pixels, self.max_batch,
                                 nuisance=nuisance if nuisance is not None and len(nuisance) else None)
        except ValueError as exc:  # the request's fault: HTTP 400 with the reason, not a 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


mlflow.models.set_model(DetectorModel())
