"""Plugin signals. PuzzlePluginSystem is optional: without it ``registry`` is None and nothing fires.

Receivers are called ``receiver(sender, msg=..., send_result=...)``; a
``delivery_failed`` receiver returning ``MQAction.DISCARD`` drops the message.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .protocols import SignalRegistry

__all__ = [
    'MQAction',
    'MQSignal',
    'PluginManager',
    'fire_delivery_failed',
    'fire_delivery_successful',
    'new_registry',
]
# ``registry`` (the default signal registry) is provided lazily by __getattr__ below.

ENTRY_POINT_GROUP = 'mailqueue.plugins'
log = logging.getLogger('mailqueue.plugins')


class MQSignal:
    # Plain strings: blinker namespaces key signals by name.
    delivery_successful = 'mq:delivery_successful'
    delivery_failed = 'mq:delivery_failed'


class MQAction(enum.Enum):
    DISCARD = 'discard'


def new_registry() -> Optional[SignalRegistry]:
    """A fresh signal registry, or None when PuzzlePluginSystem is not installed."""
    try:
        from schwarz.puzzle_plugins import SignalRegistry
    except ImportError:
        return None
    return SignalRegistry()


class _LazyRegistry:
    """Module attribute ``registry`` without importing blinker at start-up."""

    _value: Optional[SignalRegistry] = None
    _loaded = False

    def get(self) -> Optional[SignalRegistry]:
        if not self._loaded:
            self._value = new_registry()
            self._loaded = True
        return self._value


_registry_holder = _LazyRegistry()


def __getattr__(name: str) -> Any:
    if name == 'registry':
        return _registry_holder.get()
    raise AttributeError(name)


def _receivers_exist(plugins: SignalRegistry, signal: str) -> bool:
    has_receivers = getattr(plugins, 'has_receivers', None)
    return bool(has_receivers and has_receivers(signal))


def fire_delivery_successful(plugins: Optional[SignalRegistry], msg: object, send_result: object) -> None:
    if plugins is None or not _receivers_exist(plugins, MQSignal.delivery_successful):
        return
    try:
        plugins.call_plugins(MQSignal.delivery_successful, signal_kwargs={'msg': msg, 'send_result': send_result})
    except Exception:
        log.exception('plugin failed in delivery_successful (ignored)')


def fire_delivery_failed(plugins: Optional[SignalRegistry], msg: object, send_result: object) -> bool:
    """True when a plugin asked to discard the message."""
    if plugins is None or not _receivers_exist(plugins, MQSignal.delivery_failed):
        return False
    try:
        results = plugins.call_plugins(MQSignal.delivery_failed,
                                       signal_kwargs={'msg': msg, 'send_result': send_result}) or ()
    except Exception:
        log.exception('plugin failed in delivery_failed (ignored)')
        return False
    return any(value is MQAction.DISCARD for _, value in results)


def plugins_declared(group: str = ENTRY_POINT_GROUP) -> bool:
    """Cheap check whether any installed distribution declares entry points in ``group``."""
    import os
    import sys

    marker = f'[{group}]'
    for entry in sys.path:
        try:
            with os.scandir(entry or '.') as it:
                names = [e.name for e in it if e.name.endswith(('.dist-info', '.egg-info'))]
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(entry or '.', name, 'entry_points.txt'), encoding='utf-8') as fp:
                    if marker in fp.read():
                        return True
            except OSError:
                continue
    return False


class PluginManager:
    """Loads plugins from the ``mailqueue.plugins`` entry points and terminates them at exit."""

    def __init__(self, enabled: Optional[Iterable[str]] = None, registry: Optional[SignalRegistry] = None) -> None:
        self.enabled = tuple(enabled) if enabled is not None else ('*',)
        self.registry = registry
        self._loader: Any = None

    def load(self) -> Optional[SignalRegistry]:
        """Initialise the enabled plugins; returns the registry (None without PuzzlePluginSystem)."""
        if not self.enabled or not plugins_declared():
            # Nothing to load: skip importing importlib.metadata (~10 ms per mq-sendmail call).
            return None
        try:
            from schwarz.puzzle_plugins import PluginLoader
        except ImportError:
            if self.enabled and self.enabled != ('*',):
                log.warning('plugins %s configured but PuzzlePluginSystem is not installed '
                            '(pip install mailqueue-runner[plugins])', ', '.join(self.enabled))
            return None
        if self.registry is None:
            self.registry = _registry_holder.get()
        self._loader = PluginLoader(ENTRY_POINT_GROUP, enabled_plugins=self.enabled, log=log)
        self._loader.init()
        self._loader.initialize_plugins(self.registry)
        return self.registry

    def terminate(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.terminate_all_activated_plugins()

    def __enter__(self) -> PluginManager:
        self.load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()
