"""Training and evaluation engine."""

from deitlab.engine.train import TrainingDiverged, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "train"]
