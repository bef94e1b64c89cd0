"""The spam classifier: features, the model file, training and evaluation.

- `features`: what a message shows its reader and what its sender controls, as tokens per field.
  Parsing is bounded and never raises (hostile MIME gives a token, not an exception).
- `vectorize`: tokens -> a hashed sparse vector (CRC-32, per-field spaces, tf-idf, l2 per field).
  Pure Python + numpy: inference needs no scikit-learn.
- `model`: the model file (.npz of plain arrays, loaded with allow_pickle=False) and its JSON card.
- `corpus`, `train`, `metrics`: reading labelled mail, time-ordered evaluation, fitting
  (scikit-learn, imported only there).
- `cli`: `mailgate model train | eval | info`.
"""

from __future__ import annotations
