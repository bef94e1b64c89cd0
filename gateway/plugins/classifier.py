"""The spam classifier at end of DATA: an advisory opinion, scored by rules/scores.toml.

The model (models/spam.npz + its card, or `[plugins.classifier] model` in config/gateway.toml;
the older `[classifier] model` is still read, with a warning) is loaded
once, when the plugin is built at start-up: a missing, corrupt or mismatched model stops
`mailgate serve` and fails `mailgate check` with a ModelError naming the file, never a crash in
the middle of a transaction.

Findings: exactly one band of the spam probability p, like SpamAssassin's BAYES_00 ... BAYES_999,
so the model speaks over its whole range (the hammy bands carry negative scores, the spammy ones
positive) and rules/scores.toml, fitted to data (gateway.scorefit), says what each band is worth.
The cut points are fixed probabilities, not the card's thresholds: a retrained model moves its
thresholds, and the scores fitted to the bands are refitted with it (`mailgate rules fit`).

Above p = 0.999 one band would make every confident message score the same, and most spam sits
there: a receipt the model half-trusts would tie with spam it is sure of, and no threshold could
tell them apart. So ML_CERTAINTY comes with the top band, its weight rising from 0 at p = 0.999 to
1 at p = 1 - 1e-6, linear in log-odds (Rspamd scales its BAYES_SPAM by the probability the same
way): the total then ranks by how sure the model is, and rules/ say what full certainty adds.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("mailgate.classifier")

# Messages above this size are scored in a worker thread (the same cut-off the MIME stage uses).
OFF_LOOP_BYTES = 32 * 1024


# (symbol, lowest p in the band): a band runs from its floor to the next band's floor.
BANDS: tuple[tuple[str, float], ...] = (
    ("ML_BAND_00", 0.0),
    ("ML_BAND_05", 0.01),
    ("ML_BAND_20", 0.05),
    ("ML_BAND_40", 0.20),
    ("ML_BAND_50", 0.40),
    ("ML_BAND_60", 0.60),
    ("ML_BAND_80", 0.80),
    ("ML_BAND_95", 0.95),
    ("ML_BAND_99", 0.99),
    ("ML_BAND_999", 0.999),
)


# ML_CERTAINTY's weight runs from 0 at the top band's floor to 1 at this probability.
CERTAIN_AT = 1.0 - 1e-6


def _log_odds(p: float) -> float:
    return math.log(p / (1.0 - p))


def certainty(p: float) -> float:
    """ML_CERTAINTY's weight for probability p: 0 up to the top band's floor, 1 from CERTAIN_AT,
    linear in log-odds between (a NaN is no certainty)."""
    floor = BANDS[-1][1]
    if not p > floor:  # also NaN
        return 0.0
    if p >= CERTAIN_AT:
        return 1.0
    return (_log_odds(p) - _log_odds(floor)) / (_log_odds(CERTAIN_AT) - _log_odds(floor))


def band_of(p: float) -> str:
    """The one band symbol a spam probability falls in (a NaN counts as the neutral band)."""
    if p != p:  # NaN: a broken model must not look confident either way
        return "ML_BAND_50"
    symbol = BANDS[0][0]
    for name, floor in BANDS:
        if p >= floor:
            symbol = name
    return symbol


def _describe(index: int) -> str:
    floor = BANDS[index][1]
    if index + 1 < len(BANDS):
        return f"spam classifier: {floor:g} <= p < {BANDS[index + 1][1]:g}"
    return f"spam classifier: p >= {floor:g}"


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


_last_loaded: tuple[tuple[Path, int, int], SpamModel] | None = None


def _loaded(path: Path) -> SpamModel:
    """The model at `path`, loaded again only when the file changed: a reload that leaves
    [plugins.classifier] alone keeps the model it has (loading one reads and hashes 4 MB)."""
    global _last_loaded
    try:
        status = path.stat()
        key = (path.resolve(), status.st_mtime_ns, status.st_size)
    except OSError:
        return load(path)  # says what is wrong with it
    if _last_loaded is not None and _last_loaded[0] == key:
        return _last_loaded[1]
    model = load(path)
    _last_loaded = (key, model)
    return model


class SpamClassifier(PluginBase):
    name: ClassVar[str] = "classifier"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        **{name: _describe(i) for i, (name, _) in enumerate(BANDS)},
        "ML_CERTAINTY": (
            f"spam classifier beyond p = {BANDS[-1][1]:g}: weight 0 there, rising linearly in"
            f" log-odds to 1 at p = 1 - {1 - CERTAIN_AT:.0e}"
        ),
    }
    config: ClassVar[type[Table] | None] = ClassifierConfig
    replaces_tables: ClassVar[tuple[str, ...]] = ("classifier",)
    on_error: ClassVar[Action | None] = None  # advisory: a failure has no effect on the verdict

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        own = services.config_for(self.name, ClassifierConfig)
        path = own.model if own is not None and own.model is not None else None
        # without [plugins.classifier] model: the older [classifier] table, or the default
        self.model: SpamModel = _loaded(path or services.settings.classifier.model)
        stale = self.model.stale_reading()
        if stale is not None:
            log.warning("classifier: %s", stale)

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        model = self.model
        sender, arrival = ctx.mail_from or "", datetime.now(UTC)
        # The one MIME parse every check reads (made by the MIME stage, or now, off the loop for
        # a big message): the classifier tokenises its leaves, never a parse of its own.
        mime = await ctx.message.mime()
        if len(ctx.raw) > OFF_LOOP_BYTES:
            # Feature extraction grows with the message (about 1 ms for a typical one, ~10 ms
            # for the largest corpus messages): keep big ones off the event loop.
            score = await offload(
                model.score,
                ctx.raw,
                envelope_from=sender,
                arrival=arrival,
                message=ctx.message,
                mime=mime,
            )
        else:
            score = model.score(
                ctx.raw, envelope_from=sender, arrival=arrival, message=ctx.message, mime=mime
            )
        p = score.probability
        detail = f"p={p:.6f} model {model.version}"
        found = [Finding(band_of(p), detail=detail)]
        weight = certainty(p)
        if weight > 0.0:
            found.append(Finding("ML_CERTAINTY", weight=round(weight, 4), detail=detail))
        return found
