"""ctmodel: 2.5D batches from the store, networks, training, evaluation and prediction."""
from __future__ import annotations
