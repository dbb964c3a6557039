"""Argument groups shared by several subcommands."""

from __future__ import annotations

import argparse

from ..loading import DEFAULT_MODEL, EMBEDDED

HELP_FORMATTER = argparse.RawDescriptionHelpFormatter

MODEL_HELP = (
    "model to use: a Hub repo id (owner/name), a local checkpoint folder, a .gguf file, or an embedded "
    f"alias ({', '.join(EMBEDDED)}; default {DEFAULT_MODEL})"
)


def add_model_args(parser: argparse.ArgumentParser, flag: str | None = "--model", required: bool = False) -> None:
    """The model argument and how to load it. ``flag=None`` makes MODEL positional."""
    group = parser.add_argument_group("model loading")
    if flag is None:
        parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    else:
        group.add_argument(flag, dest="model", metavar="MODEL", required=required,
                           default=None if required else DEFAULT_MODEL, help=MODEL_HELP)
    group.add_argument("--revision", help="Hub revision (branch, tag or commit) of a Hub model")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights dtype (auto: the checkpoint's own; GGUF files become float32)")
    group.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"],
                       help="where to run: cpu, cuda (one GPU), or auto (device_map=auto, for models larger "
                            "than one GPU); default: cuda when available, else cpu")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow the checkpoint's own Python code to run (off by default: only for authors you trust)")
    group.add_argument("--allow-pickle", action="store_true",
                       help="allow pickled .bin weights (refused by default: unpickling can execute code)")


def load_from_args(args: argparse.Namespace, spec: str | None = None):
    from ..loading import load_model

    return load_model(
        spec or args.model,
        dtype=args.dtype,
        device=args.device,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )


# -------------------------------------------------------------------------------------- --batch-size
def add_batch_size_arg(parser, default: int, what: str, auto_note: str) -> None:
    """``--batch-size N|auto`` (parsed by :func:`batch_size_from`, so that a bad value is one InputError)."""
    parser.add_argument("--batch-size", default=default, metavar="N|auto",
                        help=f"{what} (default {default}); auto: the largest batch that fits the free GPU memory "
                             f"({auto_note})")


def batch_size_from(args: argparse.Namespace) -> int | str:
    """``args.batch_size`` as a positive int or ``"auto"``; anything else is an InputError naming the flag."""
    from ..batching import parse_batch_size

    return parse_batch_size(args.batch_size, "--batch-size")


# ------------------------------------------------------------------------------------------ --recipe
RECIPE_HELP = ("take this command's settings from a recipe (its model and this stage's section; inputs and "
               "outputs inside the recipe's output folder); flags given on the command line override it")


def add_recipe_option(parser: argparse.ArgumentParser, defaults, required: dict[str, str]) -> None:
    """``--recipe FILE`` for a stage command.

    ``defaults(recipe) -> {dest: value}`` maps the recipe onto the command's arguments; ``required``
    ({dest: flag}) lists arguments that are required unless the recipe provides them.
    """
    parser.add_argument("--recipe", dest="recipe_file", metavar="FILE", help=RECIPE_HELP)
    parser.set_defaults(recipe_defaults=defaults, required_unless_recipe=required)


def model_defaults(recipe, dest: str = "model") -> dict:
    m = recipe.model
    return {dest: m.id, "revision": m.revision, "dtype": m.dtype, "device": m.device,
            "trust_remote_code": m.trust_remote_code, "allow_pickle": m.allow_pickle}


def stage_path(recipe, *parts: str) -> str:
    from ..recipe import output_dir

    return str(output_dir(recipe).joinpath(*parts))
