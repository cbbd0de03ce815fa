"""One configuration system: typed dataclasses -> command-line options and ``--set key=value``.

Every CLI command and every experiment describes its settings as a dataclass whose fields carry
type hints; this module turns the hints into argparse options and parses ``key=value``
overrides with the *same* rules, so a value means the same thing wherever it is typed. Torch-free.

How to add an option to a command (the whole recipe)::

    @dataclass
    class SampleConfig:
        checkpoint: str = option(help="checkpoint directory")          # no default: required
        n_samples: int = option(1000, short="-n", deprecated=("--num-samples",))
        solver: Literal["euler", "rk4"] = option("rk4")                # -> choices
        png: Path | None = option(None, help="also write a PNG")       # Optional[T]: "none" -> None
        ema: bool = option(True, help="use the EMA weights")           # -> --ema / --no-ema

    def add_arguments(parser):                         # in the command module
        add_dataclass_arguments(parser, SampleConfig)

    def run(args):
        config = from_namespace(SampleConfig, args)

The option is ``--`` + the field name with ``_`` -> ``-`` unless ``flag=`` says otherwise; the
namespace attribute is always the field name. Types understood (on the command line and in
:func:`apply_overrides` alike):

=========================  ==========================================================
``int`` / ``float`` / ``str``  the text, converted (``10_000`` and ``1e-3`` work)
``bool``                  ``--x`` / ``--no-x``; as a value ``true/false/1/0/yes/no/on/off``
``Path``                  a path
``Literal[a, b]``         one of the values (argparse choices)
``T | None``              ``T``, or ``none`` / ``null`` for ``None``
``A | B``                 ``A`` if the text parses as one, else ``B`` (in order)
``bool | T``              ``--x`` alone is ``True``, ``--x VALUE`` is ``T`` (e.g. ``--resume [PATH]``)
``tuple[T, ...]``         comma-separated ``T`` s (``0,0.5,1``) or a JSON list; ``nargs="+"``
                          options take space-separated tokens too; bare ``tuple`` keeps JSON types
``tuple[A, B]``           exactly two comma-separated values (or a JSON list)
``dict``                  a JSON object (anything else is an error naming the key)
``Any``                   JSON if the text is JSON, else the text
=========================  ==========================================================

Errors are ``ValueError`` s naming the key (or option) and the expected form; on the command
line they become argparse errors (exit status 2). Old option spellings stay accepted through
``deprecated=(...)`` and warn with a :class:`FutureWarning`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal, Union

__all__ = ["option", "add_dataclass_arguments", "from_namespace", "parse_value", "apply_overrides", "split_overrides",
           "config_keys", "config_to_dict"]

_META = "causal_delta.option"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("none", "null")


def option(default: Any = dataclasses.MISSING, *, help: str = "", default_factory: Any = dataclasses.MISSING,
           choices: Sequence[Any] | None = None, flag: str | None = None, short: str | None = None,
           metavar: str | None = None, nargs: str | None = None, repeat: bool = False, group: str | None = None,
           positional: bool = False, deprecated: Sequence[str] = (), cli: bool = True, required: bool = False) -> Any:
    """A dataclass field with command-line metadata (``dataclasses.field`` underneath).

    Args:
        default: the default; omitted (and no ``default_factory``) makes the option required.
        help: one line for ``--help``; ``metavar`` its placeholder.
        choices: allowed values of a ``str`` field (prefer a ``Literal`` annotation).
        flag: the long option (default ``--`` + name with ``-``); ``short`` e.g. ``"-n"``. The
            namespace attribute is the field name whatever the flag.
        nargs: ``"+"`` lets a ``tuple`` option take space-separated tokens (commas still work).
        repeat: a ``tuple[T, ...]`` option given once per element (``--set a=1 --set b=2``).
        group: options sharing a group name are mutually exclusive; when one of them is
            ``required``, exactly one of the group must be given.
        positional: a positional argument instead of an option.
        deprecated: old spellings of a value option: accepted, hidden, warning when used.
        cli: ``False`` keeps the field off the command line (still settable in code / ``--set``).
        required: the option must be given although the field has a default (for the library).
    """
    meta = {_META: dict(help=help, choices=choices, flag=flag, short=short, metavar=metavar, nargs=nargs,
                        repeat=repeat, group=group, positional=positional, deprecated=tuple(deprecated), cli=cli,
                        required=required)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- types


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _is_path(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, PurePath)


def _is_sequence(hint: Any) -> bool:
    return hint in (tuple, list) or typing.get_origin(hint) in (tuple, list)


def _describe(hint: Any) -> str:
    """The expected form of ``hint`` in words, for error messages and metavars."""
    if hint is Any:
        return "any JSON value or text"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a JSON object"}
    if _is_path(hint):
        return "a path"
    if hint in words or origin is dict:
        return words[origin or hint]
    if _is_sequence(hint):
        if args and (len(args) != 2 or args[1] is not Ellipsis):
            return f"{len(args)} comma-separated values ({', '.join(_describe(a) for a in args)})"
        inner = _describe(args[0]) if args else "values"
        return f"comma-separated values ({inner}) or a JSON list"
    return getattr(hint, "__name__", str(hint))


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def _sequence(hint: Any, items: list, key: str, *, text: bool = False) -> Any:
    """``items`` (texts when ``text``, else JSON-decoded values) as the sequence type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    kind = list if (hint is list or origin is list) else tuple
    if not args:
        elems = [Any] * len(items)
    elif origin is list or (len(args) == 2 and args[1] is Ellipsis):
        elems = [args[0]] * len(items)
    else:
        if len(items) != len(args):
            raise ValueError(f"{key}: expected {_describe(hint)}, got {len(items)} value(s)")
        elems = list(args)
    convert = parse_value if text else _coerce
    return kind(convert(h, v, key=key) for h, v in zip(elems, items))


def _coerce(hint: Any, value: Any, *, key: str) -> Any:
    """``value`` decoded from JSON (a number, string, list, ...) as ``hint``."""
    if hint is Any:
        return _tuplify(value)
    if isinstance(value, list):
        for arg in typing.get_args(hint) if _is_union(hint) else (hint,):
            if _is_sequence(arg):
                return _sequence(arg, value, key)
        raise ValueError(f"{key}: expected {_describe(hint)}, got the list {value!r}")
    if isinstance(value, dict):
        if hint is dict or typing.get_origin(hint) is dict:
            return value
        raise ValueError(f"{key}: expected {_describe(hint)}, got the object {value!r}")
    if isinstance(value, str):
        return parse_value(hint, value, key=key)
    return parse_value(hint, json.dumps(value), key=key)  # numbers, booleans, null: by their JSON text


def parse_value(hint: Any, text: str, *, key: str = "value") -> Any:
    """``text`` parsed as the type ``hint`` (see the module's table); ``key`` names it in errors.

    Raises:
        ValueError: ``"{key}: expected {form}, got {text!r}"``.
    """
    text = str(text)
    s = text.strip()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        try:
            return _tuplify(json.loads(s))
        except json.JSONDecodeError:
            return text
    if _is_union(hint):
        if type(None) in args and s.lower() in _NONE:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(arg, text, key=key)
            except ValueError:
                continue
        raise ValueError(f"{key}: expected {_describe(hint)}, got {text!r}")
    if origin is Literal:
        for v in args:
            if str(v) == s:
                return v
        raise ValueError(f"{key}: invalid choice {text!r} (choose from {', '.join(map(str, args))})")
    if hint is bool:
        if s.lower() in _TRUE + _FALSE:
            return s.lower() in _TRUE
    elif hint in (int, float):
        with contextlib.suppress(ValueError):
            return hint(s)
    elif hint is str:
        return text
    elif _is_path(hint):
        if s:
            return hint(s)
    elif hint is dict or origin is dict:
        try:
            value = json.loads(s)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{key}: expected a JSON object such as '{{\"rho\": 0.5}}', got {text!r} ({exc})") \
                from None
        if isinstance(value, dict):
            return value
    elif _is_sequence(hint):
        if not s.startswith("["):
            return _sequence(hint, [p.strip() for p in s.split(",") if p.strip()], key, text=True)
        try:
            return _sequence(hint, json.loads(s), key)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{key}: expected {_describe(hint)}, got {text!r} ({exc})") from None
    else:
        raise TypeError(f"{key}: no parser for the annotation {hint!r}")
    raise ValueError(f"{key}: expected {_describe(hint)}, got {text!r}")


# ----------------------------------------------------------------------------- argparse


def _hints(cls: type) -> dict[str, Any]:
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"expected a dataclass, got {cls!r}")
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default  # MISSING when the field has none


class _Parse(argparse.Action):
    """Stores the value parsed by :func:`parse_value` (so the CLI and ``--set`` agree)."""

    def __init__(self, option_strings, dest, hint=str, repeat=False, warn=None, **kwargs):
        self.hint, self.repeat, self.warn = hint, repeat, warn
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.warn:  # a deprecated spelling: one FutureWarning line attributed to the tool, not argparse
            warnings.warn_explicit(self.warn, FutureWarning, filename="causal-delta", lineno=0, module=__name__)
        if values is True:  # a bool | T option given without its value
            value = True
        else:
            text = ",".join(values) if isinstance(values, list) else values
            # a repeated option holds one element per occurrence: parse it by the element type
            hint = typing.get_args(self.hint)[0] if self.repeat else self.hint
            try:
                value = parse_value(hint, text, key=option_string or self.dest)
            except ValueError as exc:
                raise argparse.ArgumentError(self, str(exc).partition(": ")[2] or str(exc)) from None
        if self.repeat:
            value = (*(getattr(namespace, self.dest, None) or ()), value)
        setattr(namespace, self.dest, value)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add one option per field of dataclass ``cls`` to ``parser`` (see the module docstring).

    Returns ``parser``. The namespace attribute of each option is the field's name, so
    :func:`from_namespace` rebuilds the dataclass.
    """
    hints = _hints(cls)
    groups: dict[str, Any] = {}
    # A group with a ``required`` member needs exactly one of its options (argparse's required group).
    required_groups = {(f.metadata.get(_META) or {}).get("group") for f in dataclasses.fields(cls)
                       if (f.metadata.get(_META) or {}).get("required")} - {None}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META) or option().metadata[_META]
        if not f.init or not meta["cli"]:
            continue
        hint, default = hints[f.name], _default(f)
        target = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group(
                    required=meta["group"] in required_groups)
            target = groups[meta["group"]]
        kwargs: dict[str, Any] = {"help": meta["help"]}
        args = typing.get_args(hint)
        lit = [a for a in (args if _is_union(hint) else (hint,)) if typing.get_origin(a) is Literal]
        choices = meta["choices"] or (tuple(str(v) for v in typing.get_args(lit[0])) if lit else None)
        if hint is bool and not meta["positional"]:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            kwargs.update(action=_Parse, hint=hint, choices=choices, metavar=meta["metavar"])
            if not choices and meta["metavar"] is None:
                kwargs["metavar"] = _metavar(hint, (meta["flag"] or f.name).lstrip("-").replace("-", "_"))
            if meta["repeat"]:
                kwargs["repeat"] = True
            if _is_union(hint) and bool in args:  # --x alone means True, --x VALUE a value
                kwargs.update(nargs="?", const=True)
            elif meta["nargs"]:
                kwargs["nargs"] = meta["nargs"]
            if meta["group"] and meta["group"] in required_groups:
                kwargs["default"] = None if default is dataclasses.MISSING else default
            elif default is dataclasses.MISSING or meta["required"]:
                if not meta["positional"]:  # no "(default: ...)" in --help for a value that must be given
                    kwargs.update(required=True, default=argparse.SUPPRESS)
            else:
                kwargs["default"] = default
        if meta["positional"]:
            if choices:
                kwargs.pop("metavar", None)
            target.add_argument(f.name, **kwargs)
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        target.add_argument(*([meta["short"]] if meta["short"] else []), flag, dest=f.name, **kwargs)
        if meta["deprecated"] and kwargs["action"] is not _Parse:
            raise TypeError(f"{cls.__name__}.{f.name}: deprecated spellings are for options taking a value")
        rest = {k: v for k, v in kwargs.items() if k not in ("help", "default", "required")}
        for old in meta["deprecated"]:  # hidden from --help, same parsing, and a warning
            target.add_argument(old, dest=f.name, **rest, help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                                warn=f"{old} is deprecated; use {flag}")
    return parser


def _metavar(hint: Any, name: str) -> str:
    if _is_union(hint):
        inner = [a for a in typing.get_args(hint) if a not in (type(None), bool)]
        hint = inner[0] if len(inner) == 1 else hint
    if _is_sequence(hint):
        return "A,B,..."
    if _is_path(hint):
        return "PATH"
    return {dict: "JSON", int: "N", float: "X"}.get(typing.get_origin(hint) or hint, name.upper())


def from_namespace(cls: type, args: argparse.Namespace | Mapping[str, Any]):
    """The dataclass ``cls`` built from the parsed options (fields absent from ``args`` keep their default)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    known = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values}
    return cls(**known)


# ----------------------------------------------------------------------------- --set key=value


def config_keys(cls_or_config: Any) -> list[str]:
    """The settable keys (``init`` fields) of a config dataclass or instance, sorted."""
    return sorted(f.name for f in dataclasses.fields(cls_or_config) if f.init)


def split_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """``["key=value", ...]`` as ``[(key, text), ...]``; a missing ``=`` is a ValueError."""
    out = []
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out.append((key.strip(), text))
    return out


def apply_overrides(config: Any, items: Iterable[str], *, only_known: bool = False):
    """A copy of dataclass ``config`` with ``["key=value", ...]`` applied.

    Each value is parsed by the *field's annotation* (:func:`parse_value`), never by the type
    of its current value, so ``None`` defaults and tuples parse correctly.

    Args:
        config: a dataclass instance.
        items: ``"key=value"`` strings.
        only_known: skip keys the dataclass lacks instead of refusing them (``reproduce all``
            checks the keys against every experiment first).

    Raises:
        ValueError: an item without ``=``; an unknown key (the message lists the valid keys);
            a value that does not parse as the field's type (naming key and expected form).
    """
    hints = _hints(type(config))
    keys = config_keys(config)
    changes: dict[str, Any] = {}
    for key, text in split_overrides(items):
        if key not in keys:
            if only_known:
                continue
            raise ValueError(f"--set {key}: unknown key for {type(config).__name__}; valid keys: {', '.join(keys)}")
        changes[key] = parse_value(hints[key], text, key=f"--set {key}")
    return dataclasses.replace(config, **changes) if changes else config


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (paths -> str, tuples -> lists), for reports."""
    from .report import to_jsonable

    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config must be a dataclass instance, got {type(config).__name__}")
    return {f.name: to_jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}
