"""`hneurons push OUT_DIR --repo owner/name`."""

from __future__ import annotations

import json

from .common import HELP_FORMATTER, add_recipe_option

DESCRIPTION = """\
Publish an output folder of `hneurons edit` (a patched checkpoint or an adapter, with its model card
once one is written) to a Hugging Face Hub model repo, in one commit or one pull request.

Only the files listed in the folder's manifests are uploaded: hneurons_edit.json (required) and
hneurons_publish.json (written by the model card stage), plus the manifests themselves. Each listed
file is checked against its recorded sha256 first; a missing or changed file stops the push before
anything is sent. Logs, caches and temporary files in the folder are never uploaded.

The repo is created when it does not exist (--private makes a new repo private; an existing public
repo is refused with --private). Files already on the Hub with the same content are not sent again,
so re-running a push is safe: when nothing changed, no commit is made. Network and server errors are
retried; a retry first checks what already arrived, so nothing is committed twice.

Authentication: the HF_TOKEN environment variable, else the login saved by `hf auth login` (or
`huggingface-cli login`). The token needs write access; it is never printed or written anywhere.
HF_ENDPOINT selects another Hub endpoint.

examples:
  hneurons push out/smollm2-fixed --repo my-user/SmolLM2-135M-Instruct-hfix --dry-run
  hneurons push out/smollm2-fixed --repo my-user/SmolLM2-135M-Instruct-hfix --private
  hneurons push out/smollm2-ia3 --repo my-org/SmolLM2-hfix-ia3 --revision alpha-0 --commit-message "alpha 0"
  hneurons push out/smollm2-fixed --repo someone/their-model --create-pr
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("push", help="publish an edited model or adapter folder to the Hugging Face Hub",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    parser.add_argument("folder", metavar="OUT_DIR", nargs="?",
                        help="output folder of `hneurons edit` (holds hneurons_edit.json)")
    parser.add_argument("--repo", metavar="OWNER/NAME",
                        help="Hub model repo to push to, e.g. my-user/my-model")
    parser.add_argument("--private", action="store_true",
                        help="create the repo private (refused if it exists and is public); without it a new repo "
                             "gets its namespace's default visibility (public unless the organisation says otherwise)")
    parser.add_argument("--revision", metavar="BRANCH",
                        help="branch to commit to (created from main when new) or refs/pr/N to add to a pull request; "
                             "default main")
    parser.add_argument("--create-pr", action="store_true",
                        help="open a pull request against the branch instead of committing to it")
    parser.add_argument("--commit-message", metavar="TEXT",
                        help="commit (or pull request) title; default 'Upload OUT_DIR with hneurons'")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the folder and list what would be uploaded, and where; send nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_recipe_option(parser, recipe_defaults, {"folder": "OUT_DIR", "repo": "--repo"})
    parser.set_defaults(func=run)


def recipe_defaults(recipe) -> dict:
    from ..pipeline import push_folder_of
    from ..recipe import output_dir

    p = recipe.publish
    return {"folder": str(push_folder_of(recipe, output_dir(recipe))), "repo": p.repo, "private": p.private,
            "revision": p.revision, "create_pr": p.create_pr, "commit_message": p.commit_message}


def run(args) -> int:
    from ..publish import push_folder

    result = push_folder(args.folder, args.repo, private=args.private, revision=args.revision,
                         create_pr=args.create_pr, commit_message=args.commit_message, dry_run=args.dry_run)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.render())
    return 0
