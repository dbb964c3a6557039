"""Settings declared once: each stage's pydantic model is its recipe section, its Python API argument and the
source of its command-line flags.

A settings class derives from :class:`Settings`; each field carries its type, default, bounds and a
``description`` (which becomes the flag's help), and optionally a :class:`Cli` marker in ``Annotated``
metadata for what the command line needs beyond that (another flag name, former spellings, a parser for
command-line text, how lists are written)::

    class CollectSettings(Settings):
        samples: int = Field(10, ge=1, description="sampled answers per question, k")
        early_stop: Annotated[bool, Cli(flag="--all-samples", negate=True)] = Field(True, description=...)

:func:`add_arguments` turns a settings class into argparse options (every default ``argparse.SUPPRESS``, so
that only what the user typed reaches :func:`from_args`); :func:`from_args` lays the typed values over a
base (a recipe's section, or the defaults) and validates the result with the model, turning any problem
into one :class:`~editor.errors.InputError` that names the flag. Validation lives on the models, so the
recipe, the API and the command line refuse the same values with the same words.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticUndefined

from .errors import InputError

S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Cli:
    """What the command line needs to know about a field beyond its type and description."""

    flag: str | None = None  # the option's name; default --field-name
    old: tuple[str, ...] = ()  # former spellings, still accepted with a deprecation message
    metavar: str | None = None
    parse: Callable[[Any], Any] | None = None  # command-line text (or list of texts) -> value, before validation
    many: Literal["comma", "repeat", "nargs"] | None = None  # how a list is written on the command line
    negate: bool = False  # a bool field whose flag switches it off (--all-samples for early_stop)
    negative: str | None = None  # an optional bool's second flag that sets False (--no-chat-template)
    hidden: bool = False  # recipe and API only: no flag


class Settings(BaseModel):
    """Base of every settings model: unknown names are errors, assignments are validated.

    Build settings from user input with :meth:`of` (or :func:`from_args`), which turn pydantic's
    ValidationError into one :class:`~editor.errors.InputError`; ``Cls(**fields)`` raises pydantic's own
    error (a ValueError), which nested validation (the recipe's sections) needs to keep its locations."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def of(cls: type[S], settings: S | Mapping[str, Any] | None = None, /, **fields: Any) -> S:
        """``settings`` (a model of this class, a mapping or None for the defaults) with ``fields`` laid over
        it, validated; a problem is one :class:`InputError` naming the setting."""
        base = dict(settings) if isinstance(settings, Mapping) else (
            settings.model_dump() if settings is not None else {})
        return validated(cls, {**base, **fields})


def validated(cls: type[S], data: Mapping[str, Any], name: Callable[[str], str] | None = None) -> S:
    """``cls(**data)``, with pydantic's errors as one InputError; ``name`` spells a field for the message."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise InputError(describe_errors(exc, name or (lambda field: field), cls)) from None


def describe_errors(exc: ValidationError, name: Callable[[str], str], cls: type) -> str:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal["))]
        field = loc[0] if loc else ""
        where = name(field) + "".join(f"[{p}]" for p in loc[1:]) if field else cls.__name__
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown setting {where}")
        else:
            problems.append(f"{where}: {message} (got {_shown(err.get('input'))})")
    return "; ".join(problems)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


# ------------------------------------------------------------------------------------------ fields
def cli_of(cls: type[Settings], field: str) -> Cli:
    for item in cls.model_fields[field].metadata:
        if isinstance(item, Cli):
            return item
    return Cli()


def flag_of(cls: type[Settings], field: str) -> str:
    return cli_of(cls, field).flag or "--" + field.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _kind(annotation: Any) -> tuple[str, Any]:
    """("bool" | "list" | "choice" | "value", detail) for a field's type."""
    inner = _strip_annotated(_unwrap_optional(_strip_annotated(annotation)))
    if inner is bool:
        return "bool", None
    if get_origin(inner) is list:
        return "list", get_args(inner)[0] if get_args(inner) else str
    if get_origin(inner) is Literal:
        return "choice", get_args(inner)
    return "value", inner


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _default_text(info) -> str:
    default = info.default
    if default is PydanticUndefined or default is None or default == [] or default == {}:
        return ""
    if isinstance(default, (list, tuple)):
        return f" (default {','.join(str(d) for d in default)})"
    return f" (default {default})"


# ---------------------------------------------------------------------------------------- argparse
class _Deprecated(argparse.Action):
    """A former spelling of a flag: says what replaced it, then stores like the current one."""

    def __init__(self, option_strings, dest, replacement: str, inner: str, const=None, **kwargs):
        self.replacement, self.inner = replacement, inner
        if inner in ("store_const", "store_true"):
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"hneurons: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        if self.inner in ("store_const", "store_true"):
            setattr(namespace, self.dest, self.const)
        elif self.inner == "append":
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        else:
            setattr(namespace, self.dest, values)


def dest_of(cls: type[Settings], field: str) -> str:
    return f"{cls.__name__}.{field}"


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type[Settings], *, title: str | None = None,
                  exclude: tuple[str, ...] = (), help_overrides: Mapping[str, str] | None = None) -> None:
    """One option per field of ``cls`` (in declaration order) in a group titled ``title``."""
    group = parser.add_argument_group(title) if title else parser
    for field, info in cls.model_fields.items():
        cli = cli_of(cls, field)
        if cli.hidden or field in exclude:
            continue
        text = (help_overrides or {}).get(field) or info.description or field.replace("_", " ")
        text = text.replace("%", "%%")  # argparse formats help with %: a description may say "95%"
        kind, detail = _kind(info.annotation)
        flag, dest = flag_of(cls, field), dest_of(cls, field)
        common: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
        if kind == "bool":
            value = not cli.negate
            spec = {"action": "store_const", "const": value}
            group.add_argument(flag, help=text, **spec, **common)
            if cli.negative:
                group.add_argument(cli.negative, action="store_const", const=False, help=f"the opposite of {flag}",
                                   **common)
            inner = "store_const"
        else:
            spec = {"metavar": cli.metavar or (None if kind == "choice" else _METAVARS.get(detail, "VALUE"))}
            if kind == "choice":
                spec["choices"] = list(detail)
            if cli.many == "repeat":
                spec["action"] = "append"
            elif cli.many == "nargs":
                spec["nargs"] = "+"
            shown = "" if "default" in text else _default_text(info)
            group.add_argument(flag, help=text + shown, **spec, **common)
            inner = spec.get("action", "store")
        for old in cli.old:
            group.add_argument(old, action=_Deprecated, replacement=flag, inner=inner,
                               const=spec.get("const"), help=argparse.SUPPRESS, dest=dest, default=argparse.SUPPRESS)


def typed(cls: type[Settings], args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` the user gave on the command line, converted from their text (not validated)."""
    given: dict[str, Any] = {}
    for field, info in cls.model_fields.items():
        dest = dest_of(cls, field)
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        cli = cli_of(cls, field)
        kind, _ = _kind(info.annotation)
        if kind == "list" and cli.many == "comma" and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if cli.parse is not None and value is not None:
            try:
                value = cli.parse(value)
            except InputError:
                raise
            except (ValueError, TypeError) as exc:
                raise InputError(f"{flag_of(cls, field)}: {exc} (got {_shown(value)})") from None
        given[field] = value
    return given


def from_args(cls: type[S], args: argparse.Namespace, base: S | Mapping[str, Any] | None = None) -> S:
    """The settings the command runs with: ``base`` (a recipe section, or the defaults) overridden by every
    flag the user typed, validated as one model (errors name the flags)."""
    data = dict(base) if isinstance(base, Mapping) else (base.model_dump() if base is not None else {})
    data.update(typed(cls, args))
    return validated(cls, data, name=lambda field: flag_of(cls, field) if field in cls.model_fields else field)


def given(cls: type[Settings], args: argparse.Namespace, field: str) -> bool:
    """Whether the user typed the flag of ``field``."""
    return hasattr(args, dest_of(cls, field))


def split_fields(fields: Mapping[str, Any], *classes: type[Settings]) -> list[dict[str, Any]]:
    """Keyword arguments sorted by the settings class that declares them (one dict per class, in order);
    a name no class declares is a TypeError, as for any unknown keyword."""
    parts: list[dict[str, Any]] = [{} for _ in classes]
    for name, value in fields.items():
        owner = next((i for i, cls in enumerate(classes) if name in cls.model_fields), None)
        if owner is None:
            known = sorted(n for cls in classes for n in cls.model_fields)
            raise TypeError(f"unexpected keyword argument {name!r} (settings: {', '.join(known)})")
        parts[owner][name] = value
    return parts
