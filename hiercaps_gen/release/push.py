"""push: publish one release version to a Hugging Face dataset repo as one commit and one tag.

The release directory already is a Hub dataset repo (README.md with `configs`, `data/`,
`manifest.json`), so the commit uploads exactly the files its manifest lists plus the manifest,
and deletes whatever else `main` holds (an older version's shards would otherwise be read into
the same splits). The commit is tagged with the version: `load_dataset(repo, revision=version)`
and `hiercaps-gen pull hf://repo --version X` get exactly that version, forever. An existing tag
is never moved: releases are immutable. The token and endpoint come from the usual Hugging Face
environment (`HF_TOKEN` or `hf auth login`, `HF_ENDPOINT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hiercaps_gen.release.read import verify_release

REPO_TYPE = "dataset"
KEEP = (".gitattributes",)  # created by the Hub with every repo; LFS rules, not data


class PushError(RuntimeError):
    """A release cannot be pushed: failed checksum, existing tag, unreachable Hub."""


@dataclass(frozen=True)
class PushPlan:
    """What a push sends: the repo, the files (paths in the repo = paths in the release) and the tag."""

    repo_id: str
    release_dir: Path
    files: tuple[str, ...]
    tag: str
    name: str

    @property
    def load_line(self) -> str:
        return f'load_dataset("{self.repo_id}", revision="{self.tag}")'


def plan_push(release_dir: Path, repo_id: str) -> PushPlan:
    """Check every file of the release, then list what a push of it sends."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"--repo must look like <org>/<name>, got {repo_id!r}")
    manifest = verify_release(release_dir)
    files = tuple(sorted([f.path for f in manifest.files] + ["manifest.json"]))
    return PushPlan(repo_id, Path(release_dir), files, manifest.version, manifest.name)


def push(plan: PushPlan, private: bool = False, endpoint: str | None = None, token: str | None = None) -> str:
    """Create the repo if needed, commit the release, tag it; return the commit id."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(plan.repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        tags = {ref.name for ref in api.list_repo_refs(plan.repo_id, repo_type=REPO_TYPE).tags}
        if plan.tag in tags:
            raise PushError(f"{plan.repo_id} already has tag {plan.tag}; releases are immutable — bump the version")
        stale = set(api.list_repo_files(plan.repo_id, repo_type=REPO_TYPE)) - set(plan.files) - set(KEEP)
        operations = [CommitOperationAdd(path, str(plan.release_dir / path)) for path in plan.files]
        operations += [CommitOperationDelete(path) for path in sorted(stale)]
        commit = api.create_commit(plan.repo_id, operations, commit_message=f"{plan.name} {plan.tag}",
                                   repo_type=REPO_TYPE)
        api.create_tag(plan.repo_id, tag=plan.tag, revision=commit.oid, repo_type=REPO_TYPE,
                       tag_message=f"{plan.name} {plan.tag}")
    except HfHubHTTPError as exc:
        raise PushError(f"push of {plan.name} {plan.tag} to {plan.repo_id} failed: {exc}") from None
    return commit.oid
