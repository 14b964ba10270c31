"""Loading plugins from the `charter` entry-point group, and the registries they fill."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from charter import hookspecs


@dataclass
class PluginInfo:
    """What `charter plugins` shows for one plugin."""

    name: str
    module: str
    distribution: str | None
    registers: list[str] = field(default_factory=list)


class _Loaded:
    def __init__(self) -> None:
        self.manager = pluggy.PluginManager("charter")
        self.manager.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self.errors: list[str] = []
        for ep in entry_points(group="charter"):
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not break the CLI for everything else
                self.errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}")
                continue
            if self.manager.is_registered(module):
                continue
            self.manager.register(module, name=ep.name)
            dist = ep.dist.name if ep.dist is not None else None
            self.infos.append(PluginInfo(ep.name, ep.value, dist))
        for message in self.errors:
            print(f"charter: warning: {message}", file=sys.stderr)


@functools.lru_cache(maxsize=1)
def _loaded() -> _Loaded:
    return _Loaded()


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every installed plugin registered."""
    return _loaded().manager


def register_plugin(module: Any, name: str | None = None) -> None:
    """Register a plugin object at run time (useful in tests and notebooks)."""
    _loaded().manager.register(module, name=name)
    _clear_registries()


def unregister_plugin(module: Any) -> None:
    """Undo `register_plugin` (tests register a plugin for one test only)."""
    _loaded().manager.unregister(module)
    _clear_registries()


def _clear_registries() -> None:
    for reader in (backend_factories, get_label_methods, get_exporters, get_trainers):
        reader.cache_clear()


# The hooks `charter plugins` names by hook (backends are listed by prefix instead).
_LISTED_HOOKS = (
    "register_commands",
    "litellm_setup",
    "register_constitution_dirs",
    "register_prompt_dirs",
)


def plugin_infos() -> list[PluginInfo]:
    """Installed plugins and what each one registers."""
    loaded = _loaded()
    prefixes = {}
    for plugin in loaded.manager.get_plugins():
        found: list[str] = []
        impl = getattr(plugin, "register_backends", None)
        if impl is not None:
            impl(lambda prefix, _f, found=found: found.append(f"backend {prefix or '<any LiteLLM model>'}"))
        impl = getattr(plugin, "register_label_methods", None)
        if impl is not None:
            impl(lambda name, _m, found=found: found.append(f"label method {name}"))
        impl = getattr(plugin, "register_exporters", None)
        if impl is not None:
            impl(lambda e, found=found: found.append(f"exporter {e.dataset} --schema {e.schema}"))
        impl = getattr(plugin, "register_trainers", None)
        if impl is not None:
            impl(lambda kind, _s, found=found: found.append(f"trainer {kind}"))
        for hook in _LISTED_HOOKS:
            if hasattr(plugin, hook):
                found.append(hook.removeprefix("register_").replace("_", " "))
        prefixes[loaded.manager.get_name(plugin)] = found
    return [PluginInfo(i.name, i.module, i.distribution, prefixes.get(i.name, [])) for i in loaded.infos] + [
        PluginInfo(f"error: {e}", "", None) for e in loaded.errors
    ]


@functools.lru_cache(maxsize=1)
def backend_factories() -> dict[str, hookspecs.BackendFactory]:
    """Backend factories by model-string prefix, from every plugin."""
    found: dict[str, hookspecs.BackendFactory] = {}
    plugin_manager().hook.register_backends(register=found.__setitem__)
    return found


def extra_dirs(kind: str) -> list[Path]:
    """Directories plugins add for `constitutions` or `prompts`."""
    hook = getattr(plugin_manager().hook, f"register_{kind.rstrip('s')}_dirs")
    return [Path(p) for group in hook() for p in group]


def call_litellm_setup(litellm: Any) -> None:
    """Let plugins configure litellm right after its (lazy) import."""
    plugin_manager().hook.litellm_setup(litellm=litellm)


def _register_once(found: dict[str, Any], what: str) -> Any:
    # Two plugins claiming one name would make the winner depend on load order: refuse it.
    def register(name: str, value: Any) -> None:
        if name in found and found[name] is not value:
            raise ValueError(f"two plugins register the {what} {name!r}")
        found[name] = value

    return register


@functools.lru_cache(maxsize=1)
def get_label_methods() -> dict[str, Any]:
    """Labeling methods by name (`charter label --method NAME`), from every plugin; the core's own
    `logprobs` and `cot` register through its default plugin."""
    found: dict[str, Any] = {}
    plugin_manager().hook.register_label_methods(register=_register_once(found, "label method"))
    return found


@functools.lru_cache(maxsize=1)
def get_exporters() -> dict[str, dict[str, Any]]:
    """Export shapes by dataset, then schema (`charter export --dataset D --schema S`), from every
    plugin; the core's own (`charter.exporters.CORE_EXPORTERS`) register through its default plugin."""
    found: dict[str, dict[str, Any]] = {}

    def register(exporter: Any) -> None:
        _register_once(found.setdefault(exporter.dataset, {}), f"{exporter.dataset} export schema")(
            exporter.schema, exporter
        )

    plugin_manager().hook.register_exporters(register=register)
    return found


@functools.lru_cache(maxsize=1)
def get_trainers() -> dict[str, Any]:
    """Trainer specs by kind (`charter train KIND`), from every plugin (charter-trl's sft, reward,
    ppo, dpo, ... register the same way)."""
    found: dict[str, Any] = {}
    plugin_manager().hook.register_trainers(register=_register_once(found, "trainer"))
    return found
