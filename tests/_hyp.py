"""Shared hypothesis helpers: example counts are bounded and tunable via the environment."""

from __future__ import annotations

import os

__all__ = ['examples']

ENV_VAR = 'HYPOTHESIS_MAX_EXAMPLES'


def examples(default: int = 200) -> int:
    """Return ``max_examples`` for ``@settings``: ``$HYPOTHESIS_MAX_EXAMPLES`` or ``default``."""
    raw = os.environ.get(ENV_VAR, '').strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        # fail loudly: silently falling back would hide a misconfigured CI run
        raise ValueError(f'{ENV_VAR} must be a positive integer, got {raw!r}') from None
    if value < 1:
        raise ValueError(f'{ENV_VAR} must be a positive integer, got {raw!r}')
    return value
