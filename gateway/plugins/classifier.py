"""The spam classifier at end of DATA: an advisory opinion, scored by rules/scores.toml.

The model (models/spam.npz + its card, or `[plugins.classifier] model` in config/gateway.toml;
the older `[classifier] model` is still read, with a warning) is loaded
once, when the plugin is built at start-up: a missing, corrupt or mismatched model stops
`mailgate serve` and fails `mailgate check` with a ModelError naming the file, never a crash in
the middle of a transaction.

Findings, from the spam probability p and the card's thresholds:

- `ML_SPAM` when p >= thresholds.suspect (0.5), its weight rising linearly from 0 there to 1 at
  thresholds.spam (where at most 0.1% of ham scored higher in time-ordered validation). With
  ML_SPAM scored at the quarantine threshold, the classifier alone quarantines only past that
  point; below it, it adds to other evidence.
- `ML_HAM` when p <= thresholds.ham (weight 1), a small negative score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationInfo, field_validator

from gateway.classifier.model import SpamModel, load
from gateway.cputime import offload
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.schema import Table
from gateway.verdict import Action, Finding

# Messages above this size are scored in a worker thread (the same cut-off the MIME stage uses).
OFF_LOOP_BYTES = 32 * 1024


def spam_weight(p: float, suspect: float, spam: float) -> float:
    """0 at `suspect`, 1 at `spam` and above; linear between."""
    if p >= spam:
        return 1.0
    if spam <= suspect:
        return 1.0 if p >= suspect else 0.0
    return max(0.0, min(1.0, (p - suspect) / (spam - suspect)))


class ClassifierConfig(Table):
    """`[plugins.classifier]`: which model to load (relative to config/gateway.toml's folder)."""

    model: Path | None = None  # None: models/spam.npz of the install

    @field_validator("model", mode="before")
    @classmethod
    def _relative_to_config(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError("must be a file path")
        base = Path((info.context or {}).get("base", Path.cwd()))
        return (base / value).resolve()


class SpamClassifier(PluginBase):
    name: ClassVar[str] = "classifier"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "ML_SPAM": "the spam classifier finds the message spammy (weight: how far past p=0.5 "
        "toward the model's spam threshold)",
        "ML_HAM": "the spam classifier is confident the message is not spam",
    }
    config: ClassVar[type[Table] | None] = ClassifierConfig
    replaces_tables: ClassVar[tuple[str, ...]] = ("classifier",)
    on_error: ClassVar[Action | None] = None  # advisory: a failure has no effect on the verdict

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        own = services.config_for(self.name, ClassifierConfig)
        path = own.model if own is not None and own.model is not None else None
        # without [plugins.classifier] model: the older [classifier] table, or the default
        self.model: SpamModel = load(path or services.settings.classifier.model)

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        model = self.model
        sender, arrival = ctx.mail_from or "", datetime.now(UTC)
        if len(ctx.raw) > OFF_LOOP_BYTES:
            # Feature extraction grows with the message (about 1 ms for a typical one, ~10 ms
            # for the largest corpus messages): keep big ones off the event loop.
            score = await offload(
                model.score, ctx.raw, envelope_from=sender, arrival=arrival, message=ctx.message
            )
        else:
            score = model.score(ctx.raw, envelope_from=sender, arrival=arrival, message=ctx.message)
        p = score.probability
        t = model.thresholds
        detail = f"p={p:.4f} model {model.version}"
        if p >= t.suspect:
            # rounded down, so weight 1 (the classifier alone reaching quarantine with the
            # default scores) means p really is at or past the spam threshold
            weight = math.floor(spam_weight(p, t.suspect, t.spam) * 1000) / 1000
            if weight > 0.0:
                return [Finding("ML_SPAM", weight=weight, detail=detail)]
        elif p <= t.ham:
            return [Finding("ML_HAM", detail=detail)]
        return []
