"""The spam classifier: features, the model file, training and evaluation.

- `features`: what a message shows its reader and what its sender controls, as tokens per field,
  read from the gateway's one header parse and one MIME parse. Bounded and never raises
  (hostile MIME gives a token, not an exception).
- `vectorize`: tokens -> a hashed sparse vector (CRC-32, per-field spaces, tf-idf, l2 per field).
  Pure Python + numpy: inference needs no scikit-learn.
- `model`: the model file (.npz of plain arrays, loaded with allow_pickle=False) and its JSON card.
- `corpus`, `train`, `metrics`: reading labelled mail, time-ordered evaluation, fitting
  (scikit-learn, imported only there).
- `corpora`: the named sources of the public corpora and each one's artefacts.
- `crosssource`: the recipe judged on sources kept out of training, next to a baseline.
- `cli`: `mailgate model train | eval | info`.
"""

from __future__ import annotations
