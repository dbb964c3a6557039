"""`hneurons recipe check|show FILE`."""

from __future__ import annotations

import yaml

from .common import HELP_FORMATTER

DESCRIPTION = """\
Validate a recipe without running anything (check), or print every setting it resolves to, defaults
included (show). A recipe is a YAML file naming the model, the output folder and the settings of each
stage; `hneurons run RECIPE` runs it. Unknown keys and wrong types are reported with the key, the file
and the line. `check` then checks that this machine can run it: the model (a Hub id must be cached, or the
Hub reachable), the device, the datasets of built-in lm-eval tasks (cached, or reachable), vLLM for the vllm
backend and llama.cpp's converter for a GGUF edit of a safetensors model (--schema-only skips this).

examples:
  hneurons recipe check recipes/smollm2-135m-instruct.yaml
  hneurons recipe show recipes/llama-3.1-8b-instruct.yaml
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("recipe", help="validate a recipe (check) or print its resolved settings (show)",
                              description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    p.add_argument("action", choices=["check", "show"])
    p.add_argument("file", metavar="FILE", help="recipe YAML file")
    p.add_argument("--resolve-model", action="store_true",
                   help="also check the model's architecture is supported (reads its config; no weights)")
    p.add_argument("--schema-only", action="store_true",
                   help="check: validate the recipe only, not that its model, datasets, device and packages are "
                        "available on this machine")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline.recipe import check_recipe, load_recipe, resolved

    recipe = load_recipe(args.file)
    if args.action == "show":
        print(yaml.safe_dump(resolved(recipe), sort_keys=False, allow_unicode=True), end="")
        return 0
    notes = check_recipe(recipe, resolve_model=args.resolve_model)
    if not args.schema_only:
        from ..pipeline.recipe import check_environment

        notes += check_environment(recipe)
    print(f"{args.file}: valid recipe for {recipe.model.id} -> {recipe.output}")
    for note in notes:
        print(f"  {note}")
    return 0
