"""Publish: push a finished output folder to the Hugging Face Hub.

``push_folder(folder, "owner/name")`` uploads exactly the files the folder's manifests list, after
checking each one against its recorded sha256, in ONE commit (or one pull request).

The manifest contract (what gets uploaded)
------------------------------------------
A stage that writes files meant for the Hub lists them in a manifest JSON in the folder's top level,
under ``"files"``: ``{relative POSIX path: sha256 hex digest}``. ``push`` reads these manifests, in
this order (:data:`MANIFEST_NAMES`):

* ``hneurons_edit.json`` (required): written by ``hneurons edit``; lists the checkpoint or adapter
  files, ``neurons.json``, ``probe.safetensors``, tokenizer files.
* ``hneurons_publish.json`` (optional): written by the model card stage; lists ``README.md``,
  ``eval_results.json``, plots. A file listed by both manifests must carry the same hash in both.

The upload set is the union of the listed files plus the manifests themselves (a manifest cannot hold
its own hash). Every listed file must exist, be a regular file inside the folder and match its sha256,
otherwise the push is refused (:class:`~editor.errors.PublishError` naming the file) before anything is
sent. Anything else in the folder (logs, ``__pycache__``, ``.hneurons-tmp-*`` temporaries, caches) is
never uploaded; the result lists it as ``left_out``.

Token, endpoint, retries
------------------------
* The token is the ``token`` argument, else ``HF_TOKEN``, else the saved login (``hf auth login``), read
  with ``huggingface_hub.get_token()``. It is only handed to ``HfApi``; it is never logged, printed, or
  written to any file, and error messages are scrubbed of it.
* The endpoint is ``endpoint``, else ``HF_ENDPOINT`` read when the push runs, else huggingface_hub's.
* Idempotence: before committing, the remote revision is compared with the local files (LFS sha256,
  or git blob sha1 for regular files, from ``get_paths_info``). Files already there are not sent; when
  nothing differs no commit is made. With ``create_pr`` an open pull request titled like this commit
  that already holds identical files is reused instead of opening another.
* Retries: a transient failure (connection dropped or reset, timeout, HTTP 408/429/5xx) anywhere in the
  push is retried after :data:`RETRY_WAITS_S`. Each attempt starts with the comparison above, so a
  commit that reached the Hub before the connection dropped is recognised and not made twice.

Choice beyond the issue text: the commit is made with ``HfApi.create_commit`` and one
``CommitOperationAdd`` per listed file rather than ``upload_folder(allow_patterns=...)``: an exact list
needs no glob escaping, it is always a single atomic commit (``upload_folder`` switches to a
multi-commit pipeline when ``hf_xet`` is installed), and the same code path runs with or without Xet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Sequence

from pydantic import Field

from ..artifacts import read_json, safe_join, sha256_file
from ..errors import InputError, PublishError
from ..formats import EDIT_MANIFEST, PUBLISH_MANIFEST
from ..options import Cli, Settings

log = logging.getLogger(__name__)

MANIFEST_NAMES: tuple[str, ...] = (EDIT_MANIFEST, PUBLISH_MANIFEST)
REQUIRED_MANIFESTS: tuple[str, ...] = (EDIT_MANIFEST,)
RETRY_WAITS_S: tuple[float, ...] = (2.0, 10.0, 30.0)  # waits before the 2nd, 3rd and 4th attempt
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_COMMIT_MESSAGE = "Upload {name} with hneurons"
LOGIN_HINT = "set HF_TOKEN, or log in once with `hf auth login` (older clients: `huggingface-cli login`)"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PR_REF = re.compile(r"refs/pr/\d+")
_VERIFY_PROGRESS_BYTES = 256 * 1024 * 1024  # show a progress bar when hashing more than this


@dataclass(frozen=True)
class UploadFile:
    path: str  # relative POSIX path, the same in the repo
    size: int
    sha256: str
    listed_in: str | None  # the manifest that lists it; None for a manifest itself


@dataclass
class PushResult:
    repo_id: str
    endpoint: str
    revision: str  # the branch (or refs/pr/N) committed to, or the PR's base branch
    files: list[UploadFile]
    left_out: list[str]  # files in the folder no manifest lists (never uploaded)
    private: bool = False
    create_pr: bool = False
    dry_run: bool = False
    changed_files: list[str] = field(default_factory=list)  # files this push had to send
    committed: bool = False  # a new commit (or pull request) was made by this push
    commit_oid: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    attempts: int = 0

    @property
    def repo_url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["repo_url"] = self.repo_url
        return out

    def render(self) -> str:
        where = f"{self.repo_url} (revision {self.revision}" + (", private" if self.private else "") + ")"
        if self.dry_run:
            action = "open a pull request against" if self.create_pr else "commit to"
            lines = [f"dry run: would {action} {where}, creating the repo if needed:"]
            lines += [f"  {f.path}  {_human(f.size)}  sha256 {f.sha256[:12]}" for f in self.files]
            lines.append(f"  {len(self.files)} files, {_human(self.total_bytes)}; nothing was sent")
        elif self.committed:
            what = f"pull request {self.pr_url}" if self.pr_url else f"commit {self.commit_url}"
            lines = [f"pushed {len(self.changed_files)} new or changed files (of {len(self.files)}) to {where}: {what}"]
        elif self.pr_url:
            lines = [f"nothing to push: open pull request {self.pr_url} already holds these {len(self.files)} files"]
        else:
            lines = [f"nothing to push: {where} already holds these {len(self.files)} files "
                     f"(commit {self.commit_oid})"]
        if self.left_out:
            more = len(self.left_out) - 8
            shown = ", ".join(self.left_out[:8]) + (f", ... ({more} more)" if more > 0 else "")
            lines.append(f"not uploaded (listed in no manifest): {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- validation
def validate_repo_id(repo_id: str) -> str:
    """``owner/name`` checked with huggingface_hub's own validator; no network."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise PublishError(f"invalid Hub repo {repo_id!r}: expected owner/name, e.g. my-user/SmolLM2-135M-hfix")
    try:
        hub_validate(repo_id)
    except HFValidationError as exc:
        raise PublishError(f"invalid Hub repo {repo_id!r}: {exc}") from None
    return repo_id


def validate_revision(revision: str | None, create_pr: bool) -> str | None:
    """A branch name or ``refs/pr/N``. Refuses what git would refuse as a branch, and commit ids."""
    if revision is None:
        return None
    if _PR_REF.fullmatch(revision):
        if create_pr:
            raise PublishError(f"--create-pr opens a new pull request; to add a commit to {revision}, pass "
                               f"--revision {revision} without --create-pr")
        return revision
    bad = (not revision or revision.startswith(("-", "/", "refs/")) or revision.endswith(("/", ".lock", "."))
           or ".." in revision or "//" in revision or "@{" in revision
           or any(c.isspace() or c in "~^:?*[\\" or ord(c) < 32 for c in revision)
           or re.fullmatch(r"[0-9a-f]{40}", revision))
    if bad:
        raise PublishError(f"invalid revision {revision!r}: expected a branch name (e.g. hneurons-fix) or refs/pr/N")
    return revision


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the argument, else ``HF_TOKEN``, else the saved login."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise PublishError(f"pushing to the Hub needs a write token and none was found: {LOGIN_HINT}")
    return found


def _refuse_offline_mode() -> None:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set, so huggingface_hub makes no network calls: unset it to push "
                           "(--dry-run works offline)")


def resolve_endpoint(endpoint: str | None = None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


# ----------------------------------------------------------------------------------- the upload set
def collect_upload_files(folder: str | os.PathLike, manifest_names: Sequence[str] = MANIFEST_NAMES,
                         required: Sequence[str] = REQUIRED_MANIFESTS) -> tuple[list[UploadFile], list[str]]:
    """The files to upload (verified against their sha256) and the folder's other files (left out).

    Raises :class:`PublishError` when the folder or a required manifest is missing, a manifest is
    malformed, or a listed file is missing, unsafe, or differs from its recorded hash.
    """
    root = Path(folder)
    if not root.is_dir():
        raise PublishError(f"output folder {root} does not exist or is not a folder")
    listed: dict[str, tuple[str, str]] = {}  # path -> (sha256, manifest)
    manifests: list[str] = []
    for name in manifest_names:
        if not (root / name).is_file():
            if name in required:
                raise PublishError(f"{root} has no {name}: push uploads only what a manifest lists, so the folder "
                                   f"must be complete output of `hneurons edit`")
            continue
        manifests.append(name)
        for path, digest in _manifest_files(root, name).items():
            if path in listed and listed[path][0] != digest:
                raise PublishError(f"{path} is listed with different sha256 in {listed[path][1]} and {name}")
            listed.setdefault(path, (digest, name))
    for name in manifests:
        if name in listed:
            raise PublishError(f"{listed[name][1]} lists the manifest {name}, whose content changes with every "
                               f"stage; manifests are uploaded as they are and must not be listed")

    files = [_verified(root, path, digest, source) for path, (digest, source) in _with_progress(root, listed)]
    files += [UploadFile(name, (root / name).stat().st_size, sha256_file(root / name), None) for name in manifests]
    files.sort(key=lambda f: f.path)
    uploaded = {f.path for f in files}
    left_out = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.relative_to(root).as_posix() not in uploaded
    )
    return files, left_out


def _manifest_files(root: Path, name: str) -> dict[str, str]:
    try:
        manifest = read_json(root / name, what=f"manifest {name}")
    except InputError as exc:
        raise PublishError(str(exc)) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise PublishError(f"manifest {root / name} has no \"files\" mapping of relative path -> sha256")
    for path, digest in files.items():
        if not isinstance(path, str) or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise PublishError(f"manifest {root / name}: entry {path!r}: {digest!r} is not a sha256 hex digest")
    return files


def _with_progress(root: Path, listed: dict[str, tuple[str, str]]) -> Iterable[tuple[str, tuple[str, str]]]:
    """The listed entries, with a byte progress bar while they are hashed when that takes a while."""
    from tqdm.auto import tqdm

    sizes = {p: (root / p).stat().st_size if (root / p).is_file() else 0 for p in listed}
    total = sum(sizes.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="checking sha256",
              disable=total < _VERIFY_PROGRESS_BYTES) as bar:
        for path in sorted(listed):
            yield path, listed[path]
            bar.update(sizes[path])


def _verified(root: Path, path: str, digest: str, source: str) -> UploadFile:
    try:
        target = safe_join(root, path)
    except InputError as exc:
        raise PublishError(f"{source}: {exc}") from None
    if target.is_symlink() or not target.is_file():
        what = "a symbolic link" if target.is_symlink() else "missing"
        raise PublishError(f"{source} lists {path}, but {target} is {what}: the folder is incomplete; "
                           f"re-run the stage that writes it")
    actual = sha256_file(target)
    if actual != digest:
        raise PublishError(f"{path} does not match {source}: sha256 {actual[:16]}... on disk, {digest[:16]}... "
                           f"recorded; the file changed after it was written; re-run the stage that writes it")
    return UploadFile(path, target.stat().st_size, digest, source)


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file's content (what the Hub reports as ``oid`` for non-LFS files)."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------- push
class PublishSettings(Settings):
    """Where and how a fixed model is published: the recipe's ``publish`` section and the flags of
    ``hneurons push``."""

    repo: Annotated[str | None, Cli(metavar="OWNER/NAME")] = Field(
        None, description="Hub model repo to push to, e.g. my-user/my-model")
    push: Annotated[bool, Cli(hidden=True)] = Field(
        False, description="`hneurons run` pushes at the end only when this is true (and --to push reaches it)")
    private: Annotated[bool, Cli(negative="--public")] = Field(
        True, description="create the repo private, and refuse a repo that exists and is public (the default, so that "
                          "nothing is published by accident); --public: a new repo gets its namespace's default "
                          "visibility (public unless the organisation says otherwise) and a public repo is accepted")
    revision: Annotated[str | None, Cli(metavar="BRANCH")] = Field(
        None, description="branch to commit to (created from main when new) or refs/pr/N to add to a pull request; "
                          "default main")
    create_pr: bool = Field(False, description="open a pull request against the branch instead of committing to it")
    commit_message: Annotated[str | None, Cli(metavar="TEXT")] = Field(
        None, description="commit (or pull request) title; default 'Upload OUT_DIR with hneurons'")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    settings: PublishSettings | None = None,
    *,
    dry_run: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    retry_waits: Sequence[float] = RETRY_WAITS_S,
    **fields: Any,
) -> PushResult:
    """Push the manifest-listed files of ``folder`` to the model repo ``repo_id`` (else ``settings.repo``).

    ``settings`` (:class:`PublishSettings`, or its fields as keywords): the repo is created, private unless
    ``private`` is false (an existing public repo is refused while ``private`` is true) and, when ``revision``
    names a branch that does not exist yet, the branch (from ``main``). ``create_pr`` opens a pull request
    against ``revision`` (default ``main``) instead of committing to it. ``dry_run`` checks the folder and
    returns the plan without any network call or token. See the module docstring for idempotence and retries.
    """
    if repo_id is not None:
        fields["repo"] = repo_id
    settings = PublishSettings.of(settings, **fields)
    if settings.repo is None:
        raise PublishError("no Hub repo given: pass --repo OWNER/NAME (or set publish.repo in the recipe)")
    repo_id, private, revision = settings.repo, settings.private, settings.revision
    create_pr, commit_message = settings.create_pr, settings.commit_message
    validate_repo_id(repo_id)
    revision = validate_revision(revision, create_pr)
    root = Path(folder)
    files, left_out = collect_upload_files(root)
    message = commit_message or DEFAULT_COMMIT_MESSAGE.format(name=root.resolve().name)
    if not message.strip():
        raise PublishError("the commit message is empty")
    result = PushResult(repo_id=repo_id, endpoint=resolve_endpoint(endpoint), revision=revision or "main",
                        files=files, left_out=left_out, private=private, create_pr=create_pr, dry_run=dry_run)
    if dry_run:
        return result
    secret = resolve_token(token)
    _refuse_offline_mode()
    try:
        _push_with_retries(root, result, message, secret, list(retry_waits))
    except PublishError as exc:
        raise PublishError(_scrub(str(exc), secret)) from None
    return result


def _push_with_retries(root: Path, result: PushResult, message: str, token: str, waits: list[float]) -> None:
    from huggingface_hub import HfApi

    from .. import __version__

    api = HfApi(endpoint=result.endpoint, token=token, library_name="hneurons", library_version=__version__)
    pending: list[str] = []  # what the latest attempt sent in its commit, until it is known to have landed
    while True:
        result.attempts += 1
        try:
            _push_once(api, root, result, message, pending)
        except Exception as exc:  # noqa: BLE001 - classified right below; everything else is re-raised
            if not _is_transient(exc):
                raise _as_publish_error(exc, result, token) from None
            if result.attempts > len(waits):
                raise PublishError(
                    f"pushing to {result.repo_url} failed {result.attempts} times with a network or server error "
                    f"({_scrub(_describe(exc), token)}); re-run the same command: it checks what already reached "
                    f"the Hub and sends only the rest"
                ) from None
            wait = waits[result.attempts - 1]
            log.warning("push attempt %d failed (%s); retrying in %g s (the retry first checks what reached the "
                        "Hub, so nothing is committed twice)", result.attempts, _scrub(_describe(exc), token), wait)
            time.sleep(wait)
            continue
        if not result.committed and pending:
            # An earlier attempt's commit landed although its reply was lost: that was this push's commit.
            result.committed, result.changed_files = True, list(pending)
        return


def _push_once(api, root: Path, result: PushResult, message: str, pending: list[str]) -> None:
    from huggingface_hub import CommitOperationAdd

    repo_id, base = result.repo_id, result.revision
    api.create_repo(repo_id, private=True if result.private else None, exist_ok=True)
    if result.private:
        info = api.repo_info(repo_id)
        if info.private is False:
            raise PublishError(f"{result.repo_url} already exists and is public; hneurons pushes to private repos "
                               f"unless told otherwise: pass --public (publish.private: false) to push to it, or "
                               f"make it private in its settings first")
    if base != "main" and not _PR_REF.fullmatch(base):
        api.create_branch(repo_id, branch=base, exist_ok=True)

    if result.create_pr:
        pr = _matching_open_pr(api, repo_id, message, result.files, root)
        if pr is not None:
            result.pr_url, result.commit_oid = pr
            return
    same = _remote_matches(api, repo_id, base, result.files, root)
    changed = [f for f in result.files if f.path not in same]
    if not changed:
        result.commit_oid = api.repo_info(repo_id, revision=base).sha
        result.commit_url = f"{result.repo_url}/commit/{result.commit_oid}"
        return
    log.info("pushing %d of %d files (%s) to %s%s", len(changed), len(result.files),
             _human(sum(f.size for f in changed)), result.repo_url,
             " as a pull request" if result.create_pr else f" @ {base}")
    operations = []
    for f in changed:
        op = CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(root / f.path))
        # The verified hash: the client need not re-read the weights to hash them, and the LFS/Xet storage
        # rejects bytes that no longer match it, so what is uploaded is what was verified.
        op.upload_info.sha256 = bytes.fromhex(f.sha256)
        operations.append(op)
    pending[:] = [f.path for f in changed]
    info = api.create_commit(
        repo_id, operations, commit_message=message, revision=base, create_pr=result.create_pr,
        commit_description=_commit_description(result),
    )
    result.committed, result.changed_files = True, [f.path for f in changed]
    result.commit_oid, result.commit_url, result.pr_url = info.oid, info.commit_url, info.pr_url


def _remote_matches(api, repo_id: str, revision: str, files: list[UploadFile], root: Path) -> set[str]:
    """Paths whose content at ``revision`` already equals the local file (empty for a new branch/repo)."""
    from huggingface_hub import RepoFile
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    local = {f.path: f for f in files}
    same: set[str] = set()
    paths = sorted(local)
    for start in range(0, len(paths), 100):
        try:
            entries = api.get_paths_info(repo_id, paths[start:start + 100], revision=revision)
        except (RevisionNotFoundError, RepositoryNotFoundError):
            return set()
        for entry in entries:
            f = local.get(entry.path)
            if not isinstance(entry, RepoFile) or f is None:
                continue
            if entry.lfs is not None:
                if entry.lfs.sha256 == f.sha256:
                    same.add(f.path)
            elif entry.size == f.size and entry.blob_id == git_blob_sha1(root / f.path):
                same.add(f.path)
    return same


def _matching_open_pr(api, repo_id: str, title: str, files: list[UploadFile], root: Path) -> tuple[str, str] | None:
    """(url, head commit) of an open pull request with this title that already holds exactly these files."""
    for pr in api.get_repo_discussions(repo_id, discussion_type="pull_request", discussion_status="open"):
        if pr.title != title or pr.git_reference is None:
            continue
        if _remote_matches(api, repo_id, pr.git_reference, files, root) == {f.path for f in files}:
            return pr.url, api.repo_info(repo_id, revision=pr.git_reference).sha
    return None


def _commit_description(result: PushResult) -> str:
    from .. import __version__

    manifests = sorted({f.listed_in for f in result.files if f.listed_in})
    return (f"Pushed with hneurons {__version__}: the {len(result.files)} files listed in "
            f"{', '.join(manifests)}, each checked against its recorded sha256 before upload.")


# ------------------------------------------------------------------------------------------ errors
def _is_transient(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, httpx2.TransportError):
        return True
    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        return response is not None and response.status_code in TRANSIENT_STATUS
    return False


def _as_publish_error(exc: BaseException, result: PushResult, token: str) -> PublishError:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(exc, PublishError):
        return exc
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = _scrub(_describe(exc), token)
    if status == 401 and not isinstance(exc, RepositoryNotFoundError):
        return PublishError(f"the Hub refused the token for {result.repo_url} (401): {LOGIN_HINT} with a write token")
    if status == 403:
        return PublishError(f"no write access to {result.repo_url} (403): the token needs write permission on "
                            f"{result.repo_id.split('/')[0]!r}; {detail}")
    if isinstance(exc, RepositoryNotFoundError):
        return PublishError(f"{result.repo_url} cannot be found or written with this token: {detail}")
    if isinstance(exc, HfHubHTTPError):
        return PublishError(f"the Hub refused the push to {result.repo_url}: {detail}")
    if isinstance(exc, ValueError):  # the client's checks, e.g. invalid README.md metadata
        return PublishError(f"cannot push to {result.repo_url}: {detail}")
    raise exc


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 400 else text[:400] + "..."


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
