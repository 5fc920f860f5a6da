"""A small neutral corpus: plain factual sentences for measuring side effects of steering.

``neutral_texts()`` returns the 40 sentences of ``mechlens/data/neutral.txt`` (written for
mechlens, CC0 1.0): no sentiment, no opinions, no movie vocabulary, so a steering vector for
sentiment should leave their next-token distributions alone. :func:`mechlens.steering.side_effects`
measures how far it does not (KL divergence, perplexity).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["neutral_texts"]

_FILE = Path(__file__).parent / "neutral.txt"


def neutral_texts(n: int | None = None) -> list[str]:
    """The neutral sentences (the first ``n``; all 40 by default)."""
    lines = [x.strip() for x in _FILE.read_text(encoding="utf-8").splitlines()]
    texts = [x for x in lines if x and not x.startswith("#")]
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n={n!r} must be a positive int (there are {len(texts)} sentences)")
        texts = texts[:n]
    return texts
