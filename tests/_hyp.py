"""Shared hypothesis helpers: example counts are bounded and tunable via the environment.

Every property test takes its ``max_examples`` from :func:`examples`, so one
environment variable sets the budget for the whole suite:

``HYPOTHESIS_MAX_EXAMPLES=N``
    Exactly ``N`` examples per property (CI and ``nox -s tests`` use 25).

``HYPOTHESIS_PROFILE=long``
    The longer run by hand, e.g. before a release or after touching a parser::

        HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_properties.py

    Each property gets ``LONG_FACTOR`` times its default budget (at least
    ``LONG_MINIMUM`` examples) and no per-example deadline. An explicit
    ``HYPOTHESIS_MAX_EXAMPLES`` still wins over the profile's count.

``HYPOTHESIS_PROFILE=default`` (or unset)
    The bounded default budgets written next to each test.
"""

from __future__ import annotations

import os

from hypothesis import settings

__all__ = ['LONG_FACTOR', 'LONG_MINIMUM', 'PROFILE_VAR', 'examples', 'profile']

ENV_VAR = 'HYPOTHESIS_MAX_EXAMPLES'
PROFILE_VAR = 'HYPOTHESIS_PROFILE'
LONG_FACTOR = 50
LONG_MINIMUM = 2000
_PROFILES = ('default', 'long')

settings.register_profile('long', deadline=None, print_blob=True)


def profile() -> str:
    """The profile named by ``$HYPOTHESIS_PROFILE`` (``default`` when unset)."""
    name = os.environ.get(PROFILE_VAR, '').strip() or 'default'
    if name not in _PROFILES:
        # fail loudly: a typo would otherwise silently run the short budget
        raise ValueError(f'{PROFILE_VAR} must be one of {", ".join(_PROFILES)}, got {name!r}')
    return name


if profile() == 'long':
    settings.load_profile('long')


def examples(default: int = 200) -> int:
    """Return ``max_examples`` for ``@settings``: ``$HYPOTHESIS_MAX_EXAMPLES``, else by profile."""
    raw = os.environ.get(ENV_VAR, '').strip()
    if not raw:
        if profile() == 'long':
            return max(default * LONG_FACTOR, LONG_MINIMUM)
        return default
    try:
        value = int(raw)
    except ValueError:
        # fail loudly: silently falling back would hide a misconfigured CI run
        raise ValueError(f'{ENV_VAR} must be a positive integer, got {raw!r}') from None
    if value < 1:
        raise ValueError(f'{ENV_VAR} must be a positive integer, got {raw!r}')
    return value
