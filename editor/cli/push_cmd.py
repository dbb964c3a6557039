"""`hneurons push OUT_DIR --repo owner/name`."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ..options import add_arguments
from ..report.publish import PublishSettings
from .common import HELP_FORMATTER, add_recipe_option, fail, required, stage_settings

DESCRIPTION = """\
Publish an output folder of `hneurons edit` (a patched checkpoint or an adapter, with its model card
once one is written) to a Hugging Face Hub model repo, in one commit or one pull request.

Only the files listed in the folder's manifests are uploaded: hneurons_edit.json (required) and
hneurons_publish.json (written by the model card stage), plus the manifests themselves. Each listed
file is checked against its recorded sha256 first; a missing or changed file stops the push before
anything is sent. Logs, caches and temporary files in the folder are never uploaded.

The repo is created when it does not exist, private unless --public is given; an existing public repo
is refused unless --public is given (nothing is published by accident). Files already on the Hub with the same content are not sent again,
so re-running a push is safe: when nothing changed, no commit is made. Network and server errors are
retried; a retry first checks what already arrived, so nothing is committed twice.

Authentication: the HF_TOKEN environment variable, else the login saved by `hf auth login` (or
`huggingface-cli login`). The token needs write access; it is never printed or written anywhere.
HF_ENDPOINT selects another Hub endpoint.

examples:
  hneurons push out/smollm2-fixed --repo my-user/SmolLM2-135M-Instruct-hfix --dry-run
  hneurons push out/smollm2-fixed --repo my-user/SmolLM2-135M-Instruct-hfix --public
  hneurons push out/smollm2-ia3 --repo my-org/SmolLM2-hfix-ia3 --revision alpha-0 --commit-message "alpha 0"
  hneurons push out/smollm2-fixed --repo someone/their-model --create-pr
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("push", help="publish an edited model or adapter folder to the Hugging Face Hub",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    parser.add_argument("folder", metavar="OUT_DIR", nargs="?",
                        help="output folder of `hneurons edit` (holds hneurons_edit.json)")
    add_arguments(parser, PublishSettings, title="where to publish")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the folder and list what would be uploaded, and where; send nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_recipe_option(parser)
    parser.set_defaults(func=run)


def resolve(args) -> SimpleNamespace:
    settings = stage_settings(args, PublishSettings, "publish")
    folder = args.folder
    if folder is None and args.recipe is not None:
        from ..pipeline.recipe import output_dir
        from ..pipeline.run import push_folder_of

        folder = str(push_folder_of(args.recipe, output_dir(args.recipe)))
    folder = required(args, "folder", "OUT_DIR", folder)
    if settings.repo is None:
        fail(args, "the following arguments are required (or give --recipe with publish.repo): --repo")
    return SimpleNamespace(settings=settings, folder=folder)


def run(args) -> int:
    from ..report.publish import push_folder

    plan = resolve(args)
    result = push_folder(plan.folder, settings=plan.settings, dry_run=args.dry_run)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.render())
    return 0
