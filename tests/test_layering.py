"""The layering rule of SPEC §11.1 / issue 10: only the maildir store touches queue files.

Outside ``queue/maildir.py`` (and ``testutils.py``, which builds broken queues for tests)
no module may lock files, rename/replace/link them, call the store's private helpers or
build paths inside a queue directory: everything above a store goes through the
``QueueStore`` contract, so that another store (PostgreSQL) can sit under it unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

PACKAGE = Path(__file__).resolve().parents[1] / 'src' / 'schwarz' / 'mailqueue'
ALLOWED = {'queue/maildir.py', 'testutils.py'}
# The maildir's drop area (postdrop for unprivileged users) belongs to the maildir store: it writes and
# links files in <queue>/drop with the same durability protocol; intake.py and the queue transport's
# fallback use it only through its functions.
ALLOWED |= {'queue/maildir_drop.py'}
# Single lines that match a pattern but do not touch a queue file: (file, the stripped line) -> why.
EXEMPT = {
    ('cli/mq_queue.py', 'os.replace(tmp, path)'): 'publishes the Prometheus textfile (--textfile), not a queue file',
    # the OAuth2 token cache (a file of its own, never a queue file): locked while a token is
    # fetched, so that two processes do not spend one refresh token; replaced atomically
    ('smtp/token_cache.py', 'import fcntl'): 'locks the OAuth2 token cache, not a queue file',
    ('smtp/token_cache.py', 'fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)'): 'locks the OAuth2 token cache',
    ('smtp/token_cache.py', 'os.replace(tmp, self.path)'): 'writes the OAuth2 token cache atomically',
}

FORBIDDEN = [
    (re.compile(r'^\s*(import\s+fcntl\b|from\s+fcntl\s+import\b)'), 'import fcntl'),
    (re.compile(r'\bflock\s*\('), 'flock('),
    (re.compile(r'\bos\.rename\s*\('), 'os.rename('),
    (re.compile(r'\bos\.replace\s*\('), 'os.replace('),
    (re.compile(r'\bos\.link\s*\('), 'os.link('),
    (re.compile(r'\b_replace_locked\b'), '_replace_locked'),
    (re.compile(r'\bqueue\.path\b'), 'queue.path'),
    (re.compile(r'os\.path\.join\(\s*self\.queue'), 'os.path.join(self.queue'),
]


def violations() -> List[str]:
    found = []
    for path in sorted(PACKAGE.rglob('*.py')):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
            code = line.split('#', 1)[0]  # a comment may name what it avoids
            if (relative, line.strip()) in EXEMPT:
                continue
            for pattern, what in FORBIDDEN:
                if pattern.search(code):
                    found.append(f'{relative}:{number}: {what}: {line.strip()}')
    return found


def test_the_package_is_where_we_look() -> None:
    assert (PACKAGE / 'queue' / 'maildir.py').is_file()
    assert (PACKAGE / '__init__.py').is_file()


def test_only_the_maildir_store_touches_queue_files() -> None:
    found = violations()
    files = sorted({entry.split(':', 1)[0] for entry in found})
    assert not found, (f'queue file handling outside queue/maildir.py in {len(files)} file(s): '
                       + ', '.join(files) + '\n' + '\n'.join(found))


def test_the_check_finds_what_it_looks_for() -> None:
    samples = ['import fcntl', '    fcntl.flock(fd, fcntl.LOCK_EX)', 'os.rename(a, b)', 'os.replace(a, b)',
               'os.link(a, b)', 'queue._replace_locked(msg, data, "new")', 'where = self.queue.path',
               "os.path.join(self.queue_dir, 'new')"]
    for sample in samples:
        assert any(pattern.search(sample) for pattern, _ in FORBIDDEN), sample
    for harmless in ['# no fcntl here, and no os.rename(', 'self.queue.enqueue(msg)', 'shutil.copy(a, b)']:
        code = harmless.split('#', 1)[0]
        assert not any(pattern.search(code) for pattern, _ in FORBIDDEN), harmless
