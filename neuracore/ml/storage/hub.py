"""Hub semantics over a Store: repositories, immutable revisions, branches, tags, push and pull.

Layout under the storage root (all paths validated by `names`):

    repos/<org>/<name>/blobs/<sha[:2]>/<sha256>         file contents, shared by all revisions
    repos/<org>/<name>/revisions/<rev>.json             manifest; <rev> = sha256 of these bytes
    repos/<org>/<name>/refs/heads/<branch>/<seq>.json   branch history; the highest <seq> is the head
    repos/<org>/<name>/refs/tags/<tag>.json             immutable tag

A push uploads missing blobs, writes the manifest, and only then creates the next
`refs/heads/<branch>/<seq>.json` with an exclusive create. Until that object exists no reader
sees the revision, so an interrupted push changes nothing visible; of two pushes racing for
the same `<seq>` exactly one creates it and the other raises StorageConflictError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.storage.backend import (
    LocalStore,
    Store,
    local_temp_dir,
    open_store,
    storage_call,
)
from neuracore.ml.storage.errors import (
    IntegrityError,
    StorageConflictError,
    StorageError,
)
from neuracore.ml.storage.names import (
    DEFAULT_BRANCH,
    RepoRef,
    check_file_path,
    check_segment,
    is_revision_hash,
    parse_repo,
)
from neuracore.ml.utils.hashing import sha256_file
from neuracore.ml.utils.paths import neuracore_home

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "neuracore-hub/1"
# Fault injection for tests: SIGKILL this process after uploading this many blobs.
KILL_AFTER_BLOBS_ENV = "NEURACORE_STORAGE_TEST_KILL_AFTER_BLOBS"
_SEQ = re.compile(r"^(\d{12})\.json$")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Revision:
    """A pushed revision: its id and manifest."""

    id: str
    manifest: dict[str, Any]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Relative path -> {"sha256", "size"}."""
        return self.manifest["files"]

    @property
    def size(self) -> int:
        """Total bytes of the files."""
        return sum(int(f["size"]) for f in self.files.values())


@dataclass
class LogEntry:
    """One move of a branch: its sequence number, revision and parent."""

    seq: int
    revision: str
    parent: str | None
    time: str
    message: str
    kind: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class PushResult:
    """What a push did."""

    repo: str
    revision: str
    branch: str
    tag: str | None
    files: int
    bytes_total: int
    bytes_uploaded: int
    seconds: float


def scan_folder(folder: Path) -> dict[str, Path]:
    """Regular files under `folder` by relative POSIX path; symlinks and special files are refused."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    root = folder.resolve()
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise ConfigError(f"{os.path.join(dirpath, d)}: symbolic links are not pushed; copy the target in")
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # temp files of atomic writers, .DS_Store, ...
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                raise ConfigError(f"{path}: only regular files are pushed (symlink or special file)")
            rel = path.relative_to(root).as_posix()
            out[check_file_path(rel, str(folder))] = path
    if not out:
        raise ConfigError(f"{folder}: no files to push")
    return out


class Hub:
    """Repositories on one storage root."""

    def __init__(self, storage_url: str | None = None, store: Store | None = None) -> None:
        self.store = store or open_store(storage_url)
        self._before_ref_update: Callable[[], None] | None = None  # test hook: run a rival push here

    # ----- paths -----
    @staticmethod
    def _repo_dir(ref: RepoRef) -> str:
        return f"repos/{ref.org}/{ref.name}"

    def _blob(self, ref: RepoRef, sha: str) -> str:
        return f"{self._repo_dir(ref)}/blobs/{sha[:2]}/{sha}"

    def _manifest_path(self, ref: RepoRef, rev: str) -> str:
        return f"{self._repo_dir(ref)}/revisions/{rev}.json"

    def _branch_dir(self, ref: RepoRef, branch: str) -> str:
        return f"{self._repo_dir(ref)}/refs/heads/{branch}"

    def _tag_path(self, ref: RepoRef, tag: str) -> str:
        return f"{self._repo_dir(ref)}/refs/tags/{tag}.json"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return storage_call(self.store, what, fn, *args)

    def _read_json(self, path: str, what: str) -> dict[str, Any]:
        data = self._call(f"reading {path}", self.store.read_bytes, path)
        try:
            value = json.loads(data)
            if not isinstance(value, dict):
                raise TypeError("not a JSON object")
        except (ValueError, TypeError) as exc:
            raise StorageError(f"{self.store.describe(path)}: corrupt {what} ({exc})") from None
        return value

    # ----- refs -----
    def _branch_seqs(self, ref: RepoRef, branch: str) -> list[int]:
        names = self._call("listing a branch", self.store.list_names, self._branch_dir(ref, branch))
        return sorted(int(m.group(1)) for n in names if (m := _SEQ.match(n)))

    def _branch_entry(self, ref: RepoRef, branch: str, seq: int) -> dict[str, Any]:
        return self._read_json(f"{self._branch_dir(ref, branch)}/{seq:012d}.json", "branch entry")

    def head(self, repo: str | RepoRef, branch: str = DEFAULT_BRANCH) -> tuple[int, str | None]:
        """(sequence number, revision id) of a branch head; (0, None) for a new branch."""
        ref = parse_repo(repo) if isinstance(repo, str) else repo
        seqs = self._branch_seqs(ref, check_segment(branch, "branch"))
        if not seqs:
            return 0, None
        return seqs[-1], str(self._branch_entry(ref, branch, seqs[-1])["revision"])

    def branches(self, repo: str | RepoRef) -> list[str]:
        """Branch names of a repository."""
        ref = parse_repo(repo) if isinstance(repo, str) else repo
        return self._call("listing branches", self.store.list_names, f"{self._repo_dir(ref)}/refs/heads")

    def tags(self, repo: str | RepoRef) -> dict[str, str]:
        """Tag name -> revision id."""
        ref = parse_repo(repo) if isinstance(repo, str) else repo
        names = self._call("listing tags", self.store.list_names, f"{self._repo_dir(ref)}/refs/tags")
        out = {}
        for n in names:
            if n.endswith(".json"):
                out[n[:-5]] = str(self._read_json(self._tag_path(ref, n[:-5]), "tag")["revision"])
        return out

    def resolve(self, spec: str | RepoRef) -> str:
        """Revision id of `org/name[@branch|tag|revision-hash]` (default branch `main`)."""
        ref = parse_repo(spec) if isinstance(spec, str) else spec
        name = ref.revision or DEFAULT_BRANCH
        if name in self.branches(ref):
            rev = self.head(ref, name)[1]
            if rev:
                return rev
        if self._call("reading a tag", self.store.exists, self._tag_path(ref, name)):
            return str(self._read_json(self._tag_path(ref, name), "tag")["revision"])
        if is_revision_hash(name):
            revs = [n[:-5] for n in self._call("listing revisions", self.store.list_names,
                                                f"{self._repo_dir(ref)}/revisions") if n.endswith(".json")]
            matches = [r for r in revs if r.startswith(name)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ConfigError(f"revision {ref}: ambiguous, matches {', '.join(m[:12] for m in matches)}")
        if not self.branches(ref) and not self.tags(ref):
            raise StorageError(f"repository {ref.repo} not found in {self.store.describe()}")
        raise StorageError(
            f"revision {ref}: no branch, tag or revision {name!r} (branches: {', '.join(self.branches(ref)) or 'none'}; "
            f"tags: {', '.join(self.tags(ref)) or 'none'})"
        )

    def revision(self, spec: str | RepoRef) -> Revision:
        """The manifest of a revision, checked against its id and for unsafe file names."""
        ref = parse_repo(spec) if isinstance(spec, str) else spec
        rev = self.resolve(ref)
        path = self._manifest_path(ref, rev)
        data = self._call(f"reading revision {rev[:12]}", self.store.read_bytes, path)
        if hashlib.sha256(data).hexdigest() != rev:
            raise IntegrityError(f"{self.store.describe(path)}: manifest bytes do not match revision id {rev[:12]}")
        try:
            manifest = json.loads(data)
            files = manifest["files"]
            if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
                raise TypeError(f"not a {MANIFEST_FORMAT} manifest")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"{self.store.describe(path)}: unreadable manifest ({exc})") from None
        for rel, entry in files.items():
            check_file_path(rel, f"revision {ref.repo}@{rev[:12]}")
            ok = isinstance(entry, dict) and re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", "")))
            if not ok or not isinstance(entry.get("size"), int) or entry["size"] < 0:
                raise StorageError(f"revision {ref.repo}@{rev[:12]}: bad manifest entry for {rel!r}")
        return Revision(rev, manifest)

    # ----- push -----
    def push_folder(
        self,
        folder: str | Path,
        repo: str,
        *,
        message: str = "",
        kind: str = "files",
        metadata: dict[str, Any] | None = None,
        branch: str = DEFAULT_BRANCH,
        tag: str | None = None,
        retries: int = 0,
        validate: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> PushResult:
        """Push every file of `folder` as a new revision on `branch` (and `tag`); returns what was done.

        `validate(entries)` may refuse the folder (raise) after hashing and before anything is uploaded.
        """
        ref = parse_repo(repo, allow_revision=False)
        check_segment(branch, "branch")
        if tag is not None:
            check_segment(tag, "revision tag")
            if tag in self.branches(ref):
                raise ConfigError(f"revision tag {tag!r}: a branch of {ref.repo} has that name; choose another")
            if self._call("reading a tag", self.store.exists, self._tag_path(ref, tag)):
                raise StorageConflictError(
                    f"{ref.repo}: tag {tag!r} already exists (tags are immutable); choose another --revision"
                )
        start = time.perf_counter()
        files = scan_folder(Path(folder))
        entries = {rel: {"sha256": sha256_file(p), "size": p.stat().st_size} for rel, p in files.items()}
        if validate is not None:
            validate(entries)
        uploaded = self._upload_blobs(ref, files, entries)
        for attempt in range(retries + 1):
            seq, parent = self.head(ref, branch)
            manifest = {
                "format": MANIFEST_FORMAT,
                "repo": ref.repo,
                "kind": kind,
                "parent": parent,
                "time": _now(),
                "message": message,
                "metadata": metadata or {},
                "files": entries,
            }
            data = _canonical(manifest)
            rev = hashlib.sha256(data).hexdigest()
            self._call("writing the manifest", self.store.write_atomic, self._manifest_path(ref, rev), data)
            if self._before_ref_update is not None:
                self._before_ref_update()
            entry = _canonical({"revision": rev, "parent": parent, "time": manifest["time"],
                                "message": message, "kind": kind})
            path = f"{self._branch_dir(ref, branch)}/{seq + 1:012d}.json"
            if self._call("updating the branch", self.store.create_exclusive, path, entry):
                break
            winner = self.head(ref, branch)[1] or "?"
            if attempt == retries:
                raise StorageConflictError(
                    f"{ref.repo}: branch {branch!r} moved to revision {winner[:12]} while this push was running; "
                    "this push changed nothing visible; push again to put it on top"
                )
            log.info("%s: branch %s moved to %s; retrying on top of it", ref.repo, branch, winner[:12])
        if tag is not None and not self._call("creating the tag", self.store.create_exclusive,
                                              self._tag_path(ref, tag), _canonical({"revision": rev, "time": _now()})):
            raise StorageConflictError(
                f"{ref.repo}: revision {rev[:12]} is on {branch!r} but tag {tag!r} was created by another push meanwhile"
            )
        total = sum(int(e["size"]) for e in entries.values())
        return PushResult(ref.repo, rev, branch, tag, len(entries), total, uploaded, time.perf_counter() - start)

    def _upload_blobs(self, ref: RepoRef, files: dict[str, Path], entries: dict[str, dict[str, Any]]) -> int:
        kill_after = int(os.environ.get(KILL_AFTER_BLOBS_ENV) or 0)
        done: set[str] = set()
        uploaded = 0
        for rel, path in files.items():
            sha, size = entries[rel]["sha256"], int(entries[rel]["size"])
            if sha in done:
                continue
            done.add(sha)
            blob = self._blob(ref, sha)
            if self._call("checking a blob", self.store.size, blob) == size:
                continue  # content-addressed: already there from an earlier push
            self._call(f"uploading {rel}", self.store.upload, path, blob)
            uploaded += size
            if kill_after and len(done) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return uploaded

    # ----- pull -----
    def download(self, spec: str | RepoRef, dest: Path, revision: Revision | None = None) -> Revision:
        """Download a revision into `dest` (created atomically; must not exist), verifying every sha256.

        `revision`: the already resolved revision of `spec`, to skip resolving it again.
        """
        ref = parse_repo(spec) if isinstance(spec, str) else spec
        revision = revision if revision is not None else self.revision(ref)
        dest = Path(dest)
        tmp = local_temp_dir(dest.parent, dest.name)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
        try:
            root = tmp.resolve()
            for rel, entry in sorted(revision.files.items()):
                target = (tmp / rel).resolve()
                if root not in target.parents:  # belt and braces after check_file_path
                    raise ConfigError(f"revision {ref.repo}@{revision.id[:12]}: file {rel!r} escapes the folder")
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # e.g. a manifest listing both "a" and "a/b"
                    raise StorageError(f"revision {ref.repo}@{revision.id[:12]}: cannot place {rel!r} ({exc})") from None
                self._call(f"downloading {rel}", self.store.download, self._blob(ref, entry["sha256"]), target)
                got = sha256_file(target)
                if got != entry["sha256"] or target.stat().st_size != int(entry["size"]):
                    raise IntegrityError(
                        f"{ref.repo}@{revision.id[:12]}: {rel} is corrupt (sha256 {got[:12]}, manifest says "
                        f"{entry['sha256'][:12]}); the stored blob or the download was damaged"
                    )
            (tmp / ".neuracore-revision.json").write_text(
                json.dumps({"repo": ref.repo, "revision": revision.id, "storage": self.store.describe()}, indent=1))
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same revision first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return revision

    def pull(self, spec: str | RepoRef, cache_dir: Path | None = None) -> Path:
        """Local folder of a revision: from the cache, else downloaded (and verified) into it once."""
        ref = parse_repo(spec) if isinstance(spec, str) else spec
        rev = self.resolve(ref)
        folder = (cache_dir or hub_cache_root()) / ref.org / ref.name / rev
        if not folder.is_dir():
            self.download(RepoRef(ref.org, ref.name, rev), folder)
        return folder

    # ----- listing -----
    def list_repos(self, org: str | None = None) -> list[str]:
        """`org/name` of every repository (of one org)."""
        orgs = [check_segment(org, "org")] if org else self._call("listing", self.store.list_names, "repos")
        out = []
        for o in orgs:
            for n in self._call("listing", self.store.list_names, f"repos/{o}"):
                out.append(f"{o}/{n}")
        if not out and not isinstance(self.store, LocalStore) and not self._call("listing", self.store.root_exists):
            raise StorageError(f"storage {self.store.describe()}: listing failed: bucket not found")
        return out

    def log(self, repo: str, branch: str = DEFAULT_BRANCH) -> list[LogEntry]:
        """The history of a branch, newest first, with the tags of each revision."""
        ref = parse_repo(repo, allow_revision=False)
        seqs = self._branch_seqs(ref, check_segment(branch, "branch"))
        if not seqs and not self.branches(ref):
            raise StorageError(f"repository {ref.repo} not found in {self.store.describe()}")
        by_rev: dict[str, list[str]] = {}
        for tag, rev in self.tags(ref).items():
            by_rev.setdefault(rev, []).append(tag)
        out = []
        for seq in reversed(seqs):
            e = self._branch_entry(ref, branch, seq)
            out.append(LogEntry(seq, str(e["revision"]), e.get("parent"), str(e.get("time", "")),
                                str(e.get("message", "")), str(e.get("kind", "")), sorted(by_rev.get(e["revision"], []))))
        return out


def hub_cache_root() -> Path:
    """`$NEURACORE_HOME/cache/hub`: one verified folder per pulled revision."""
    return neuracore_home() / "cache" / "hub"
