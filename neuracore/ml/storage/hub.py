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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neuracore.ml.core.errors import ConfigError, one_line
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
    is_full_revision,
    is_revision_hash,
    looks_like_repo,
    parse_repo,
)
from neuracore.ml.utils.atomic import replace_dir
from neuracore.ml.utils.hashing import sha256_file, sha256_stream
from neuracore.ml.utils.paths import neuracore_home

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "neuracore-hub/1"
REVISION_MARKER = ".neuracore-revision.json"  # written into every downloaded folder
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


@dataclass
class PreparedPush:
    """A folder hashed and validated (and its blobs stored) for one branch; invisible until published."""

    ref: RepoRef
    branch: str
    tag: str | None
    kind: str
    message: str
    metadata: dict[str, Any]
    files: dict[str, Path]
    entries: dict[str, dict[str, Any]]
    bytes_uploaded: int = 0
    start: float = 0.0


def _hash_entry(path: Path) -> dict[str, Any]:
    """{"sha256", "size"} of the bytes read in one pass (size from the same read, not a separate stat)."""
    try:
        with open(path, "rb") as f:
            sha, size = sha256_stream(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or one_line(exc)})") from None
    return {"sha256": sha, "size": size}


def _walk_error(exc: OSError) -> None:
    raise ConfigError(f"{exc.filename}: cannot list ({exc.strerror or one_line(exc)}); nothing was pushed")


def scan_folder(folder: Path) -> dict[str, Path]:
    """Regular files under `folder` by relative POSIX path; symlinks and special files are refused."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    root = folder.resolve()
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):  # never skip an unreadable folder
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
        # Test hooks (never read from the environment): run a rival push before the ref update; kill or
        # fail the process after the n-th blob upload.
        self._before_ref_update: Callable[[], None] | None = None
        self._after_blob: Callable[[int], None] | None = None

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
    def _read_ref(self, path: str, what: str) -> dict[str, Any]:
        """A branch entry or tag, its `revision` checked to be a full revision id.

        The single gate for every revision read from a ref: the id later names a manifest and a cache
        folder, so anything but 64 hex digits (`../x`, a prefix, a number) is refused, naming file and key.
        """
        value = self._read_json(path, what)
        rev = value.get("revision")
        if not is_full_revision(rev):
            raise StorageError(
                f"{self.store.describe(path)}: corrupt {what}: key 'revision' is {rev!r}, not a full "
                "64-hex-digit revision id"
            )
        parent = value.get("parent")
        if parent is not None and not is_full_revision(parent):
            raise StorageError(
                f"{self.store.describe(path)}: corrupt {what}: key 'parent' is {parent!r}, not a revision id"
            )
        return value

    def _branch_seqs(self, ref: RepoRef, branch: str) -> list[int]:
        names = self._call("listing a branch", self.store.list_names, self._branch_dir(ref, branch))
        return sorted(int(m.group(1)) for n in names if (m := _SEQ.match(n)))

    def _branch_entry(self, ref: RepoRef, branch: str, seq: int) -> dict[str, Any]:
        return self._read_ref(f"{self._branch_dir(ref, branch)}/{seq:012d}.json", "branch entry")

    def _tag_revision(self, ref: RepoRef, tag: str) -> str:
        return str(self._read_ref(self._tag_path(ref, tag), "tag")["revision"])

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
                out[n[:-5]] = self._tag_revision(ref, n[:-5])
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
            return self._tag_revision(ref, name)
        if is_revision_hash(name):
            revs = [n[:-5] for n in self._call("listing revisions", self.store.list_names,
                                                f"{self._repo_dir(ref)}/revisions")
                    if n.endswith(".json") and is_full_revision(n[:-5])]
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
            for key, kind in (("metadata", dict), ("kind", str), ("message", str)):
                if not isinstance(manifest.get(key, kind()), kind):
                    raise TypeError(f"key {key!r} is not a {kind.__name__}")
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
        prepared = self.prepare_push(folder, repo, message=message, kind=kind, metadata=metadata, branch=branch,
                                     tag=tag, validate=validate)
        return self.publish_tag(self.publish_branch(prepared, retries=retries), prepared)

    def prepare_push(
        self,
        folder: str | Path,
        repo: str,
        *,
        message: str = "",
        kind: str = "files",
        metadata: dict[str, Any] | None = None,
        branch: str = DEFAULT_BRANCH,
        tag: str | None = None,
        validate: Callable[[dict[str, dict[str, Any]]], None] | None = None,
        upload: bool = True,
    ) -> PreparedPush:
        """Hash and validate `folder` and (with `upload`) store every blob; nothing becomes visible yet."""
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
        entries = {rel: _hash_entry(p) for rel, p in files.items()}
        if validate is not None:
            validate(entries)
        prepared = PreparedPush(ref, branch, tag, kind, message, metadata or {}, files, entries, start=start)
        if upload:
            self.upload_blobs(prepared)
        return prepared

    def upload_blobs(self, prepared: PreparedPush) -> int:
        """Store every blob of a prepared push that the repository lacks (or holds damaged); bytes uploaded.

        Existence is decided by the stored bytes' sha256, not their size, so a blob damaged by an earlier
        fault is replaced; each upload hashes what it streams and is read back and checked.
        """
        ref = prepared.ref
        done: set[str] = set()
        for rel, path in prepared.files.items():
            sha, size = prepared.entries[rel]["sha256"], int(prepared.entries[rel]["size"])
            if sha in done:
                continue
            done.add(sha)
            blob = self._blob(ref, sha)
            stored = self._call(f"checking the stored blob of {rel}", self.store.sha256, blob)
            if stored == sha:
                continue  # content-addressed and checked: already there from an earlier push
            if stored is not None:
                log.warning("%s: damaged (sha256 %s); replacing it with %s from %s",
                            self.store.describe(blob), stored[:12], sha[:12], rel)
            self._call(f"uploading {rel}", self.store.upload_verified, path, blob, sha)
            stored = self._call(f"verifying the upload of {rel}", self.store.sha256, blob)
            if stored != sha:
                raise IntegrityError(
                    f"{self.store.describe(blob)}: {rel} reads back as sha256 {str(stored)[:12]} after upload, "
                    f"expected {sha[:12]}; nothing was published; push again"
                )
            prepared.bytes_uploaded += size
            if self._after_blob is not None:
                self._after_blob(len(done))
        return prepared.bytes_uploaded

    def publish_branch(self, prepared: PreparedPush, retries: int = 0) -> PushResult:
        """Write the manifest and move the branch (exclusive create); the tag is left to `publish_tag`."""
        ref, branch = prepared.ref, prepared.branch
        for attempt in range(retries + 1):
            seq, parent = self.head(ref, branch)
            manifest = {
                "format": MANIFEST_FORMAT,
                "repo": ref.repo,
                "kind": prepared.kind,
                "parent": parent,
                "time": _now(),
                "message": prepared.message,
                "metadata": prepared.metadata,
                "files": prepared.entries,
            }
            data = _canonical(manifest)
            rev = hashlib.sha256(data).hexdigest()
            self._call("writing the manifest", self.store.write_atomic, self._manifest_path(ref, rev), data)
            if self._before_ref_update is not None:
                self._before_ref_update()
            entry = _canonical({"revision": rev, "parent": parent, "time": manifest["time"],
                                "message": prepared.message, "kind": prepared.kind})
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
        total = sum(int(e["size"]) for e in prepared.entries.values())
        return PushResult(ref.repo, rev, branch, None, len(prepared.entries), total, prepared.bytes_uploaded,
                          time.perf_counter() - prepared.start)

    def publish_tag(self, result: PushResult, prepared: PreparedPush) -> PushResult:
        """Create the prepared push's tag (if any) on the revision `publish_branch` put on its branch."""
        tag = prepared.tag
        if tag is not None:
            if not self._call("creating the tag", self.store.create_exclusive, self._tag_path(prepared.ref, tag),
                              _canonical({"revision": result.revision, "time": _now()})):
                raise StorageConflictError(
                    f"{prepared.ref.repo}: revision {result.revision[:12]} is on {prepared.branch!r} but tag "
                    f"{tag!r} was created by another push meanwhile"
                )
            result.tag = tag
        return result

    # ----- pull -----
    def download(self, spec: str | RepoRef, dest: Path, revision: Revision | None = None, *,
                 replace: bool = False) -> Revision:
        """Download a revision into `dest` (created atomically; must not exist), verifying every sha256.

        `revision`: the already resolved revision of `spec`, to skip resolving it again. `replace`: swap out
        whatever is at `dest` (a damaged cache entry) once the new copy is complete and verified. A local
        file-system failure (permission, disk full, a file where a folder is expected) is a one-line
        StorageError naming the path, and leaves no temp folder behind.
        """
        ref = parse_repo(spec) if isinstance(spec, str) else spec
        revision = revision if revision is not None else self.revision(ref)
        dest = Path(dest)
        try:
            tmp = local_temp_dir(dest.parent, dest.name)
            tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
        except OSError as exc:
            raise _local_error(exc, dest) from None
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
            (tmp / REVISION_MARKER).write_text(
                json.dumps({"repo": ref.repo, "revision": revision.id, "storage": self.store.describe()}, indent=1))
            if replace and dest.is_dir() and not dest.is_symlink():
                replace_dir(tmp, dest)  # the damaged copy swapped out in one step
            else:
                if replace:
                    dest.unlink(missing_ok=True)  # a file or symlink where the folder belongs
                try:
                    os.replace(tmp, dest)
                except OSError:
                    if not dest.is_dir():
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same revision first
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _local_error(exc, dest) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return revision

    def fetch(self, spec: str | RepoRef, cache_dir: Path | None = None) -> tuple[Path, Revision]:
        """(local folder, revision) of `spec` from the cache, else downloaded (and verified) into it.

        Every cache hit is checked against the revision's manifest (exact file set, sizes, sha256, no
        symlinks); a damaged copy is downloaded again and swapped in, with a warning naming the file.
        """
        ref = parse_repo(spec) if isinstance(spec, str) else spec
        revision = self.revision(ref)  # its id is a checked full hash, so the folder stays inside the cache
        folder = (cache_dir or hub_cache_root()) / ref.org / ref.name / revision.id
        damaged = None
        if folder.exists() or folder.is_symlink():
            damaged = folder_problem(folder, revision)
            if damaged is None:
                return folder, revision
            log.warning("%s: cached copy is damaged (%s); downloading it again", folder, damaged)
        self.download(RepoRef(ref.org, ref.name, revision.id), folder, revision, replace=damaged is not None)
        return folder, revision

    def pull(self, spec: str | RepoRef, cache_dir: Path | None = None) -> Path:
        """Local folder of a revision: from the cache (re-verified), else downloaded (and verified) into it."""
        return self.fetch(spec, cache_dir)[0]

    # ----- listing -----
    def list_repos(self, org: str | None = None) -> list[str]:
        """`org/name` of every repository (of one org)."""
        orgs = [check_segment(org, "org")] if org else self._call("listing", self.store.list_names, "repos")
        out = []
        for o in orgs:
            for n in self._call("listing", self.store.list_names, f"repos/{o}"):
                if looks_like_repo(f"{o}/{n}"):  # a stray object with an unsafe name is not a repository
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


def _local_error(exc: OSError, dest: Path) -> StorageError:
    """A local file-system failure while writing `dest`, as one line naming the path."""
    where = exc.filename or dest
    what = exc.strerror or one_line(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        what = f"{what}: a file is where a folder is expected"
    return StorageError(f"{where}: {what} (writing the local copy {dest}); nothing was left behind")


def folder_problem(folder: Path, revision: Revision) -> str | None:
    """Why `folder` is not an exact copy of `revision` (None when it is): files, sizes, sha256, no symlinks."""
    if folder.is_symlink() or not folder.is_dir():
        return "not a plain folder"
    expected = set(revision.files)
    found: set[str] = set()
    try:
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                rel = path.relative_to(folder).as_posix()
                if path.is_symlink():
                    return f"{rel!r} is a symbolic link"
                if name in filenames:
                    if not path.is_file():
                        return f"{rel!r} is not a regular file"
                    if rel not in expected and rel != REVISION_MARKER:
                        return f"unexpected file {rel!r}"
                    found.add(rel)
        missing = sorted(expected - found)
        if missing:
            return f"{missing[0]!r} is missing"
        for rel, entry in sorted(revision.files.items()):
            path = folder / rel
            if path.stat().st_size != int(entry["size"]):
                return f"{rel!r} has {path.stat().st_size} bytes, manifest says {entry['size']}"
            got = sha256_file(path)
            if got != entry["sha256"]:
                return f"{rel!r} has sha256 {got[:12]}, manifest says {entry['sha256'][:12]}"
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror or one_line(exc)}"
    return None


def _raise(exc: OSError) -> None:
    raise exc


def hub_cache_root() -> Path:
    """`$NEURACORE_HOME/cache/hub`: one verified folder per pulled revision."""
    return neuracore_home() / "cache" / "hub"
