"""The INI configuration: file -> typed ``Settings``; settings -> transports.

Values are literal (no ``%`` interpolation: a ``%`` in a password just works),
every key is known and typed, and every problem is reported as one line that
names the file and the key.
"""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from . import limits
from .queue.schedule import RetryPolicy

__all__ = [
    'ConfigError',
    'KNOWN_KEYS',
    'SECRET_ATTRIBUTES',
    'Settings',
    'check_ca_file',
    'check_smtp_settings',
    'finish_accounts',
    'guess_config_path',
    'init_smtp_mailer',
    'load_config',
    'parse_config_text',
    'settings_from_mapping',
]

SECTION = 'mqrunner'
USER_CONFIG = '~/.mailqueue-runner.conf'
SYSTEM_CONFIG = '/etc/mailqueue-runner.conf'


class ConfigError(Exception):
    """A configuration problem; ``str()`` is the one line shown to the user."""

    def __init__(self, problem: str, path: Optional[str] = None, key: Optional[str] = None) -> None:
        self.problem = problem
        self.path = path
        self.key = key
        where = path or 'configuration'
        if key:
            where = f'{where}: {key}'
        super().__init__(f'{where}: {problem}')


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ('1', 'yes', 'true', 'on'):
        return True
    if text in ('0', 'no', 'false', 'off'):
        return False
    raise ValueError(f'expected yes/no/true/false, got {value!r}')


def _tls(value: str) -> str:
    from .smtp.client import TLSMode  # lazy: keeps the SMTP client out of config-only start-ups

    return TLSMode.parse(value).value


def _str(value: str) -> str:
    return value


def _address(value: str) -> str:
    from .message import InvalidAddressError, validate_address

    try:
        return validate_address(value)
    except InvalidAddressError as exc:
        raise ValueError(str(exc)) from None


def _domain(value: str) -> str:
    import re

    if not re.fullmatch(r'(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}'
                        r'[A-Za-z0-9])?)*', value):
        raise ValueError(f'not a domain name: {value!r}')
    return value


def _absolute_path(value: str) -> str:
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        from .queue.locations import describe_location  # (only on this error: not at mq-sendmail's start)

        if '://' in value:  # a URI may hold a password: never echoed
            raise ValueError(f'must be an absolute path, got the URL {describe_location(value)!r} '
                             f'(a queue at a URL is queue_url)')
        # cron, PHP and a login shell each start in another directory
        raise ValueError(f'must be an absolute path, got {value!r}')
    return path


def _user_path(value: str) -> str:
    """A file name, ``~`` expanded as in queue_dir and include."""
    return os.path.expanduser(_str(value))


def _queue_location(value: str) -> str:
    """A path (absolute) or a store URL (``maildir:///path``, ``postgresql://...``)."""
    from .queue.locations import check_not_keywords, known_schemes, split_location

    scheme, rest = split_location(value.strip())
    if scheme not in known_schemes():
        raise ValueError(f'unknown queue location scheme {scheme!r} (known: {", ".join(known_schemes())}, '
                         f'or an absolute path)')
    if scheme == 'maildir':
        check_not_keywords(rest)
        _absolute_path(rest)
    elif scheme in ('postgresql', 'postgres'):
        from .queue.pg_location import read_location

        # our parameters now (without psycopg): a tool that sends directly would meet a typo in
        # mq_schema only on the day it has to queue
        read_location(value.strip())
    return value.strip()


def _hostnames(value: str) -> str:
    """One host or an ordered list (``a.example:587, b.example:587``); kept as written, checked here."""
    from .smtp.hosts import parse_hosts

    parse_hosts(value)
    return value.strip()


def _auth(value: str) -> str:
    text = value.strip().lower()
    if text not in ('auto', 'plain', 'login', 'xoauth2', 'oauthbearer'):
        raise ValueError(f'expected auto, plain, login, xoauth2 or oauthbearer, got {value!r}')
    return text


def _token_url(value: str) -> str:
    """An https:// URL (http:// only to a loopback address: the request carries the client secret)."""
    from urllib.parse import urlsplit

    text = value.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname or ''
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise ValueError(f'not a URL: {text!r}') from None
    if parts.scheme not in ('https', 'http') or not host:
        raise ValueError(f'expected an https:// URL, got {text!r}')
    if parts.scheme == 'http':
        from .smtp.wire import is_loopback_address

        if not is_loopback_address(host):
            raise ValueError('the token endpoint must use https:// (http:// only on 127.0.0.1 or ::1)')
    if parts.username or parts.password:
        raise ValueError('no user or password in the URL, please (use smtp_oauth2_client_secret)')
    return text


def _match_from(value: str) -> Tuple[str, ...]:
    """Addresses and ``@domain``s, separated by commas or spaces; lower-cased for matching."""
    entries: List[str] = []
    for item in value.replace(',', ' ').split():
        if item.startswith('@'):
            entries.append('@' + _domain(item[1:]).lower())
        else:
            entries.append(_address(item).lower())
    if not entries:
        raise ValueError('expected addresses or @domains')
    return tuple(dict.fromkeys(entries))


def _size(value: str) -> int:
    """Bytes, with an optional k/M/G suffix (powers of 1024)."""
    text = value.strip()
    factor = {'k': 1024, 'm': 1024 ** 2, 'g': 1024 ** 3}.get(text[-1:].lower(), 1)
    number = text[:-1] if factor != 1 else text
    if not number.isdigit() or not 1024 <= int(number) * factor <= 1024 ** 4:
        raise ValueError(f'expected a size from 1k to 1024G (e.g. 64M), got {value!r}')
    return int(number) * factor


def _names(value: str) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(item for item in value.replace(',', ' ').split()))


def _log_target(value: str) -> str:
    text = value.strip().lower()
    if text not in ('stderr', 'file', 'syslog', 'journal'):
        raise ValueError(f'expected stderr, file, syslog or journal, got {value!r}')
    return text


def _log_format(value: str) -> str:
    text = value.strip().lower()
    if text not in ('logfmt', 'json'):
        raise ValueError(f'expected logfmt or json, got {value!r}')
    return text


# key -> (attribute, parser)
KNOWN_KEYS: Dict[str, Tuple[str, Callable[[str], Any]]] = {
    'smtp_hostname': ('smtp_hostname', _hostnames),
    'smtp_port': ('smtp_port', limits.PORT),
    'smtp_username': ('smtp_username', _str),
    'smtp_password': ('smtp_password', _str),
    'smtp_password_command': ('smtp_password_command', _str),
    'smtp_tls': ('smtp_tls', _tls),
    'smtp_tls_verify': ('smtp_tls_verify', _bool),
    'smtp_ca_file': ('smtp_ca_file', _str),
    'smtp_timeout': ('smtp_timeout', limits.TIMEOUT),
    'smtp_rate_limit': ('smtp_rate_limit', limits.RATE_LIMIT),
    'smtp_auth': ('smtp_auth', _auth),
    'smtp_oauth2_token_command': ('smtp_oauth2_token_command', _str),
    'smtp_oauth2_token_url': ('smtp_oauth2_token_url', _token_url),
    'smtp_oauth2_client_id': ('smtp_oauth2_client_id', _str),
    'smtp_oauth2_client_secret': ('smtp_oauth2_client_secret', _str),
    'smtp_oauth2_client_secret_command': ('smtp_oauth2_client_secret_command', _str),
    'smtp_oauth2_scope': ('smtp_oauth2_scope', _str),
    'smtp_oauth2_refresh_token': ('smtp_oauth2_refresh_token', _str),
    'smtp_oauth2_refresh_token_command': ('smtp_oauth2_refresh_token_command', _str),
    'smtp_oauth2_token_cache': ('smtp_oauth2_token_cache', _absolute_path),
    'queue_dir': ('queue_dir', _absolute_path),
    'queue_url': ('queue_url', _queue_location),
    'from': ('from_addr', _address),
    'logging_config': ('logging_config', _user_path),
    'logging_conf': ('logging_config', _user_path),
    'log_format': ('log_format', _log_format),
    'delivery_log': ('delivery_log', _user_path),
    'queue_log': ('queue_log', _user_path),
    'plugins': ('plugins', _str),
    'retry_min_delay': ('retry_min_delay', limits.RETRY_DELAY),
    'retry_max_delay': ('retry_max_delay', limits.RETRY_DELAY),
    'max_queue_lifetime': ('max_queue_lifetime', limits.LIFETIME),
    'max_attempts': ('max_attempts', limits.ATTEMPTS),
    'workers': ('workers', limits.WORKERS),
    'stale_claim_timeout': ('stale_claim_timeout', limits.STALE_CLAIM),
    'aliases': ('aliases', _user_path),
    'default_domain': ('default_domain', _domain),
    # headers MTAs add (each on by default)
    'add_date_header': ('add_date_header', _bool),
    'add_message_id_header': ('add_message_id_header', _bool),
    'add_from_header': ('add_from_header', _bool),
    'qualify_addresses': ('qualify_addresses', _bool),
    # submissions of users who cannot use the queue (the drop area) and where logs go
    'trusted_users': ('trusted_users', _names),
    'drop_max_size': ('drop_max_size', _size),
    # the largest message mq-sendmail and mq-mail take (stdin, -bs); more is refused (exit 65, 552)
    'max_message_size': ('max_message_size', _size),
    'log_target': ('log_target', _log_target),
    'include': ('include', _absolute_path),
}


# Settings that hold a secret: '***' in reprs; a file with one of them must not be readable by others.
SECRET_ATTRIBUTES = ('smtp_password', 'smtp_oauth2_client_secret', 'smtp_oauth2_refresh_token')

# Keys an [account:NAME] section may set (besides match_from): the smtp_* keys.
ACCOUNT_PREFIX = 'account:'
# What an account takes from [mqrunner] when it does not set it: how to talk TLS and how long to
# wait, never a host or a credential (a password must not travel to another account's host).
INHERITED_BY_ACCOUNTS = ('smtp_tls', 'smtp_tls_verify', 'smtp_ca_file', 'smtp_timeout', 'smtp_oauth2_token_cache')


class Settings:
    """Typed configuration. The class attributes are the defaults; instances hold what was set.

    A plain class (no dataclass): ``dataclasses`` imports ``inspect``, a noticeable share of
    ``mq-sendmail``'s start-up.
    """

    path: Optional[str] = None
    smtp_hostname: Optional[str] = None
    smtp_port: Optional[int] = None
    smtp_username: Optional[str] = None
    smtp_password: Optional[str] = None
    smtp_password_command: Optional[str] = None
    smtp_tls: Optional[str] = None
    smtp_tls_verify: Optional[bool] = None
    smtp_ca_file: Optional[str] = None
    smtp_timeout: float = 10.0
    smtp_rate_limit: Optional[float] = None
    smtp_auth: str = 'auto'
    smtp_oauth2_token_command: Optional[str] = None
    smtp_oauth2_token_url: Optional[str] = None
    smtp_oauth2_client_id: Optional[str] = None
    smtp_oauth2_client_secret: Optional[str] = None
    smtp_oauth2_client_secret_command: Optional[str] = None
    smtp_oauth2_scope: Optional[str] = None
    smtp_oauth2_refresh_token: Optional[str] = None
    smtp_oauth2_refresh_token_command: Optional[str] = None
    smtp_oauth2_token_cache: Optional[str] = None
    # [account:NAME] sections (in file order); in an account's own Settings: its name and senders
    accounts: Tuple[Settings, ...] = ()
    account_name: Optional[str] = None
    match_from: Tuple[str, ...] = ()
    queue_dir: Optional[str] = None
    queue_url: Optional[str] = None
    from_addr: Optional[str] = None
    logging_config: Optional[str] = None
    log_format: str = 'logfmt'
    delivery_log: Optional[str] = None
    queue_log: Optional[str] = None
    plugins: Optional[str] = None
    retry_min_delay: timedelta = timedelta(minutes=5)
    retry_max_delay: timedelta = timedelta(hours=4)
    max_queue_lifetime: timedelta = timedelta(days=5)
    max_attempts: Optional[int] = None
    # Parallel SMTP connections for mq-run; conservative next to Postfix's 20 per destination.
    workers: int = 4
    # Only for filesystems whose locks cannot be trusted (e.g. some NFS set-ups); 30m is a sane value there.
    stale_claim_timeout: Optional[timedelta] = None
    aliases: Optional[str] = None
    default_domain: Optional[str] = None
    add_date_header: bool = True
    add_message_id_header: bool = True
    add_from_header: bool = True
    qualify_addresses: bool = True
    trusted_users: Tuple[str, ...] = ()
    drop_max_size: int = 64 * 1024 * 1024
    max_message_size: int = 64 * 1024 * 1024
    # stderr: only the console; file: delivery_log/queue_log; syslog: /dev/log; journal: systemd's journal
    log_target: str = 'file'
    # a second file (credentials, 0600) read after this one; None when it could not be read (see
    # include_unreadable): then this user cannot send directly and hands mail to the queue
    include: Optional[str] = None
    include_unreadable: Optional[str] = None

    def __init__(self, path: Optional[str] = None, **values: Any) -> None:
        self.path = path
        self.warnings: List[str] = []
        # the keys an account took from [mqrunner] (finish_accounts), not set in its own section
        self.inherited: Set[str] = set()
        for name, value in values.items():
            if name.startswith('_') or not hasattr(Settings, name) or callable(getattr(Settings, name)):
                raise TypeError(f'unknown setting {name!r}')
            setattr(self, name, value)

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if k not in ('warnings', 'inherited')}
        for key in SECRET_ATTRIBUTES:
            if shown.get(key) is not None:
                shown[key] = '***'  # never in a repr, a traceback or a log
        return 'Settings(' + ', '.join(f'{k}={v!r}' for k, v in shown.items()) + ')'

    @property
    def uses_oauth2(self) -> bool:
        return bool(self.smtp_oauth2_token_command or self.smtp_oauth2_token_url)

    def holds_secret(self) -> bool:
        """A password, client secret or refresh token written into the file (here or in an account)."""
        mine = any(getattr(self, key) is not None for key in SECRET_ATTRIBUTES)
        return mine or any(account.holds_secret() for account in self.accounts)

    def local_domain(self) -> Optional[str]:
        """Domain for bare local names (``root``): ``default_domain``, else the domain of ``from``.

        Like nullmailer's defaulthost: on a host that relays everything to one smarthost, mail
        for ``root`` means the administrator's address at the sending domain.
        """
        if self.default_domain:
            return self.default_domain
        if self.from_addr and '@' in self.from_addr:
            return self.from_addr.rsplit('@', 1)[1] or None
        return None

    def retry_policy(self) -> RetryPolicy:
        try:
            return RetryPolicy(self.retry_min_delay, self.retry_max_delay, self.max_queue_lifetime,
                               self.max_attempts)
        except ValueError as exc:
            raise ConfigError(str(exc), self.path) from None

    def password(self) -> Optional[str]:
        """The SMTP password, running ``smtp_password_command`` if that is how it is configured."""
        if self.smtp_password is not None:
            return self.smtp_password
        if not self.smtp_password_command:
            return None
        from .secret_command import CommandFailed, command_output

        try:
            output = command_output(self.smtp_password_command)
        except CommandFailed as exc:
            raise ConfigError(f'command {exc}', self.path, 'smtp_password_command') from None
        return output.decode('utf-8', 'replace').rstrip('\r\n')


def settings_from_mapping(values: Mapping[str, Any], path: Optional[str] = None,
                          *, strict: bool = True, check: bool = True) -> Settings:
    """Typed settings from raw key/value pairs (INI section or a Python dict)."""
    settings = Settings(path=path)
    for raw_key, raw_value in values.items():
        key = raw_key.strip().lower()
        if key not in KNOWN_KEYS:
            if strict:
                raise ConfigError('unknown key', path, raw_key)
            continue
        attr, parser = KNOWN_KEYS[key]
        if raw_value is None:
            continue
        if not isinstance(raw_value, str):
            # Values from Python (init_app(settings=...), one_shot_queue_run) are typed already,
            # but a number must still be in range: workers=10**6 would start a million threads.
            if isinstance(parser, limits.Range):
                try:
                    raw_value = parser(raw_value)
                except ValueError as exc:
                    raise ConfigError(f'invalid value ({exc})', path, raw_key) from None
            setattr(settings, attr, raw_value)
            continue
        if '\n' in raw_value or '\r' in raw_value:
            # configparser joins an indented next line onto the value: almost always a mistake,
            # and it would carry the next line (say, the password) into SMTP commands and errors.
            raise ConfigError('value continues on an indented line (keys must start at the beginning '
                              'of a line; one value per key)', path, raw_key)
        value = raw_value.strip() if attr not in ('smtp_password',) else raw_value
        # an empty `plugins =` means "none" (unset means "all")
        if value == '' and attr not in ('smtp_password', 'plugins'):
            continue
        try:
            setattr(settings, attr, parser(value))
        except ValueError as exc:
            raise ConfigError(f'invalid value ({exc})', path, raw_key) from None
    if check:
        check_smtp_settings(settings, path)
    return settings


def _both(settings: Settings, a: str, b: str, path: Optional[str], section: str) -> None:
    if getattr(settings, a) is not None and getattr(settings, b):
        raise ConfigError(f'set {a} or {b}, not both', path, section or None)


def check_smtp_settings(settings: Settings, path: Optional[str] = None, section: str = '') -> None:
    """Combinations of the smtp_* keys that cannot work: one clear line naming what to change."""
    def error(problem: str, key: Optional[str] = None) -> ConfigError:
        where = f'[{section}] {key}' if section and key else (f'[{section}]' if section else key)
        return ConfigError(problem, path, where)

    _both(settings, 'smtp_password', 'smtp_password_command', path, section)
    _both(settings, 'smtp_oauth2_client_secret', 'smtp_oauth2_client_secret_command', path, section)
    _both(settings, 'smtp_oauth2_refresh_token', 'smtp_oauth2_refresh_token_command', path, section)
    if settings.smtp_oauth2_token_command and settings.smtp_oauth2_token_url:
        raise error('set smtp_oauth2_token_command or smtp_oauth2_token_url, not both')
    has_password = settings.smtp_password is not None or bool(settings.smtp_password_command)
    oauth_keys = [k for k in ('smtp_oauth2_client_id', 'smtp_oauth2_client_secret',
                              'smtp_oauth2_client_secret_command', 'smtp_oauth2_scope', 'smtp_oauth2_refresh_token',
                              'smtp_oauth2_refresh_token_command') if getattr(settings, k) is not None]
    if oauth_keys and not settings.smtp_oauth2_token_url:
        raise error('needs smtp_oauth2_token_url (the token endpoint)', oauth_keys[0])
    if settings.smtp_oauth2_token_url:
        if not settings.smtp_oauth2_client_id:
            raise error('not set (needed with smtp_oauth2_token_url)', 'smtp_oauth2_client_id')
        refresh = settings.smtp_oauth2_refresh_token is not None or settings.smtp_oauth2_refresh_token_command
        secret = settings.smtp_oauth2_client_secret is not None or settings.smtp_oauth2_client_secret_command
        if not refresh and not secret:
            raise error('set smtp_oauth2_client_secret (client-credentials grant, Microsoft 365) or '
                        'smtp_oauth2_refresh_token (refresh-token grant, Google)', 'smtp_oauth2_token_url')
    if settings.uses_oauth2:
        if has_password:
            raise error('set a password or OAuth2 (smtp_oauth2_*), not both', 'smtp_password')
        if not settings.smtp_username:
            raise error('not set (OAuth2 needs the mailbox address as smtp_username)', 'smtp_username')
        if settings.smtp_auth in ('plain', 'login'):
            raise error(f'{settings.smtp_auth} needs a password; OAuth2 uses xoauth2 or oauthbearer (or auto)',
                        'smtp_auth')
    elif settings.smtp_auth in ('xoauth2', 'oauthbearer'):
        raise error(f'{settings.smtp_auth} needs a token: set smtp_oauth2_token_command or smtp_oauth2_token_url',
                    'smtp_auth')


def _account_settings(name: str, values: Mapping[str, str], path: Optional[str]) -> Settings:
    """One ``[account:NAME]`` section, parsed; ``finish_accounts`` completes and checks it."""
    import re

    section = f'{ACCOUNT_PREFIX}{name}'
    if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}', name):
        raise ConfigError('an account name is letters, digits, "_", "." and "-" (at most 64)', path, f'[{section}]')
    smtp_values: Dict[str, str] = {}
    match_from: Optional[Tuple[str, ...]] = None
    for raw_key, raw_value in values.items():
        key = raw_key.strip().lower()
        where = f'[{section}] {raw_key}'
        if key == 'match_from':
            if '\n' in raw_value or '\r' in raw_value:
                raise ConfigError('value continues on an indented line', path, where)
            try:
                match_from = _match_from(raw_value)
            except ValueError as exc:
                raise ConfigError(f'invalid value ({exc})', path, where) from None
        elif key not in KNOWN_KEYS:
            raise ConfigError('unknown key', path, where)
        elif not key.startswith('smtp_'):
            raise ConfigError('not allowed in an account section (only smtp_* keys and match_from)', path, where)
        else:
            smtp_values[raw_key] = raw_value
    try:
        account = settings_from_mapping(smtp_values, path, check=False)
    except ConfigError as exc:
        raise ConfigError(exc.problem, path, f'[{section}] {exc.key}' if exc.key else f'[{section}]') from None
    account.account_name = name
    if match_from is not None:
        account.match_from = match_from
    return account


def finish_accounts(settings: Settings, path: Optional[str] = None) -> None:
    """Check the whole configuration (after an ``include``): the smtp_* combinations of the
    ``[mqrunner]`` section and of every account, which keys the accounts take from ``[mqrunner]``,
    and that no sender is matched by two accounts."""
    check_smtp_settings(settings, path)
    owner: Dict[str, str] = {}
    for account in settings.accounts:
        name = account.account_name
        section = f'{ACCOUNT_PREFIX}{name}'
        if not account.match_from:
            raise ConfigError('not set (the senders of this account: addresses or @domains)', path,
                              f'[{section}] match_from')
        if not account.smtp_hostname:
            raise ConfigError('not set (an account names its own smarthost)', path, f'[{section}] smtp_hostname')
        for attr in INHERITED_BY_ACCOUNTS:
            if attr not in vars(account) or attr in account.inherited:
                account.inherited.add(attr)
                setattr(account, attr, getattr(settings, attr))
        check_smtp_settings(account, path, section)
        for entry in account.match_from:
            if entry in owner and owner[entry] != name:
                raise ConfigError(f'{entry} is matched by account {owner[entry]} already', path,
                                  f'[{section}] match_from')
            owner[entry] = name or ''


def _merge_accounts(settings: Settings, included: Settings) -> None:
    """Accounts of an included file: a section of the same name is completed (its keys win), others added."""
    accounts = {a.account_name: a for a in settings.accounts}
    for account in included.accounts:
        mine = accounts.get(account.account_name)
        if mine is None:
            accounts[account.account_name] = account
            continue
        for attr, value in vars(account).items():
            if attr not in ('path', 'warnings', 'inherited'):
                setattr(mine, attr, value)
    settings.accounts = tuple(accounts.values())


def parse_config_text(text: str, path: Optional[str] = None, *, finish: bool = True) -> Settings:
    import configparser

    # (no DEFAULT section: configparser would copy its keys, say a password, into every account)
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False,
                                       default_section='\0')
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=path or '<config>')
    except configparser.Error as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f'malformed file ({message})', path) from None
    if not parser.has_section(SECTION):
        raise ConfigError(f'no [{SECTION}] section', path)
    accounts: List[Tuple[str, Mapping[str, str]]] = []
    for section in parser.sections():
        if section.startswith(ACCOUNT_PREFIX):
            accounts.append((section[len(ACCOUNT_PREFIX):], _section_items(parser, section, path)))
        elif section != SECTION:
            raise ConfigError(f'unknown section [{section}] (known: [{SECTION}], [{ACCOUNT_PREFIX}NAME])', path)
    settings = settings_from_mapping(_section_items(parser, SECTION, path), path, check=False)
    if accounts:
        settings.accounts = tuple(_account_settings(name, values, path) for name, values in accounts)
    if finish and not settings.include:
        finish_accounts(settings, path)  # else after the included file is read (load_config)
    return settings


# far beyond any configuration; /dev/zero or a log file by mistake is refused
_MAX_CONFIG_BYTES = 1024 * 1024


def _read_config_file(path: str) -> Tuple[str, os.stat_result]:
    """The text of a configuration file: a regular file (a FIFO would block, a device never end)
    of at most 1 MiB, that not every user may write (it may name commands the tools run)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_CLOEXEC', 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError('is a directory' if stat.S_ISDIR(st.st_mode) else 'not a regular file', path)
        if st.st_mode & stat.S_IWOTH:
            raise ConfigError(f'any user may write it (it may name commands to run); run: chmod o-w {path}', path)
    except BaseException:
        os.close(fd)  # (os.fdopen would refuse a directory and leave the descriptor open)
        raise
    with os.fdopen(fd, 'rb') as fp:
        data = fp.read(_MAX_CONFIG_BYTES + 1)
    if len(data) > _MAX_CONFIG_BYTES:
        raise ConfigError(f'larger than {_MAX_CONFIG_BYTES // 1024} KiB: not a configuration file', path)
    return data.decode('utf-8-sig'), st  # (a BOM from a Windows editor is no section header)


def _section_items(parser: Any, section: str, path: Optional[str]) -> Dict[str, str]:
    """A section's keys as written; one given twice in another case (smtp_port, SMTP_PORT) or
    spelling (logging_conf, logging_config) is an error, as one given twice in the same case is
    (configparser's strict mode): which one wins would be a guess."""
    items: Dict[str, str] = dict(parser.items(section, raw=True))
    seen: Dict[str, str] = {}
    for key in items:
        normal = key.strip().lower()
        setting = KNOWN_KEYS[normal][0] if normal in KNOWN_KEYS else normal
        if setting in seen:
            raise ConfigError(f'set twice in [{section}] (also as {seen[setting]})', path, key)
        seen[setting] = key
    return items


def load_config(path: str, *, finish: bool = True, nested: bool = False) -> Settings:
    try:
        text, st = _read_config_file(path)
        mode = st.st_mode
    except FileNotFoundError:
        raise ConfigError('file not found', path) from None
    except PermissionError:
        raise ConfigError('permission denied', path) from None
    except UnicodeDecodeError:
        raise ConfigError('not valid UTF-8', path) from None
    except OSError as exc:
        raise ConfigError(f'cannot read ({exc.strerror or exc})', path) from None
    settings = parse_config_text(text, path, finish=finish)
    if nested and settings.include:
        raise ConfigError('an included file cannot include another one', path, 'include')
    if settings.holds_secret() and mode & (stat.S_IRGRP | stat.S_IROTH):
        settings.warnings.append(
            f'{path} holds a secret (smtp_password, smtp_oauth2_client_secret or smtp_oauth2_refresh_token) '
            f'and is readable by other users; run: chmod 600 {path}')
    if settings.include:
        _merge_include(settings)
        if not settings.include_unreadable:
            # this user can send: the whole configuration must make sense
            finish_accounts(settings, path)
    return settings


def _merge_include(settings: Settings) -> None:
    """Read ``include`` (the credentials file of the split set-up) over ``settings``.

    A file this user may not read is not an error: senders without access to the secrets
    hand their mail to the queue (``include_unreadable``), the queue owner's runner sends it.
    """
    path = settings.include
    assert path is not None
    try:
        included = load_config(path, finish=False, nested=True)  # checked as a whole, with the including file
    except ConfigError as exc:
        if exc.problem == 'permission denied' and exc.key is None and exc.path == path:
            settings.include_unreadable = path
            return
        if exc.key is None and exc.path == path:  # (the file itself: say where it is named)
            raise ConfigError(f'{path}: {exc.problem}', settings.path, 'include') from None
        raise
    for attr, value in vars(included).items():
        if attr in ('path', 'warnings', 'include', 'include_unreadable', 'inherited'):
            continue
        if attr == 'accounts':
            _merge_accounts(settings, included)
            continue
        setattr(settings, attr, value)
    settings.warnings.extend(included.warnings)


def guess_config_path(path: Optional[str] = None) -> Optional[str]:
    """An explicit path wins; otherwise the user's config, then the system one; None if neither exists."""
    if path:
        return path
    for candidate in (os.path.expanduser(USER_CONFIG), SYSTEM_CONFIG):
        if os.path.exists(candidate):
            return candidate
    return None


def check_ca_file(settings: Settings) -> None:
    """``ConfigError`` unless ``smtp_ca_file`` (when set) is a readable file of certificates.

    Checked when the SMTP settings are put to use, before any message is handled: found only
    at connect time, a missing file reads as "cannot connect" and every message is queued
    and retried until it expires.
    """
    path = settings.smtp_ca_file
    if not path:
        return
    import ssl

    def problem(text: str) -> ConfigError:
        return ConfigError(f'{path}: {text}', settings.path, 'smtp_ca_file')

    try:
        with open(path, 'rb'):
            pass
        ssl.create_default_context().load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise problem('file not found') from None
    except PermissionError:
        raise problem('permission denied') from None
    except IsADirectoryError:
        raise problem('is a directory') from None
    except ssl.SSLError as exc:
        raise problem(f'no usable certificates in it ({exc.reason or exc})') from None
    except OSError as exc:
        raise problem(f'cannot read ({exc.strerror or exc})') from None


def init_smtp_mailer(settings: Any, smtp_log: Any = None) -> Any:
    """1.x location of ``bootstrap.init_smtp_mailer`` (objects are built there; this module only parses)."""
    from .bootstrap import init_smtp_mailer as build

    return build(settings, smtp_log)
