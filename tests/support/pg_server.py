"""A throwaway local PostgreSQL server (Debian's ``postgresql`` packages) for tests and trials.

    with local_server() as pg:
        storage = pg.url("optuna")   # postgresql+psycopg2://postgres@127.0.0.1:PORT/optuna

The server listens on 127.0.0.1 only (a free port), with trust authentication for 127.0.0.1 and
its unix socket inside its own temporary folder; ``stop()`` (or leaving the ``with``) stops it
with ``pg_ctl stop -m fast`` and deletes the folder. PostgreSQL refuses to run as root: under
root the folder is owned by the ``postgres`` system user and the binaries run via ``runuser``.
"""
from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
OS_USER = "postgres"  # the system user Debian's packages create; used when we run as root


class PgError(RuntimeError):
    pass


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: on PATH, else the newest
    /usr/lib/postgresql/*/bin; None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(on_path):
        d = Path(os.path.realpath(on_path[0])).parent
        if (d / "pg_ctl").exists() and (d / "postgres").exists():
            return d
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")])
    for d in reversed(versions):
        if all((Path(d) / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user_prefix() -> list[str]:
    """How to run a command as the ``postgres`` user: nothing when we are not root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", OS_USER, "--"]
    return ["su"]  # handled in _run: su takes a shell command line


@dataclass
class PgServer:
    bin_dir: Path
    root: Path  # the temporary folder: data/, the socket and server.log
    port: int
    host: str = "127.0.0.1"
    running: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        prefix = _as_user_prefix()
        if prefix == ["su"]:
            cmd = ["su", OS_USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        else:
            cmd = prefix + cmd
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        # cwd inside our folder: the postgres user may not be able to enter the caller's cwd
        p = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise PgError(f"{shlex.join(cmd)} exited with {p.returncode}:\n{p.stdout}\n{p.stderr}\n"
                          f"{self.log_tail()}")
        return p

    def log_tail(self, n: int = 40) -> str:
        try:
            return "server.log:\n" + "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "--no-locale",
                  "--encoding=UTF8", "--no-sync")
        (self.data_dir / "pg_hba.conf").write_text(
            "# throwaway test server: trust, on its own socket and 127.0.0.1 only\n"
            "local all all trust\n"
            "host  all all 127.0.0.1/32 trust\n")
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# tests/pg_server.py\n"
                    f"listen_addresses = '{self.host}'\n"
                    f"unix_socket_directories = '{self.root}'\n"
                    "max_connections = 100\n"
                    "shared_buffers = 32MB\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _set_port(self, port: int) -> None:
        self.port = port
        with open(self.data_dir / "postgresql.auto.conf", "w") as f:
            f.write(f"port = {port}\n")

    def start(self, attempts: int = 3) -> None:
        """Start on a free port (another port when the chosen one was taken meanwhile)."""
        for i in range(attempts):
            if i:
                self._set_port(free_port())
            p = self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                          "-t", "60", check=False)
            if p.returncode == 0:
                self.running = True
                return
            if "already in use" not in self.log_tail():
                break
        raise PgError(f"pg_ctl start failed ({p.returncode}):\n{p.stdout}\n{p.stderr}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder; safe to call twice."""
        try:
            if self.running or (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60",
                          check=False)
                self.running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        import psycopg2
        conn = psycopg2.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres",
                                connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()


def start_server(bin_dir: Path | None = None, databases: tuple[str, ...] = ()) -> PgServer:
    """Initialise and start a fresh server in a new temporary folder, with `databases` created."""
    bin_dir = bin_dir or find_bin_dir()
    if bin_dir is None:
        raise PgError("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; "
                      "on Debian: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="ablation-pg-"))  # under /tmp: the postgres user can reach it
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(OS_USER)
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise PgError(f"running as root and there is no {OS_USER!r} system user to run PostgreSQL as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PgServer(bin_dir, root, free_port())
    try:
        server.init()
        server._set_port(server.port)
        server.start()
        for db in databases:
            server.create_database(db)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def local_server(bin_dir: Path | None = None, databases: tuple[str, ...] = ()):
    server = start_server(bin_dir, databases)
    try:
        yield server
    finally:
        server.stop()
