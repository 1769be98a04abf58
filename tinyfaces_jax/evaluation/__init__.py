"""Benchmark evaluation: the WIDER FACE val protocol (easy / medium / hard APs, PR curves)."""

from tinyfaces_jax.evaluation.wider import WiderResult, evaluate, voc_ap
from tinyfaces_jax.evaluation.wider_io import (PredictionFormatError, WiderGroundTruth,
                                               load_ground_truth, read_prediction_file,
                                               read_predictions, write_predictions)

__all__ = [
  "PredictionFormatError", "WiderGroundTruth", "WiderResult", "evaluate", "load_ground_truth",
  "read_prediction_file", "read_predictions", "voc_ap", "write_predictions",
]
