"""Versions of the libraries mechlens stands on that are known to break it.

Checked once at ``import mechlens``, so a broken combination fails at once with a message
instead of giving slow or garbled results later. The tested versions are in
``requirements.lock``; docs/install.md explains each entry below.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

# (package, first bad version, why, what to do). transformers 5.24 passes the attention
# blocks' KV cache as `cache=`; TransformerLens 4.3's bridge attention reads only
# `past_key_values` / `layer_past`, so the cache is never filled: cached `generate` attends
# to the newest token alone (garbage text) and fast patching loses position skipping.
KNOWN_BAD = [
    (
        "transformers",
        Version("5.24.0"),
        "TransformerLens <= 4.3's TransformerBridge ignores the KV cache that transformers >= 5.24 "
        "hands attention blocks under its new argument name `cache`, so `model.generate` with the "
        "cache produces garbage and mechlens's fast patching cannot skip positions",
        "pip install 'transformers>=5.9,<5.24' (or: bash scripts/setup.sh, which installs "
        "requirements.lock)",
    ),
]
# The TransformerLens release up to which the entry above applies.
_TL_FIXED_AFTER = Version("4.3.99")


class IncompatibleVersionError(ImportError):
    """A dependency is installed at a version known to break mechlens."""


def _installed(name: str) -> Version | None:
    try:
        return Version(version(name))
    except PackageNotFoundError:
        return None


def check_versions(installed=_installed) -> None:
    """Raise :class:`IncompatibleVersionError` for a combination listed in ``KNOWN_BAD``."""
    tl = installed("transformer-lens")
    if tl is None or tl > _TL_FIXED_AFTER:
        return
    for name, first_bad, why, fix in KNOWN_BAD:
        have = installed(name)
        if have is not None and have >= first_bad:
            raise IncompatibleVersionError(
                f"mechlens does not work with {name} {have} (with transformer-lens {tl}): {why}. "
                f"Fix: {fix}."
            )
