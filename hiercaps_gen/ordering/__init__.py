"""The ordering model: one small seq2seq trained on a run's hierarchies in both directions."""

from hiercaps_gen.ordering.generate import OrderingModel
from hiercaps_gen.ordering.train import train_ordering

__all__ = ["OrderingModel", "train_ordering"]
