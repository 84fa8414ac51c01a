"""``ganglion backup FILE`` and ``ganglion restore FILE``: everything the daemon knows, in one
archive, taken while it runs, put back into an empty data folder.

The archive (a gzip'd tar, owner-only) holds ``manifest.json`` (what is in it, the
database's row counts), ``data/`` (the data folder: memory files, skills, scripts, the
Matrix key store when it lives there; each SQLite file as a consistent snapshot, see
``storage/snapshot.py``), ``matrix-store/`` (the key store when it lives elsewhere) and
``config.yaml`` (every secret replaced unless ``--with-secrets``). Left out: the lock, the
SQLite logs (their content is in the snapshot), the copies taken before upgrades, and the
web token unless ``--with-secrets``. The workspace of the file tools (``tools.workspace``,
when set) is the user's own folder, not the daemon's: it is not in the archive.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ganglion import __version__
from ganglion.config import LoadedConfig, secret_values
from ganglion.config_database import shown_database
from ganglion.storage.db import BACKUPS_DIR
from ganglion.storage.files import WEB_TOKEN
from ganglion.storage.lock import LOCK_FILE, DataFolderInUse, DataLock
from ganglion.storage.snapshot import check, snapshot

DATABASE = "conversation.db"
SKIPPED = {LOCK_FILE, BACKUPS_DIR}
"""Top-level names of the data folder never archived."""
SECRET_FILES = {WEB_TOKEN}
"""Archived only with ``--with-secrets``."""
REMOVED = "***removed from the backup***"


class BackupError(Exception):
    """What went wrong, said plainly (exit status 1)."""


ON_POSTGRES = (
    "the database is PostgreSQL ({where}): `ganglion backup` and `restore` hold SQLite "
    "files only, and an archive without the database would not be a backup. Back up the "
    "database with pg_dump (pg_dump -Fc -f ganglion.dump '<database.url>'; pg_restore "
    "puts it back) and the data folder's files (memory, skills, Matrix keys) with any file "
    "backup, or copy the database into a SQLite file first (`ganglion db copy`)")


def _refuse_postgres(loaded: LoadedConfig) -> None:
    if loaded.config.database.is_postgres:
        raise BackupError(ON_POSTGRES.format(where=shown_database(loaded.config.database.url)))


def backup(loaded: LoadedConfig, target: Path, *, with_secrets: bool) -> dict[str, Any]:
    """Write the archive to ``target`` (atomically: a temporary file renamed); its manifest."""
    _refuse_postgres(loaded)
    data_dir = loaded.data_dir
    if not (data_dir / DATABASE).is_file():
        raise BackupError(f"{data_dir / DATABASE} does not exist: nothing to back up (is "
                          "paths.data_dir right?)")
    store = loaded.path(loaded.config.matrix.store_path)
    started = time.monotonic()
    manifest: dict[str, Any] = {"version": __version__, "created": time.time(),
                                "with_secrets": with_secrets, "files": 0}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory() as scratch, os.fdopen(fd, "wb") as out, \
                tarfile.open(fileobj=out, mode="w:gz", compresslevel=3) as tar:
            def add(path: Path, name: str) -> None:
                if path.suffix == ".db":  # a SQLite file: a consistent snapshot of it
                    copy = Path(scratch) / f"{manifest['files']}.db"
                    counts = snapshot(path, copy)
                    if name == f"data/{DATABASE}":
                        manifest["rows"] = counts
                    path = copy
                tar.add(path, name, recursive=False)
                manifest["files"] += 1

            for path, name in _data_files(data_dir, with_secrets):
                add(path, f"data/{name}")
            if store.is_dir() and not store.resolve().is_relative_to(data_dir.resolve()):
                for path, name in _tree(store):
                    add(path, f"matrix-store/{name}")
            if loaded.source is not None:
                text = loaded.source.read_text(encoding="utf-8")
                if not with_secrets:
                    for secret in sorted(secret_values(loaded.config), key=len, reverse=True):
                        text = text.replace(secret, REMOVED)
                _add_bytes(tar, "config.yaml", text.encode())
            manifest["seconds"] = round(time.monotonic() - started, 3)
            _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
        os.chmod(tmp, 0o600)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def restore(loaded: LoadedConfig, source: Path) -> dict[str, Any]:
    """Unpack the archive into the configured data folder, which must be empty, with no
    daemon on it; the database checked and counted against the manifest."""
    _refuse_postgres(loaded)
    data_dir = loaded.data_dir
    store = loaded.path(loaded.config.matrix.store_path)
    store_outside = not store.resolve().is_relative_to(data_dir.resolve())
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = DataLock(data_dir)
    try:
        lock.acquire()
    except DataFolderInUse as err:
        raise BackupError(f"{err} (a restore needs the daemon stopped)") from None
    try:
        if [p.name for p in data_dir.iterdir() if p.name != LOCK_FILE]:
            raise BackupError(f"{data_dir} is not empty: restore into an empty data folder "
                              "(move this one aside, or point paths.data_dir elsewhere)")
        if store_outside and store.exists() and any(store.iterdir()):
            raise BackupError(f"the Matrix key store {store} is not empty: move it aside first")
        try:
            tar = tarfile.open(source, mode="r:gz")  # noqa: SIM115  (closed by _unpack)
        except (OSError, tarfile.TarError) as err:
            raise BackupError(f"{source} is not a Ganglion backup: {err}") from None
        config_copy = loaded.base_dir / "config.from-backup.yaml"
        if config_copy.exists():
            raise BackupError(f"{config_copy} exists: move it aside first")
        try:
            return _unpack(tar, source, data_dir, store, config_copy)
        except BaseException as err:
            # All or nothing: what was written goes (the folders were empty before).
            _clear(data_dir, store if store_outside else None)
            config_copy.unlink(missing_ok=True)
            if isinstance(err, tarfile.TarError | EOFError | zlib.error):
                raise BackupError(f"{source} is damaged: {err}; nothing was restored") from None
            raise
    finally:
        lock.release()


def _unpack(tar: tarfile.TarFile, source: Path, data_dir: Path, store: Path,
            config_copy: Path) -> dict[str, Any]:
    with tar:
        manifest = _manifest(tar, source)
        for member in tar:
            parts = _safe_parts(member)
            if parts[0] == "data":
                _extract(tar, member, data_dir.joinpath(*parts[1:]))
            elif parts[0] == "matrix-store":
                _extract(tar, member, store.joinpath(*parts[1:]))
            elif parts == ("config.yaml",):
                _extract(tar, member, config_copy)
                manifest["config_copy"] = str(config_copy)
    try:
        verdict, counts = check(data_dir / DATABASE)
    except sqlite3.Error as err:
        verdict, counts = str(err), {}
    if verdict != "ok" or counts != manifest.get("rows"):
        raise BackupError(f"the restored database does not match the backup: integrity "
                          f"{verdict}; rows {counts} against {manifest.get('rows')}")
    return manifest


def _clear(data_dir: Path, store: Path | None) -> None:
    """Take back what a failed restore wrote (the folders were empty before it)."""
    for path in data_dir.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if store is not None and store.is_dir():
        shutil.rmtree(store)


def _data_files(data_dir: Path, with_secrets: bool) -> Iterator[tuple[Path, str]]:
    for path, name in _tree(data_dir):
        top = name.split("/", 1)[0]
        if top in SKIPPED or (top in SECRET_FILES and not with_secrets):
            continue
        if name.endswith(("-wal", "-shm", "-journal")):
            continue  # a SQLite file's log: its committed content is in the snapshot
        yield path, name


def _tree(root: Path) -> Iterator[tuple[Path, str]]:
    """Regular files below ``root`` (links not followed), with their relative names."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path, path.relative_to(root).as_posix()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _manifest(tar: tarfile.TarFile, source: Path) -> dict[str, Any]:
    try:
        member = tar.extractfile("manifest.json")
        manifest: dict[str, Any] = json.load(member) if member else {}
    except (KeyError, ValueError):
        manifest = {}
    if "rows" not in manifest:
        raise BackupError(f"{source} is not a Ganglion backup (no manifest with the "
                          "database's rows)")
    return manifest


def _safe_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path parts; a link, a device or a path leaving the archive's folders is
    refused (an archive from elsewhere must not write outside the data folder)."""
    parts = PurePosixPath(member.name).parts
    if not (member.isfile() or member.isdir()) or not parts or ".." in parts \
            or PurePosixPath(member.name).is_absolute():
        raise BackupError(f"the archive holds {member.name!r}, which a backup never does: "
                          "not restored")
    return parts


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = tar.extractfile(member)
    assert data is not None  # a regular file (checked)
    with open(path, "xb") as out:  # x: never over a file
        os.fchmod(out.fileno(), member.mode & 0o700 or 0o600)
        while chunk := data.read(1 << 20):
            out.write(chunk)
