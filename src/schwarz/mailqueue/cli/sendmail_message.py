"""``mq-sendmail``'s message: read from stdin, envelope taken from it, the few edits asked for.

The header work itself is ``headers`` (building fields) and ``message`` (finding and
removing fields), pure modules shared with ``mq-mail``; this module applies them the
way sendmail's options ask and turns bad input into one-line errors (``CLIError``:
65 for bad message data, 64 for a bad sender).
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Callable, List, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..submit import Submitter
    from .sendmail_options import SendmailOptions

__all__ = ['choose_sender', 'edit_message', 'header_recipients', 'read_message']


def read_message(stream: Optional[IO[bytes]], ignore_dots: bool, limit: int) -> bytes:
    """The message from stdin; without ``ignore_dots`` a line with a single ``.`` ends it. More
    than ``limit`` bytes: exit 65."""
    from .common import read_input, too_large

    if ignore_dots or stream is None:
        return read_input(stream, limit)
    lines = []
    size = 0
    # (a line may be read whole up to just past the limit: the terminator test needs whole lines)
    for line in iter(lambda: stream.readline(limit + 2), b''):
        if line in (b'.\n', b'.\r\n', b'.'):
            break
        size += len(line)
        if size > limit:
            too_large(limit)
        lines.append(line)
    return b''.join(lines)


def edit_message(data: bytes, opts: SendmailOptions, *, sender: str, recipients: Sequence[str],
                 hostname: Callable[[], str], settings: Optional[Settings] = None) -> bytes:
    """The edits we ever make: close the header block, drop Bcc, add the headers MTAs add.

    Date:, Message-ID: and From: (from the envelope sender) when missing, and bare local names
    in From:/To:/Cc: qualified: each on by default (``settings``: add_date_header,
    add_message_id_header, add_from_header, qualify_addresses); the --set-*-header options
    win over the settings. ``hostname`` is called only when it is needed (no domain otherwise).
    """
    if settings is None:
        from ..config import Settings

        settings = Settings()

    def wanted(option: Optional[bool], setting: bool) -> bool:
        return setting if option is None else option

    from ..headers import (
        domain_of,
        ensure_header_separator,
        format_address,
        format_address_list,
        format_date,
        make_message_id,
        prepend_header,
    )
    from ..message import get_header, remove_headers, split_header_block

    header_block, _ = split_header_block(data)
    data = ensure_header_separator(data, len(header_block))
    lowered = header_block.lower()
    if b'bcc' in lowered and (get_header(data, 'Bcc') or get_header(data, 'Resent-Bcc')):
        data = remove_headers(data, ('Bcc', 'Resent-Bcc'))
    if opts.set_to and recipients and not get_header(data, 'To'):
        data = prepend_header(data, 'To', format_address_list(list(recipients), name_length=4))
    if wanted(opts.set_from, settings.add_from_header) and not get_header(data, 'From'):
        from_value = format_address(opts.full_name, sender or 'MAILER-DAEMON', name_length=6)
        data = prepend_header(data, 'From', from_value)
    if settings.qualify_addresses:  # (after From: is added: "MAILER-DAEMON" for a bounce gets a domain too)
        from ..message import qualify_local_addresses

        data = qualify_local_addresses(data, settings.local_domain() or hostname())
    if wanted(opts.set_msgid, settings.add_message_id_header) and not get_header(data, 'Message-ID'):
        data = prepend_header(data, 'Message-ID', make_message_id(domain_of(sender) or hostname()))
    if wanted(opts.set_date, settings.add_date_header) and not get_header(data, 'Date'):
        data = prepend_header(data, 'Date', format_date())
    return data


def header_recipients(data: bytes) -> List[str]:
    """-t: addresses from To/Cc/Bcc; bad ones are bad message data (65)."""
    from ..addresses import InvalidAddressError
    from ..message import extract_recipients
    from .common import EX_DATAERR, fail

    try:
        return extract_recipients(data)
    except InvalidAddressError as exc:
        fail(f'invalid recipient in the message headers: {exc}', EX_DATAERR)


def _header_sender(data: bytes) -> Optional[str]:
    """--read-envelope-from: the first address in From:; a malformed From: is bad data (65)."""
    from ..addresses import InvalidAddressError, parse_address_list
    from ..message import get_header
    from .common import EX_DATAERR, fail

    for value in get_header(data, 'From'):
        try:
            addresses = parse_address_list(value, allow_local=True)
        except InvalidAddressError as exc:
            fail(f'invalid From: address for --read-envelope-from: {exc}', EX_DATAERR)
        if addresses:
            return str(addresses[0])
    return None


def choose_sender(opts: SendmailOptions, submitter: Submitter, data: bytes) -> str:
    """The envelope sender: ``-f``, else (``--read-envelope-from``) the From: header, else the default."""
    from ..addresses import InvalidAddressError
    from .common import EX_USAGE, fail
    from .sendmail_options import check_sender

    try:
        if opts.sender is not None:
            sender = check_sender(opts.sender)
            return submitter.qualify_sender(sender) if sender else ''
        if opts.read_envelope_from:
            header_from = _header_sender(data)
            if header_from:
                return submitter.qualify_sender(header_from)
        return submitter.default_sender()
    except InvalidAddressError as exc:
        # a local name that qualification could not turn into a valid address (say, the host name)
        fail(f'invalid sender: {exc} (use -f with a full address, or set "from")', EX_USAGE)
