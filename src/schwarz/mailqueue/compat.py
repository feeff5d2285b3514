"""Names that mailqueue-runner 1.0.0 exported from ``schwarz.mailqueue`` and 2.x replaced.

``from schwarz.mailqueue import dt_now`` still works: the package's lazy ``__getattr__``
hands these out with a ``DeprecationWarning`` that names the replacement (``DEPRECATED``
below). Each one does what it did in 1.0.0 as far as that still makes sense; the two that
worked on queue files by path (``lock_file``, ``move_message``) go through the queue store
now, and what cannot (a lock held outside the store) raises ``NotImplementedError`` naming
the store operation to use. docs/upgrading.md says why each one changed.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence

from .handler import MessageInfo
from .queue.contract import QueuedMessage

if TYPE_CHECKING:  # pragma: no cover
    from .smtp.client import TLSMode

# PluginLoader: provided by __getattr__ below (None without PuzzlePluginSystem)
__all__ = [
    'DEPRECATED',
    'BaseMsg',
    'InMemoryMsg',
    'MsgInfo',
    'autogenerate_headers',
    'create_maildir_directories',
    'default_tls_mode',
    'default_tls_verify',
    'dt_now',
    'lock_file',
    'move_message',
    'parse_list_str',
    'required_tls_mode',
]

#: 1.0.0 name -> what to use instead (the text of the DeprecationWarning)
DEPRECATED: Dict[str, str] = {
    'BaseMsg': 'schwarz.mailqueue.queue.contract.QueuedMessage (a claimed queued message); '
               'MessageHandler.send_message() takes bytes, an email.message.Message or a queued message',
    'InMemoryMsg': 'MessageHandler.send_message(msg_bytes, sender=..., recipients=...)',
    'MsgInfo': 'schwarz.mailqueue.queue.format.QueueMeta (what parse_message_envelope() returns now)',
    'PluginLoader': 'schwarz.mailqueue.plugins.PluginManager',
    'autogenerate_headers': "mq-sendmail's --set-date-header/--set-msgid-header/--set-from-header or the "
                            'helpers in schwarz.mailqueue.headers',
    'create_maildir_directories': 'schwarz.mailqueue.open_queue(path) (creates the queue directories)',
    'default_tls_mode': 'schwarz.mailqueue.TLSMode.parse(None, port)',
    'default_tls_verify': 'SMTPMailer(tls_verify=None) (verifies every peer except a loopback address)',
    'dt_now': 'datetime.now(timezone.utc)',
    'lock_file': 'open_queue(queue_dir).claim(msg_id) (the store locks; see docs/architecture.md)',
    'move_message': 'open_queue(queue_dir).claim(msg_id) and .move(msg, state) (or mq-queue hold/release/retry)',
    'parse_list_str': "[item.strip() for item in value.split(',')]",
    'required_tls_mode': 'schwarz.mailqueue.TLSMode.IMPLICIT (port 465) or TLSMode.STARTTLS',
}

#: 1.0.0's wrapper of a message being delivered is the claimed queued message now.
BaseMsg = QueuedMessage

#: 1.0.0's ``InMemoryMsg(from_addr, to_addrs, msg_bytes)``: the same attributes; the handler takes the
#: envelope from ``sender=``/``recipients=`` now, not from the message object.
InMemoryMsg = MessageInfo


class MsgInfo(NamedTuple):
    """1.0.0's parsed queue file: envelope, message file object and queue times."""

    from_addr: str
    to_addrs: Sequence[str]
    msg_fp: IO[bytes]
    queue_date: Optional[datetime] = None
    last: Optional[datetime] = None
    retries: int = 0

    @property
    def msg_bytes(self) -> bytes:
        position = self.msg_fp.tell()
        self.msg_fp.seek(0)
        data = self.msg_fp.read()
        self.msg_fp.seek(position)
        return data

    @property
    def msg_id(self) -> Optional[str]:
        from .message import get_header

        values = get_header(self.msg_bytes, 'Message-ID')
        return values[0].strip().strip('<>') if values else None


def _plugin_loader() -> Any:
    """``schwarz.puzzle_plugins.PluginLoader``, or None without PuzzlePluginSystem (as in 1.0.0)."""
    try:
        from schwarz.puzzle_plugins import PluginLoader as loader
    except ImportError:
        return None
    return loader


def parse_list_str(value: str) -> List[str]:
    """``'foo, bar'`` -> ``['foo', 'bar']`` (PuzzlePluginSystem's helper that 1.0.0 re-exported)."""
    return re.split(r'\s*,\s*', value)


def dt_now() -> datetime:
    """Now, timezone-aware, in local time (1.0.0)."""
    return datetime.now(timezone.utc).astimezone()


def required_tls_mode(port: int) -> TLSMode:
    """The TLS mode that never falls back to plain text on ``port``."""
    from .smtp.client import TLSMode

    return TLSMode.IMPLICIT if int(port) == 465 else TLSMode.STARTTLS


def default_tls_mode(port: int) -> TLSMode:
    """The TLS mode used when none is configured: implicit on 465, else opportunistic STARTTLS."""
    from .smtp.client import TLSMode

    return TLSMode.parse(None, int(port))


def default_tls_verify(hostname: str, tls: Any = None) -> bool:
    """Whether certificates are verified when ``smtp_tls_verify`` is not set.

    2.x verifies every peer except one that is a loopback address, whatever the TLS mode
    (1.0.0 did not verify opportunistic STARTTLS). The real decision is made on the address
    actually connected to; a name counts as local here only if it is ``localhost``.
    """
    from .smtp.client import is_local_host

    name = hostname.strip().lower()
    return not (name == 'localhost' or is_local_host(name))


def create_maildir_directories(basedir: str, is_folder: bool = False) -> str:
    """Create a maildir queue at ``basedir`` (0700, with 2.x's hold/ and failed/); its ``new`` directory."""
    from .queue.locations import open_queue

    open_queue(os.fspath(basedir))
    return os.path.join(os.fspath(basedir), 'new')


def lock_file(path: str, timeout: Optional[float] = None) -> Any:
    """Not available: queue files are locked by the store, as part of claiming them."""
    raise NotImplementedError('lock_file() is gone: claim the message instead: '
                              f'{DEPRECATED["lock_file"]}')


def move_message(file_: Any, target_folder: str, open_file: bool = True) -> Optional[str]:
    """Move a maildir queue file to ``new``, ``hold`` or ``failed`` through the store; its new path.

    None when the message is gone or claimed by someone else (as 1.0.0). ``open_file=True``
    (a locked file object) and moving into ``cur`` mean claiming it: ``NotImplementedError``
    naming ``claim()``.
    """
    from .queue.locations import open_queue

    path = os.fspath(getattr(file_, 'name', file_))
    state_dir, msg_id = os.path.split(path)
    queue_dir, state = os.path.split(state_dir)
    if open_file or target_folder == 'cur':
        raise NotImplementedError('move_message() into cur/ or with open_file=True is gone: claim the message '
                                  f'instead: {DEPRECATED["move_message"]}')
    if state == target_folder:
        return path
    store = open_queue(queue_dir)
    msg = store.claim(msg_id, state)
    if msg is None:
        return None
    store.move(msg, target_folder)
    return os.path.join(queue_dir, target_folder, msg_id)


def autogenerate_headers(input_headers: Any, set_date_header: bool, set_from_header: bool, set_msgid_header: bool,
                         set_to_header: bool, msg_sender: str, recipients: Sequence[str]) -> bytes:
    """Header lines (CRLF-terminated) for Date/From/To/Message-ID that ``input_headers`` lacks (1.0.0)."""
    from .headers import check_header_text, domain_of, format_address_list, format_date, make_message_id

    def present(name: str) -> bool:
        get = getattr(input_headers, 'get', None)
        return bool(get(name)) if callable(get) else False

    lines: List[str] = []
    if set_date_header and not present('Date'):
        lines.append(f'Date: {format_date()}')
    if set_from_header and not present('From'):
        lines.append(f'From: {check_header_text("sender", msg_sender)}')
    if set_to_header and not present('To') and recipients:
        lines.append(f'To: {format_address_list(list(recipients), name_length=len("To"))}')
    if set_msgid_header and not present('Message-ID'):
        lines.append(f'Message-ID: {make_message_id(domain_of(msg_sender) or "localhost")}')
    return ''.join(line + '\r\n' for line in lines).encode('utf-8')


def __getattr__(name: str) -> Any:
    if name == 'PluginLoader':
        return _plugin_loader()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
