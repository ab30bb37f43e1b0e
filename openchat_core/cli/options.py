"""CLI options generated from config fields, so a flag's type, default and help are defined once (in the config).

`config_options(fn, (TrainConfig, [...]), ...)` returns a command whose signature is `fn`'s own
parameters plus one `--field-name` option per listed field; typer builds the command from that
signature. Literal fields become plain str/int options whose help lists the choices; the command
then validates through the config model, so a bad value gets the config's own message.
(TRL's way: the CLI is generated from the config dataclass.)
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from pydantic import BaseModel

OptionSource = tuple[type[BaseModel], Sequence[str]]


def _cli_type(annotation: Any) -> tuple[Any, str]:
    """A type typer understands, and a help suffix naming the allowed values of a Literal."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        inner, note = _cli_type(next(a for a in args if a is not type(None)))
        return inner | None, note
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0]), f" (one of: {', '.join(map(str, args))})"
    return annotation, ""


def field_option(model: type[BaseModel], name: str, extra_flags: Sequence[str] = ()) -> inspect.Parameter:
    """One keyword parameter `name` with the field's default and an Option carrying its description."""
    field = model.model_fields[name]
    if field.is_required() or field.default_factory is not None:
        raise ValueError(f"{model.__name__}.{name} has no plain default; declare it on the command itself")
    cli_type, note = _cli_type(field.annotation)
    flags = (f"--{name.replace('_', '-')}", *extra_flags) if extra_flags else ()
    option = typer.Option(*flags, help=((field.description or "") + note).strip() or None)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                             annotation=Annotated[cli_type, option])


def config_options(*sources: OptionSource, extra_flags: dict[str, Sequence[str]] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: add the listed config fields to a command's options; the command gets them as keyword arguments."""

    def wrap(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = [field_option(model, name, (extra_flags or {}).get(name, ())) for model, names in sources for name in names]
        clash = {p.name for p in own} & {p.name for p in generated}
        if clash:
            raise ValueError(f"{fn.__name__}: {sorted(clash)} declared twice (on the command and generated from a config)")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            return fn(**kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the generated signature, not fn's
        return command

    return wrap


def pick(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of `model` (to build the config from a command's keyword arguments)."""
    return {k: v for k, v in values.items() if k in model.model_fields}
