"""A throwaway PostgreSQL cluster for end-to-end tests: initdb into a
temporary directory, a server on a free 127.0.0.1 port, stopped through its
own data directory (`pg_ctl -D … stop`) and removed. Never a server that
happens to run on the machine.

Missing binaries fail the test with a message, unless AGENTD_SKIP_POSTGRES=1
(`scripts/setup --test` installs Debian's `postgresql` package as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import free_port, tail


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgCluster:
    def __init__(self) -> None:
        bin = bin_dir()
        if bin is None:
            if os.environ.get("AGENTD_SKIP_POSTGRES") == "1":
                pytest.skip("AGENTD_SKIP_POSTGRES=1 and no PostgreSQL binaries")
            pytest.fail(
                "PostgreSQL binaries not found (initdb, pg_ctl in /usr/lib/postgresql/*/bin or on PATH): install "
                "Debian's `postgresql` package (scripts/setup --test does, as root) or set AGENTD_SKIP_POSTGRES=1"
            )
        self.bin = bin
        # Not under pytest's tmp_path: its directories are private to root, and
        # the server runs as `postgres` when we are root (initdb refuses root).
        self.root = Path(tempfile.mkdtemp(prefix="agentd-e2e-pg-"))
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.started = False

    def _cmd(self, program: str, *args: str) -> list[str]:
        exe = [str(self.bin / program), *args]
        return ["runuser", "-u", "postgres", "--", *exe] if self.as_postgres else exe

    def _run(self, program: str, *args: str) -> str:
        out = subprocess.run(self._cmd(program, *args), capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"{program} {args} failed: {out.stdout}{out.stderr}\n{tail(self.log)}"
        return out.stdout

    def start(self) -> "PgCluster":
        self._run("initdb", "--no-sync", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C",
                  "-D", str(self.data))
        for _ in range(3):  # a port free a moment ago may be taken by now
            self.port = free_port()
            if self._pg_ctl_start().returncode == 0:
                self.started = True
                return self
        raise AssertionError(f"PostgreSQL did not start:\n{tail(self.log)}")

    def _pg_ctl_start(self) -> subprocess.CompletedProcess:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        return subprocess.run(
            self._cmd("pg_ctl", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", opts, "start"),
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )

    def restart(self, down_for: float = 0.0) -> None:
        """Stops the server (`-m fast`: every client is disconnected), waits
        `down_for` seconds, and starts it again on the same port."""
        import time

        subprocess.run(self._cmd("pg_ctl", "-w", "-D", str(self.data), "-m", "fast", "stop"),
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=True)
        time.sleep(down_for)
        out = self._pg_ctl_start()
        assert out.returncode == 0, f"PostgreSQL did not restart: {out.stderr}\n{tail(self.log)}"

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgres://{user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """One statement's result, unaligned, without headers."""
        return self._run("psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql).strip()

    def stop(self) -> None:
        if self.started:
            subprocess.run(self._cmd("pg_ctl", "-w", "-D", str(self.data), "-m", "fast", "stop"),
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
