"""A throw-away PostgreSQL cluster for the tests and benchmarks that run on both backends.

initdb + pg_ctl from the machine's PostgreSQL (``pg_config --bindir``, else
/usr/lib/postgresql/*/bin) into a fresh temporary folder, on a free port of 127.0.0.1, with a
password login (so a refused login can be tested). PostgreSQL refuses to run as root: run as
root, the server runs as ``nobody`` (runuser), which owns only the cluster's folder: no user
is added to the machine, and nothing the tests write elsewhere becomes readable to it. Each
test gets a database of its own (CREATE DATABASE, fast from template0).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

USER = "ganglion"
PASSWORD = "pg-test-pass-7c31e9a4"
"""A test secret: the secret scan fails a test whose logs show it."""
RUN_AS = "nobody"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the cluster did not start; says which."""


def bindir() -> Path:
    """The folder of initdb and pg_ctl."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(found).parent
    raise PostgresUnavailable(
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found: install Debian's "
        "postgresql (apt-get install --no-install-recommends postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    folder: Path
    port: int
    bin: Path
    made: int = 0
    _stopped: bool = field(default=False, repr=False)

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.getuid() == 0:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, cwd=self.folder,
                              env={**os.environ, "PGPASSWORD": PASSWORD})

    def start(self) -> None:
        log = self.folder / "server.log"
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(log), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop",
                  check=False)

    def restart(self) -> None:
        """A server restart: every connection is dropped (what a daemon must survive)."""
        self.stop()
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                         "-d", database, "-At", "-c", sql).stdout

    def new_database(self) -> str:
        """A fresh empty database's URL."""
        self.made += 1
        name = f"t{os.getpid()}_{self.made}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def close(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.stop("immediate")
            shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster(durable: bool = False) -> Cluster:
    """initdb, then start: a cluster that is stopped and removed at exit (also on Ctrl-C).
    ``durable``: each commit synced to disk, as SQLite's are (for benchmarks)."""
    bin_ = bindir()
    folder = Path(tempfile.mkdtemp(prefix="ganglion-pg-"))
    if os.getuid() == 0:
        nobody = pwd.getpwnam(RUN_AS)
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    cluster = Cluster(folder, _free_port(), bin_)
    atexit.register(cluster.close)
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.getuid() == 0:
        os.chown(pwfile, pwd.getpwnam(RUN_AS).pw_uid, -1)
    try:
        cluster._run("initdb", "-D", str(folder / "data"), "-U", USER, f"--pwfile={pwfile}",
                     "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                     "--no-sync")
        pwfile.unlink()
        with (folder / "data" / "postgresql.conf").open("a") as conf:
            # A throw-away cluster: durability buys nothing (a daemon is killed in the
            # tests, never this server without a clean stop).
            conf.write("max_connections = 300\n")
            if not durable:
                conf.write("fsync = off\nfull_page_writes = off\n")
        cluster.start()
    except subprocess.CalledProcessError as err:
        cluster.close()
        raise PostgresUnavailable(f"the test cluster did not start: {err.stderr.strip()}"
                                  f" {(folder / 'server.log').read_text(errors='replace')[-500:]}"
                                  if (folder / "server.log").exists() else err.stderr) from None
    return cluster


if __name__ == "__main__":
    c = start_cluster()
    print(c.url(), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        input("Enter stops it\n")
