"""Hypothesis strategies for valid mail addresses, built from the RFC 5321 grammar itself.

Kept apart from the parser under test: the strategies compose the pieces (atoms, quoted
strings, LDH and Unicode labels, IP literals) directly, so a bug in the parser cannot make
its own test data agree with it.
"""

from __future__ import annotations

from hypothesis import strategies as st

from schwarz.mailqueue.addresses import Address

__all__ = ['ATEXT', 'addresses', 'domains', 'envelope_addresses', 'local_names', 'local_parts']

ATEXT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
# Letters from a few scripts: a local part or label may be non-ASCII (then SMTPUTF8 is needed).
_UNICODE_LETTERS = 'äöüßéçñøåłžяжшλπ中文日本한국αβ'
# qtextSMTP without the comma (queue files separate recipients with it: refused by policy).
_QTEXT = ''.join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\,')
_PRINTABLE = ''.join(chr(c) for c in range(0x20, 0x7F))


def _octets(text: str) -> int:
    return len(text.encode('utf-8'))


atoms = st.text(st.sampled_from(ATEXT + _UNICODE_LETTERS), min_size=1, max_size=12)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map('.'.join)
_qcontent = st.one_of(st.sampled_from(_QTEXT), st.sampled_from(_UNICODE_LETTERS),
                      st.sampled_from(_PRINTABLE.replace(',', '')).map(lambda ch: '\\' + ch))
quoted_strings = st.lists(_qcontent, max_size=20).map(lambda parts: '"' + ''.join(parts) + '"')

local_parts = st.one_of(dot_strings, dot_strings, quoted_strings).filter(
    # our own rule: nothing that starts like an option
    lambda local: _octets(local) <= 64 and not local.startswith('-'))
local_names = dot_strings.filter(lambda local: _octets(local) <= 64 and not local.startswith('-'))

_ldh_labels = st.from_regex(r'\A[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?\Z')
_unicode_labels = st.text(st.sampled_from(_UNICODE_LETTERS + 'abc123'), min_size=1, max_size=10).filter(
    lambda label: not label.isascii())
_labels = st.one_of(_ldh_labels, _ldh_labels, _ldh_labels, _unicode_labels)
domain_names = st.lists(_labels, min_size=1, max_size=4).map('.'.join)
ip_literals = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: f'[{ip}]'),
    st.ip_addresses(v=6).map(lambda ip: f'[IPv6:{ip}]'),
    st.ip_addresses(v=6).map(lambda ip: f'[IPv6:{ip.exploded}]'),
)
domains = st.one_of(domain_names, domain_names, domain_names, ip_literals)

addresses = st.builds(Address, local_parts, domains).filter(lambda a: _octets(str(a)) + 2 <= 256)
# The plain strings that the queue and the SMTP client carry (what validate_address accepts).
envelope_addresses = addresses.map(str)
