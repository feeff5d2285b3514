"""The test suite on every supported CPython, 3.9 to 3.13.

    .venv/bin/nox -s tests                 # all five versions, one after the other
    .venv/bin/nox -s tests-3.12            # one version
    .venv/bin/nox -s tests-3.12 -- -x -k maildir    # arguments after -- go to pytest

Each session installs the project (not editable) with ``.[test,plugins]`` into its
own virtualenv under ``.nox/`` and runs the whole suite, slow tests included, with
a small hypothesis budget (``HYPOTHESIS_MAX_EXAMPLES=25``, override it from the
environment). Interpreters are looked up on PATH as ``python3.X``; pyenv installs
(``$PYENV_ROOT``, default ``~/.pyenv``) are added to PATH when present.
"""

from __future__ import annotations

import glob
import os

import nox

PYTHONS = ['3.9', '3.10', '3.11', '3.12', '3.13']
HYPOTHESIS_BUDGET = '25'

nox.options.sessions = ['tests']
nox.options.error_on_missing_interpreters = True  # a missing Python is a failure, not a skip


def _add_pyenv_to_path() -> None:
    root = os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')
    found = []
    for version in PYTHONS:
        # Newest patch release first, e.g. ~/.pyenv/versions/3.12.1/bin
        candidates = sorted(glob.glob(os.path.join(root, 'versions', f'{version}.*', 'bin')),
                            key=lambda p: [int(x) for x in p.split(os.sep)[-2].split('.') if x.isdigit()],
                            reverse=True)
        found.extend(candidates[:1])
    path = os.environ.get('PATH', '')
    extra = [d for d in found if d not in path.split(os.pathsep)]
    if extra:
        os.environ['PATH'] = os.pathsep.join([*extra, path])


_add_pyenv_to_path()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install('.[test,plugins]')
    session.env['HYPOTHESIS_MAX_EXAMPLES'] = os.environ.get('HYPOTHESIS_MAX_EXAMPLES', HYPOTHESIS_BUDGET)
    args = session.posargs or ['-p', 'no:cacheprovider', '--durations=10']
    session.run('python', '-m', 'pytest', *args)
