"""One name resolver for every extension point: detectors, strategies and harnesses.

An extension is named in the config by its registry name (``adwin``, ``replay``, ``mnist``) or by a
dotted path ``package.module:ClassName`` to a class outside raydrift. :func:`resolve` turns either into
the class, and every way that can go wrong (an unknown name, a module that is missing, does not
compile or raises while it is imported, a malformed path, an attribute that is not a subclass of the
extension's base class) into one :class:`~raydrift.errors.ConfigError` line naming the config key,
what is wrong and what to do.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Mapping
from typing import TypeVar

from raydrift.errors import ConfigError

__all__ = ["resolve"]

T = TypeVar("T")

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def resolve(
    name: str,
    registry: Mapping[str, str],
    base: type[T],
    where: str,
    base_name: str | None = None,
    cutoff: float = 0.6,
) -> type[T]:
    """The class ``name`` stands for: ``registry[name]`` or the dotted path ``name`` itself.

    Parameters
    ----------
    name : str
        A registry name or ``package.module:ClassName``.
    registry : Mapping[str, str]
        Registry name -> ``module:Class``.
    base : type
        The class every extension of this kind subclasses.
    where : str
        The config key, as the message names it (e.g. ``"continual_learning.strategy"``).
    base_name : str, optional
        The base class's public name in messages (default: its module and qualified name).
    cutoff : float
        How close a misspelt name must be to a registered one to be suggested.

    Raises
    ------
    ConfigError
        One line naming ``where``, ``name``, what is wrong and what to do.
    """
    what = f"{where} '{name}'"
    path = registry.get(name, name)
    if not isinstance(path, str) or ":" not in path:
        close = difflib.get_close_matches(str(name), list(registry), n=1, cutoff=cutoff)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown {what}: {hint}use a registered name ({', '.join(sorted(registry))}) "
            "or a dotted path 'package.module:ClassName'"
        )
    module_name, _, attr = path.partition(":")
    if not _MODULE.fullmatch(module_name) or not _ATTR.fullmatch(attr):
        raise ConfigError(
            f"{what} is not a valid dotted path: write 'package.module:ClassName' "
            "(an absolute module name, then one class name)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{what}: cannot import module '{module_name}' ({exc.msg}); "
            "check the path and that the package is installed or on PYTHONPATH"
        ) from None
    except SyntaxError as exc:
        raise ConfigError(
            f"{what}: module '{module_name}' has a syntax error ({exc.filename}, line {exc.lineno}: {exc.msg}); "
            "fix the module"
        ) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module failed while importing
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ConfigError(
            f"{what}: importing module '{module_name}' raised {type(exc).__name__}"
            f"{': ' + detail if detail else ''}; fix the module (it must import without side effects)"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"{what}: module '{module_name}' has no attribute '{attr}'")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        public = base_name or f"{base.__module__}.{base.__qualname__}"
        raise ConfigError(f"{what}: '{attr}' is not a subclass of {public}")
    return cls
