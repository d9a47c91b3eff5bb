"""Plugins: tasks, methods and models of your own, for the command line.

Two ways in:

- ``--plugin MODULE_OR_PATH`` (:func:`load_plugin`): a dotted module name (found from the
  current folder too) or a path to a ``.py`` file, imported before the command line is read;
  what it registers (:func:`~pyro_attention.data.register_task`,
  :func:`~pyro_attention.infer.register_method`,
  :func:`~pyro_attention.models.register_model`) can be named in ``--task``, ``--methods`` and
  ``compare <model>``, and is listed by ``--help``.
- entry points of an installed package (:func:`load_entry_points`), in the groups
  :data:`ENTRY_POINT_GROUPS`::

      [project.entry-points."pyro_attention.tasks"]
      my-task = "my_pkg.tasks:MyTask"            # an AlignmentTask subclass, or a module
      [project.entry-points."pyro_attention.methods"]
      my-method = "my_pkg.methods:MyMethod"      # a method class or factory, or a module
      [project.entry-points."pyro_attention.models"]
      my-model = "my_pkg.models:build"           # build(options) -> ModelSetup, or a module

  An entry point that names a module registers by being imported; one that names an object
  is registered under the entry point's name. A broken entry point is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from pyro_attention.data.alignment_tasks import AlignmentTask, register_task
from pyro_attention.infer.registry import get_method, method_names, register_method
from pyro_attention.models.registry import get_model, model_names, register_model

__all__ = [
    "ENTRY_POINT_GROUPS",
    "PluginError",
    "is_plugin_path",
    "load_entry_points",
    "load_plugin",
    "plugin_argument",
]

#: entry-point groups read by :func:`load_entry_points`
ENTRY_POINT_GROUPS = ("pyro_attention.tasks", "pyro_attention.methods", "pyro_attention.models")


class PluginError(ValueError):
    """A plugin could not be loaded: its message names the plugin and the cause."""


#: files loaded by :func:`load_plugin` (absolute path -> module), each executed once
_FILES: dict[str, ModuleType] = {}
#: whether :func:`load_entry_points` ran in this process, and what it found
_ENTRY_POINTS: dict[str, Any] | None = None


def is_plugin_path(name: str) -> bool:
    """Whether ``--plugin name`` names a file (a ``.py`` name or a path) and not a module."""
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return name.endswith(".py") or any(s in name for s in separators)


def plugin_argument(name: str) -> str:
    """``name`` as another process in another folder can load it: a file's absolute path, or
    the dotted module name itself."""
    return str(Path(name).expanduser().resolve()) if is_plugin_path(name) else name


def load_plugin(name_or_path: str) -> ModuleType:
    """Import the plugin ``name_or_path``: a dotted module name or a path to a ``.py`` file.

    A file is executed once per process (loading it again returns the same module), as
    ``import`` does for a module; it is registered in :data:`sys.modules` under its stem (or
    a unique name when another module holds the stem). A dotted name is searched on
    :data:`sys.path` and in the current folder.

    :raises PluginError: no such file or module, or its import raised; the message names
        ``name_or_path`` and the cause.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise PluginError(f"{name_or_path!r}: name a module (my_pkg.tasks) or a .py file")
    try:
        if is_plugin_path(name_or_path):
            return _load_file(name_or_path)
        if os.getcwd() not in sys.path:  # console scripts do not search the current folder
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(name_or_path)
    except (Exception, SystemExit) as err:
        raise PluginError(f"{name_or_path}: {type(err).__name__}: {err}") from err


def _load_file(name: str) -> ModuleType:
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no file {name}")
    key = str(path.resolve())
    if key in _FILES:
        return _FILES[key]
    module_name = path.stem
    taken = sys.modules.get(module_name)
    if not module_name.isidentifier() or (
        taken is not None and getattr(taken, "__file__", None) != key
    ):
        module_name = "pyro_attention_plugin_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, key)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    _FILES[key] = module
    return module


def load_entry_points(*, warn: TextIO | None = None, reload: bool = False) -> dict[str, Any]:
    """Load the entry points of the groups :data:`ENTRY_POINT_GROUPS`, once per process.

    A task entry point names an :class:`~pyro_attention.data.AlignmentTask` subclass (registered
    with ``register_task``; its ``name`` must be the entry point's) or a module; a method entry
    point a method class or factory (registered with ``register_method`` under the entry
    point's name) or a module; a model entry point a function ``build(options) -> ModelSetup``
    (registered with ``register_model``, its docstring's first line as the help) or a module.
    An entry point that fails to load or register is skipped with a warning on ``warn``
    (default ``sys.stderr``) naming the distribution, the entry point and the error.

    :param reload: load them again (e.g. after installing a package in this process).
    :returns: ``{"loaded": ["group:name", ...], "failed": {"group:name": "error"}}``.
    """
    global _ENTRY_POINTS
    if _ENTRY_POINTS is not None and not reload:
        return _ENTRY_POINTS
    stream = sys.stderr if warn is None else warn
    report: dict[str, Any] = {"loaded": [], "failed": {}}
    for group in ENTRY_POINT_GROUPS:
        try:
            points = list(importlib.metadata.entry_points(group=group))
        except Exception as err:  # a broken distribution's metadata
            report["failed"][group] = f"{type(err).__name__}: {err}"
            print(f"warning: cannot read the entry points {group}: {err}", file=stream)
            continue
        for point in points:
            key = f"{group}:{point.name}"
            try:
                _REGISTER[group](point.name, point.load())
            except Exception as err:
                report["failed"][key] = f"{type(err).__name__}: {err}"
                dist = getattr(point, "dist", None)
                owner = f" of {dist.name} {dist.version}" if dist is not None else ""
                print(
                    f"warning: skipped the entry point {point.name} = {point.value} "
                    f"[{group}]{owner}: {type(err).__name__}: {err}",
                    file=stream,
                )
            else:
                report["loaded"].append(key)
    _ENTRY_POINTS = report
    return report


def _register_task(name: str, obj: Any) -> None:
    if isinstance(obj, ModuleType):  # importing it registered its tasks
        return
    if not (isinstance(obj, type) and issubclass(obj, AlignmentTask)):
        raise TypeError(f"expected an AlignmentTask subclass or a module, got {obj!r}")
    if getattr(obj, "name", None) != name:
        raise ValueError(
            f"the task class {obj.__name__} is named {getattr(obj, 'name', None)!r}; name the "
            f"entry point after it or set name = {name!r}"
        )
    register_task(obj)


def _register_method(name: str, obj: Any) -> None:
    if isinstance(obj, ModuleType):
        return
    if not callable(obj):
        raise TypeError(f"expected a method class or factory, or a module, got {obj!r}")
    if name in method_names() and inspect.isclass(obj) and type(get_method(name)) is obj:
        return  # the module registered it already when it was imported
    register_method(name, obj)


def _register_model(name: str, obj: Any) -> None:
    if isinstance(obj, ModuleType):
        return
    if not callable(obj):
        raise TypeError(f"expected a function build(options) -> ModelSetup, got {obj!r}")
    if name in model_names() and get_model(name).build is obj:
        return
    doc = inspect.getdoc(obj) or ""
    register_model(name, obj, help=doc.strip().split("\n\n")[0])


_REGISTER: dict[str, Callable[[str, Any], None]] = {
    "pyro_attention.tasks": _register_task,
    "pyro_attention.methods": _register_method,
    "pyro_attention.models": _register_model,
}
