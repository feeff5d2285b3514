from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schwarz.mailqueue.aliases import (
    AliasesError,
    UnresolvableRecipientError,
    load_aliases,
    parse_aliases,
    resolve_recipients,
)

from _hyp import examples

HYP_SETTINGS = settings(
    max_examples=examples(),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- parse_aliases -------------------------------------------------------------


def test_parse_simple_entries_comments_and_blank_lines() -> None:
    text = (
        '# aliases for this host\n'
        '\n'
        'postmaster: root\n'
        '   \n'
        '    # indented comment\n'
        'root: admin@example.com\n'
    )
    assert parse_aliases(text) == {'postmaster': ['root'], 'root': ['admin@example.com']}


def test_parse_several_targets_are_stripped() -> None:
    text = 'staff:  alice@example.com ,bob ,  carol@example.org,\n'
    assert parse_aliases(text) == {'staff': ['alice@example.com', 'bob', 'carol@example.org']}


def test_parse_continuation_lines() -> None:
    text = (
        'staff: alice@example.com,\n'
        '       bob@example.com,\n'
        '# a comment between continuation lines does not end the entry\n'
        '\tcarol\n'
        'other: dave\n'
    )
    assert parse_aliases(text) == {
        'staff': ['alice@example.com', 'bob@example.com', 'carol'],
        'other': ['dave'],
    }


def test_parse_names_are_case_insensitive() -> None:
    aliases = parse_aliases('PostMaster: Root\n')
    assert aliases == {'postmaster': ['Root']}
    assert resolve_recipients(['POSTMASTER'], {'postmaster': ['x@example.com']}) == ['x@example.com']


def test_parse_later_definition_wins() -> None:
    text = 'root: first@example.com\nRoot: second@example.com\n'
    assert parse_aliases(text) == {'root': ['second@example.com']}


def test_parse_quoted_targets_are_kept() -> None:
    text = 'prog: "|/usr/bin/prog --flag, with comma", "|/usr/bin/other", "john doe"@example.com\n'
    assert parse_aliases(text) == {
        'prog': ['"|/usr/bin/prog --flag, with comma"', '"|/usr/bin/other"', '"john doe"@example.com'],
    }


def test_parse_unquoted_pipe_and_file_targets() -> None:
    assert parse_aliases('a: |/usr/bin/prog, /var/mail/archive\n') == {
        'a': ['|/usr/bin/prog', '/var/mail/archive'],
    }


def test_parse_quoted_alias_name() -> None:
    assert parse_aliases('"Some Name": x@example.com\n') == {'some name': ['x@example.com']}


def test_parse_crlf_line_endings() -> None:
    assert parse_aliases('a: b,\r\n  c\r\nd: e\r\n') == {'a': ['b', 'c'], 'd': ['e']}


def test_parse_include_kept_without_loader() -> None:
    assert parse_aliases('staff: :include:/etc/mail/staff\n') == {'staff': [':include:/etc/mail/staff']}


def test_parse_include_with_loader() -> None:
    files = {
        '/lists/staff': '# staff list\nalice@example.com, bob\n\ncarol@example.com\n:include:/lists/more\n',
        '/lists/more': 'dave@example.com\n',
    }
    text = 'staff: first@example.com, :include:/lists/staff, last@example.com\n'
    assert parse_aliases(text, include_loader=files.__getitem__) == {
        'staff': [
            'first@example.com',
            'alice@example.com',
            'bob',
            'carol@example.com',
            'dave@example.com',
            'last@example.com',
        ],
    }


def test_parse_include_loop_is_an_error() -> None:
    files = {'/a': ':include:/b\n', '/b': 'x@example.com, :include:/a\n'}
    with pytest.raises(AliasesError, match='include loop'):
        parse_aliases('list: :include:/a\n', include_loader=files.__getitem__)


def test_parse_include_loader_oserror_becomes_aliases_error() -> None:
    def loader(path: str) -> str:
        raise FileNotFoundError(2, 'No such file or directory', path)

    with pytest.raises(AliasesError) as exc_info:
        parse_aliases('\nlist: :include:/missing\n', source='/etc/aliases', include_loader=loader)
    assert exc_info.value.source == '/etc/aliases'
    assert exc_info.value.lineno == 2
    assert '/missing' in str(exc_info.value)


def test_parse_malformed_line_names_source_and_line() -> None:
    text = '# comment\nroot: admin@example.com\n\nthis line has no colon\n'
    with pytest.raises(AliasesError) as exc_info:
        parse_aliases(text, source='/etc/aliases')
    error = exc_info.value
    assert (error.source, error.lineno) == ('/etc/aliases', 4)
    assert str(error).startswith('/etc/aliases, line 4: ')
    assert 'this line has no colon' in str(error)


@pytest.mark.parametrize(
    ('text', 'lineno', 'message'),
    [
        ('  leading: whitespace\n', 1, 'continuation line'),
        ('a: b\n: c\n', 2, 'empty alias name'),
        ('a: b\nc:\n', 2, 'no targets'),
        ('a: b\nc: , ,\n', 2, 'no targets'),
        ('a b: c\n', 1, 'whitespace'),
        ('a: b c\n', 1, 'missing comma'),
        ('a: "|/bin/prog\n', 1, 'unterminated quote'),
        ('"a: b\n', 1, 'unterminated quoted alias name'),
    ],
)
def test_parse_errors(text: str, lineno: int, message: str) -> None:
    with pytest.raises(AliasesError, match=message) as exc_info:
        parse_aliases(text, source='aliases.txt')
    assert exc_info.value.lineno == lineno


def test_parse_error_in_include_file_names_the_include_file() -> None:
    files = {'staff.list': 'alice@example.com\nbob carol\n'}
    with pytest.raises(AliasesError) as exc_info:
        parse_aliases('staff: :include:staff.list\n', include_loader=files.__getitem__)
    assert (exc_info.value.source, exc_info.value.lineno) == ('staff.list', 2)


# --- load_aliases --------------------------------------------------------------


def test_load_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_aliases(str(tmp_path / 'aliases')) == {}
    assert load_aliases(tmp_path / 'no-such-dir' / 'aliases') == {}


def test_load_reads_file_and_includes(tmp_path: Path) -> None:
    (tmp_path / 'lists').mkdir()
    (tmp_path / 'lists' / 'staff').write_text('# staff\nalice@example.com,\nbob@example.com\n')
    absolute = tmp_path / 'absolute.list'
    absolute.write_text('carol@example.com\n')
    aliases_path = tmp_path / 'aliases'
    aliases_path.write_text(
        'root: admin@example.com\n'
        f'staff: :include:lists/staff,\n  :include:{absolute}\n'
    )
    aliases = load_aliases(str(aliases_path))
    assert aliases == {
        'root': ['admin@example.com'],
        'staff': ['alice@example.com', 'bob@example.com', 'carol@example.com'],
    }
    assert resolve_recipients(['staff', 'root'], aliases) == [
        'alice@example.com',
        'bob@example.com',
        'carol@example.com',
        'admin@example.com',
    ]


def test_load_relative_include_is_relative_to_aliases_dir_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / 'etc'
    etc.mkdir()
    (etc / 'staff').write_text('alice@example.com\n')
    (etc / 'aliases').write_text('staff: :include:staff\n')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'staff').write_text('wrong@example.com\n')
    monkeypatch.chdir(elsewhere)
    assert load_aliases(os.path.relpath(etc / 'aliases')) == {'staff': ['alice@example.com']}


def test_load_missing_include_is_an_error(tmp_path: Path) -> None:
    aliases_path = tmp_path / 'aliases'
    aliases_path.write_text('a: x@example.com\nstaff: :include:missing.list\n')
    with pytest.raises(AliasesError) as exc_info:
        load_aliases(str(aliases_path))
    assert exc_info.value.lineno == 2
    assert 'missing.list' in str(exc_info.value)


def test_load_unreadable_file_is_an_error(tmp_path: Path) -> None:
    # a directory cannot be read as a file, independent of running as root
    with pytest.raises(AliasesError, match='cannot read aliases file'):
        load_aliases(str(tmp_path))


def test_load_tolerates_latin1_comments(tmp_path: Path) -> None:
    aliases_path = tmp_path / 'aliases'
    aliases_path.write_bytes('# Weiterleitung f\xfcr root\nroot: admin@example.com\n'.encode('latin-1'))
    assert load_aliases(aliases_path) == {'root': ['admin@example.com']}


def test_load_syntax_error_names_file(tmp_path: Path) -> None:
    aliases_path = tmp_path / 'aliases'
    aliases_path.write_text('root admin@example.com\n')
    with pytest.raises(AliasesError, match=r', line 1: ') as exc_info:
        load_aliases(str(aliases_path))
    assert exc_info.value.source == str(aliases_path)


# --- resolve_recipients --------------------------------------------------------


def test_resolve_addresses_are_final() -> None:
    aliases = {'root': ['admin@example.com']}
    assert resolve_recipients(['root@example.com', 'x@y.org'], aliases) == ['root@example.com', 'x@y.org']


def test_resolve_recursive_keeps_order_and_removes_duplicates() -> None:
    aliases = parse_aliases(
        'postmaster: root\n'
        'root: admins, ops@example.com\n'
        'admins: alice@example.com, bob@example.com\n'
        'abuse: bob@EXAMPLE.com, root\n'
    )
    result = resolve_recipients(['postmaster', 'abuse', 'alice@example.com', 'carol@example.com'], aliases)
    assert result == ['alice@example.com', 'bob@example.com', 'ops@example.com', 'carol@example.com']


def test_resolve_self_reference_keeps_local_name() -> None:
    aliases = parse_aliases('root: root, admin@example.com\n')
    with pytest.raises(UnresolvableRecipientError) as exc_info:
        resolve_recipients(['root'], aliases)
    assert exc_info.value.names == ('root',)
    assert resolve_recipients(['root'], aliases, default_domain='host.example') == [
        'root@host.example',
        'admin@example.com',
    ]


def test_resolve_direct_loop_terminates() -> None:
    aliases = parse_aliases('a: b\nb: a\n')
    with pytest.raises(UnresolvableRecipientError) as exc_info:
        resolve_recipients(['a'], aliases)
    assert exc_info.value.names == ('a',)
    assert resolve_recipients(['a', 'b'], aliases, default_domain='example.org') == ['a@example.org']


def test_resolve_loop_with_addresses_delivers_to_all() -> None:
    aliases = parse_aliases('a: b, a1@example.org\nb: c, b1@example.org\nc: a, c1@example.org\n')
    assert resolve_recipients(['b'], aliases, default_domain='example.org') == [
        'b@example.org',
        'a1@example.org',
        'c1@example.org',
        'b1@example.org',
    ]


def _chain(length: int) -> dict[str, list[str]]:
    aliases = {f'n{i}': [f'n{i + 1}'] for i in range(length - 1)}
    aliases[f'n{length - 1}'] = ['end@example.com']
    return aliases


def test_resolve_long_chain_up_to_max_depth() -> None:
    assert resolve_recipients(['n0'], _chain(20)) == ['end@example.com']
    with pytest.raises(AliasesError, match='deeper than 20'):
        resolve_recipients(['n0'], _chain(21))
    assert resolve_recipients(['n0'], _chain(21), max_depth=21) == ['end@example.com']


def test_resolve_very_deep_chain_does_not_hit_recursion_limit() -> None:
    assert resolve_recipients(['n0'], _chain(5000), max_depth=10_000) == ['end@example.com']


def test_resolve_wide_diamond_graph_is_fast() -> None:
    # 2**40 paths through the graph; each alias must be expanded only once
    aliases = {f'l{i}': [f'l{i + 1}a', f'l{i + 1}b'] for i in range(40)}
    for i in range(1, 41):
        aliases[f'l{i}a'] = [f'l{i}']
        aliases[f'l{i}b'] = [f'l{i}']
    aliases['l40'] = ['end@example.com']
    assert resolve_recipients(['l0'], aliases, max_depth=200) == ['end@example.com']


def test_resolve_unresolvable_names_are_all_reported() -> None:
    aliases = {'staff': ['alice', 'bob@example.com', 'carol']}
    with pytest.raises(UnresolvableRecipientError) as exc_info:
        resolve_recipients(['staff', 'dave', 'Alice'], aliases)
    assert exc_info.value.names == ('alice', 'carol', 'dave')
    assert isinstance(exc_info.value, AliasesError)
    assert "'carol'" in str(exc_info.value)


def test_resolve_default_domain_qualifies_bare_names() -> None:
    aliases = {'staff': ['alice', 'bob@example.com']}
    assert resolve_recipients(['staff', 'dave', 'alice'], aliases, default_domain='example.org') == [
        'alice@example.org',
        'bob@example.com',
        'dave@example.org',
    ]


def test_resolve_backslash_name_bypasses_aliases() -> None:
    aliases = parse_aliases('root: \\root, admin@example.com\n')
    assert resolve_recipients(['root'], aliases, default_domain='host') == ['root@host', 'admin@example.com']


def test_resolve_quoted_local_name_is_looked_up() -> None:
    aliases = parse_aliases('a: "b"\nb: x@example.com\n')
    assert resolve_recipients(['a'], aliases) == ['x@example.com']


@pytest.mark.parametrize(
    'target',
    ['|/usr/bin/prog', '"|/usr/bin/prog arg"', '/var/mail/archive', '":include:/etc/list"', ':include:/x'],
)
def test_resolve_refuses_pipes_files_and_includes(target: str) -> None:
    aliases = {'root': ['admin@example.com'], 'prog': ['root', target]}
    with pytest.raises(AliasesError, match="via alias 'prog'.*smarthost"):
        resolve_recipients(['prog'], aliases, default_domain='example.org')
    # aliases not involved in the delivery do not matter
    assert resolve_recipients(['root'], aliases) == ['admin@example.com']


def test_resolve_refuses_pipe_recipient() -> None:
    with pytest.raises(AliasesError, match='pipe'):
        resolve_recipients(['|/bin/sh'], {})


@pytest.mark.parametrize('target', ['@example.com', 'user@', '@', ''])
def test_resolve_malformed_targets(target: str) -> None:
    with pytest.raises(AliasesError):
        resolve_recipients(['a'], {'a': [target]}, default_domain='example.org')


def test_resolve_alias_without_targets_is_an_error() -> None:
    with pytest.raises(AliasesError, match='no targets'):
        resolve_recipients(['a'], {'a': []}, default_domain='example.org')


def test_resolve_empty_recipient_arguments_are_ignored() -> None:
    assert resolve_recipients(['', '  ', 'x@example.com'], {}) == ['x@example.com']


@pytest.mark.parametrize('domain', ['', 'a@b', 'a b'])
def test_resolve_rejects_invalid_default_domain(domain: str) -> None:
    with pytest.raises(ValueError):
        resolve_recipients(['x'], {}, default_domain=domain)


def test_resolve_rejects_invalid_max_depth() -> None:
    with pytest.raises(ValueError):
        resolve_recipients(['x@example.com'], {}, max_depth=0)


# --- property tests ------------------------------------------------------------

NAMES = ['a', 'b', 'c', 'd', 'e', 'f']
name_st = st.sampled_from(NAMES + ['A', 'B', 'Root', 'root'])
address_st = st.sampled_from(['x@example.org', 'y@example.org', 'x@EXAMPLE.org', 'X@example.org', 'z@z'])
odd_target_st = st.sampled_from(
    ['|/bin/cat', '"|/bin/cat -v"', '/var/mail/box', ':include:/x', '\\a', '"b"', '@', 'u@', '', ' ']
)
target_st = st.one_of(name_st, address_st, odd_target_st)
graph_st = st.dictionaries(
    st.sampled_from(NAMES + ['root']),
    st.lists(target_st, min_size=0, max_size=5),
    max_size=len(NAMES) + 1,
)
clean_graph_st = st.dictionaries(
    st.sampled_from(NAMES + ['root']),
    st.lists(st.one_of(name_st, address_st), min_size=1, max_size=5),
    max_size=len(NAMES) + 1,
)
recipients_st = st.lists(st.one_of(name_st, address_st, odd_target_st), max_size=6)


def _dedup_key(address: str) -> str:
    local_part, _, domain = address.rpartition('@')
    return f'{local_part}@{domain.lower()}'


@HYP_SETTINGS
@given(
    graph=graph_st,
    recipients=recipients_st,
    default_domain=st.sampled_from([None, 'example.net']),
    max_depth=st.integers(min_value=1, max_value=25),
)
def test_property_resolve_terminates_with_addresses_or_aliases_error(
    graph: dict[str, list[str]],
    recipients: list[str],
    default_domain: Optional[str],
    max_depth: int,
) -> None:
    try:
        result = resolve_recipients(recipients, graph, default_domain=default_domain, max_depth=max_depth)
    except AliasesError:
        return
    assert all(isinstance(address, str) and '@' in address for address in result)
    assert len({_dedup_key(address) for address in result}) == len(result)


@HYP_SETTINGS
@given(graph=clean_graph_st, recipients=st.lists(st.one_of(name_st, address_st), max_size=6))
def test_property_resolve_never_drops_reachable_addresses(
    graph: dict[str, list[str]], recipients: list[str]
) -> None:
    result = resolve_recipients(recipients, graph, default_domain='example.net', max_depth=len(graph) + 1)

    seen_keys: set[str] = set()
    local_spellings: set[str] = set()
    expected: set[str] = set()
    todo = list(recipients)
    while todo:
        target = todo.pop()
        if '@' in target:
            expected.add(_dedup_key(target))
            continue
        local_spellings.add(target)
        if target.lower() not in seen_keys:
            seen_keys.add(target.lower())
            todo.extend(graph.get(target.lower(), []))
    allowed_local = {_dedup_key(f'{name}@example.net') for name in local_spellings}
    result_keys = {_dedup_key(address) for address in result}
    assert expected <= result_keys
    assert result_keys <= expected | allowed_local
    # a name without an alias must be delivered to (qualified), never dropped
    for name in local_spellings:
        if name.lower() not in graph:
            assert _dedup_key(f'{name}@example.net') in result_keys


@HYP_SETTINGS
@given(graph=clean_graph_st, recipients=st.lists(name_st, min_size=1, max_size=6))
def test_property_unresolvable_error_lists_only_local_names(
    graph: dict[str, list[str]], recipients: list[str]
) -> None:
    try:
        result = resolve_recipients(recipients, graph, max_depth=len(graph) + 1)
    except UnresolvableRecipientError as exc:
        assert exc.names
        assert all('@' not in name for name in exc.names)
    else:
        assert all('@' in address for address in result)


@HYP_SETTINGS
@given(graph=clean_graph_st)
def test_property_render_and_parse_round_trip(graph: dict[str, list[str]]) -> None:
    lines = []
    for name, targets in graph.items():
        # spread the targets over continuation lines to exercise those too
        lines.append(f'{name.upper()}: {targets[0]},')
        lines.extend(f'    {target},' for target in targets[1:])
        lines.append('# comment')
    assert parse_aliases('\n'.join(lines) + '\n') == graph


TEXT_TOKENS = list('ab@|/:"\\,# \t\r\n') + [':include:', 'a: ', '\n  ']


def _token_text(max_tokens: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(TEXT_TOKENS), max_size=max_tokens).map(''.join)


@HYP_SETTINGS
@given(
    text=_token_text(40),
    files=st.dictionaries(st.sampled_from(['a', 'b', '/x', '']), _token_text(15), max_size=3),
)
def test_property_parse_raises_only_aliases_error(text: str, files: dict[str, str]) -> None:
    def loader(path: str) -> str:
        try:
            return files[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    for include_loader in (None, loader):
        try:
            aliases = parse_aliases(text, include_loader=include_loader)
        except AliasesError:
            continue
        assert all(name and name == name.lower() for name in aliases)
        for targets in aliases.values():
            assert all(target and target == target.strip() for target in targets)
            if include_loader is None:
                assert targets
        try:
            resolve_recipients(list(aliases), aliases, default_domain='example.net')
        except AliasesError:
            pass
