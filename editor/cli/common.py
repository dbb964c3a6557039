"""What several subcommands share: the model argument and its loading options, ``--recipe``, and turning the
parsed flags (and a recipe) into the stage's settings model (:mod:`editor.options`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from ..model.loading import DEFAULT_MODEL, EMBEDDED, LoadOptions
from ..options import Settings, add_arguments, from_args

HELP_FORMATTER = argparse.RawDescriptionHelpFormatter
S = TypeVar("S", bound=Settings)

MODEL_HELP = (
    "model to use: a Hub repo id (owner/name), a local checkpoint folder, a .gguf file, or an embedded "
    f"alias ({', '.join(EMBEDDED)}; default {DEFAULT_MODEL})"
)


def add_model_args(parser: argparse.ArgumentParser, flag: str | None = "--model", required: bool = False,
                   metavar: str = "MODEL", help_text: str | None = None) -> None:
    """The model argument and how to load it (:class:`~editor.model.loading.LoadOptions`). ``flag=None``
    makes MODEL positional; ``required`` means: required unless a recipe names it."""
    text = help_text or (MODEL_HELP if not required else MODEL_HELP.replace(f"; default {DEFAULT_MODEL}", ""))
    if flag is None:
        parser.add_argument("model", metavar=metavar, help=text)
    else:
        parser.add_argument(flag, dest="model", metavar=metavar, default=None, help=text)
    parser.set_defaults(model_required=required)
    add_arguments(parser, LoadOptions, title="model loading")


def load_options(args: argparse.Namespace) -> LoadOptions:
    """The recipe's model section (if any), overridden by the loading flags typed."""
    recipe = getattr(args, "recipe", None)
    return from_args(LoadOptions, args, base=recipe.model.load_options() if recipe else None)


def model_spec(args: argparse.Namespace) -> str:
    """The model given on the command line, else the recipe's, else the default model."""
    recipe = getattr(args, "recipe", None)
    spec = args.model or (recipe.model.id if recipe else None)
    if spec is None:
        if getattr(args, "model_required", False):
            fail(args, "a model is required (or give --recipe)")
        spec = DEFAULT_MODEL
    return spec


def load_from_args(args: argparse.Namespace, spec: str | None = None):
    from ..model.loading import load_model

    return load_model(spec or model_spec(args), load_options(args))


def stage_settings(args: argparse.Namespace, cls: type[S], section: str | None = None) -> S:
    """The stage's settings: the recipe's ``section`` (when --recipe is given), overridden by the flags typed."""
    recipe = getattr(args, "recipe", None)
    return from_args(cls, args, base=getattr(recipe, section) if recipe is not None and section else None)


# ------------------------------------------------------------------------------------------ --recipe
RECIPE_HELP = ("take this command's settings from a recipe (its model and this stage's section; inputs and "
               "outputs inside the recipe's output folder); flags given on the command line override it")


def add_recipe_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", dest="recipe_file", metavar="FILE", help=RECIPE_HELP)


def add_eval_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` of the evaluation commands (eval, sweep, dose-response): read by editor.evaluate.bars."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (lm-eval's, the KL measure's, and transformers' and datasets' while "
                             "loading the model and the task files; the printed results are unchanged)")


def in_recipe_output(args: argparse.Namespace, *parts: str) -> str | None:
    """A path inside the recipe's output folder (None without --recipe)."""
    recipe = getattr(args, "recipe", None)
    if recipe is None:
        return None
    from ..pipeline.recipe import output_dir

    return str(output_dir(recipe).joinpath(*parts))


def required(args: argparse.Namespace, dest: str, flag: str, recipe_default: Any = None) -> Any:
    """``args.<dest>``, else what the recipe implies, else a usage error naming ``flag``."""
    value = getattr(args, dest, None)
    if value in (None, "", []):
        value = recipe_default
    if value in (None, "", []):
        fail(args, f"the following arguments are required (or give --recipe): {flag}")
    return value


def fail(args: argparse.Namespace, message: str) -> None:
    """A usage error of the running subcommand (usage line, message, exit status 2)."""
    args.subparser.error(message)


def existing(path: str | None) -> str | None:
    return path if path and Path(path).exists() else None
