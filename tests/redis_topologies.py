"""Real Redis topologies on loopback for the token-cache tests: TLS, ACL users, Sentinel, Cluster.

Every process is a Debian ``redis-server`` (``--sentinel`` for sentinels) on free loopback ports,
in its own temp dir, started and stopped by PID. Every data node has the same users:

- ``default`` off (nothing works without a user);
- ``admin`` with everything, for the tests themselves, replication and the sentinels;
- ``partner-proxy`` with exactly ``SIDECAR_ACL`` (or ``SIDECAR_ACL_CLUSTER``): the minimal ACL that
  docs/deploy.md documents. Every token-cache test connects as this user, so a command the sidecar
  needs and the ACL lacks fails a test.

Certificates come from the ``openssl`` CLI: a CA, a server certificate for 127.0.0.1/localhost, a
client certificate, and an unrelated CA for the "wrong CA" case.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.redis_server import free_port

SIDECAR_USER = "partner-proxy"
SIDECAR_PASSWORD = "pp-Secret-0451"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-Secret-7781"

# The minimal ACL of the sidecar (docs/deploy.md shows the same string; tests/test_redis_tls.py
# checks that it does). Keys: the token and lock keys under the default prefix. Commands: GET
# (lookups), SET (the NX PX lock), EVALSHA + SCRIPT LOAD (the set-if-newer, compare-and-delete and
# release-lock scripts; redis-py sends EVALSHA and loads the script once on NOSCRIPT) and the GET,
# SET and DEL those scripts call (ACLs apply inside scripts too); CLIENT SETINFO is what redis-py
# sends on every new connection from Redis 7.2 on (on 7.0 it does not exist and redis-py ignores
# the error; the rule itself would be refused there). AUTH and HELLO need no permission.
SIDECAR_ACL_BASE = "resetkeys ~partner-proxy:token:* resetchannels -@all +get +set +del +evalsha +script|load"


def redis_version() -> tuple[int, int]:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    major, minor = out.split("v=", 1)[1].split(".")[:2]
    return int(major), int(minor)


SIDECAR_ACL = SIDECAR_ACL_BASE + (" +client|setinfo" if shutil.which("redis-server") and redis_version() >= (7, 2) else "")
# Cluster mode also reads the slot map (CLUSTER SLOTS) on the first command and after a node moves.
SIDECAR_ACL_CLUSTER = SIDECAR_ACL + " +cluster|slots +command"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(50):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


# --- certificates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # signed nothing here: the "wrong CA"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found: install it (apt-get install openssl); tests/run does")
    d = directory
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=partner-proxy test {name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                 "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key", d / "other-ca.crt")


def make_server_cert(pki: Pki, name: str, san: str) -> tuple[Path, Path]:
    """Another server certificate from the same CA, for ``san`` only (e.g. ``DNS:cache.other.example``):
    a certificate that verifies, but for another host."""
    d = pki.ca.parent
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


# --- processes -----------------------------------------------------------------------------------


class RedisProc:
    """One redis-server (or sentinel) from a config file; ``stop`` and ``kill`` act on its PID."""

    def __init__(self, directory: Path, port: int, conf: str, *, sentinel: bool = False) -> None:
        self.port = port
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.conf_path.write_text(conf)
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProc:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install it (apt-get install redis-server); tests/run does")
        cmd = [binary, str(self.conf_path)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: self.ready(), 10, f"redis on port {self.port}")
        except RuntimeError:
            self.kill()
            raise RuntimeError(f"redis on port {self.port} did not start: {self.log()[-2000:]}") from None
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis on port {self.port} exited {self.proc.returncode}: {self.log()[-2000:]}")
        if self.sentinel:
            return port_open(self.port)
        return "Ready to accept connections" in self.log()

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID: a crash, no goodbye to clients or the cluster."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def node_conf(port: int, directory: Path, *, acl: str = SIDECAR_ACL, tls: Pki | None = None, extra: str = "") -> str:
    """redis.conf for a data node: loopback, no persistence, the three users, optionally TLS only."""
    lines = [
        "bind 127.0.0.1",
        "protected-mode no",
        f"dir {directory}",
        f"logfile {directory / 'redis.log'}",
        "save \"\"",
        "appendonly no",
        "daemonize no",
        "user default off",
        f"user {ADMIN_USER} on >{ADMIN_PASSWORD} ~* &* +@all",
        f"user {SIDECAR_USER} on >{SIDECAR_PASSWORD} {acl}",
    ]
    if tls is None:
        lines.append(f"port {port}")
    else:
        lines += [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {tls.server_cert}",
            f"tls-key-file {tls.server_key}",
            f"tls-ca-cert-file {tls.ca}",
            "tls-auth-clients optional",  # a client certificate is checked when one is sent
            # What this node sends when it is the client (a replica, a sentinel, the cluster bus):
            # the client certificate (the server one is for serverAuth only), and TLS throughout.
            f"tls-client-cert-file {tls.client_cert}",
            f"tls-client-key-file {tls.client_key}",
            "tls-replication yes",
        ]
    return "\n".join(lines) + "\n" + extra


@dataclass
class Topology:
    """What a test needs: the URL the sidecar uses, and the processes to break."""

    url: str
    procs: list[RedisProc]
    root: Path
    tls: Pki | None = None  # every node and sentinel is TLS-only, certificates from this PKI

    def cleanup(self) -> None:
        for p in self.procs:
            p.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def temp_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- TLS -----------------------------------------------------------------------------------------


def start_tls(root: Path, pki: Pki, *, cert: tuple[Path, Path] | None = None) -> RedisProc:
    """A TLS-only node; ``cert``: its (certificate, key) instead of the PKI's server certificate."""
    port = free_port()
    d = root / f"tls-{port}"
    conf = node_conf(port, d, tls=pki)
    if cert is not None:
        conf = conf.replace(f"tls-cert-file {pki.server_cert}", f"tls-cert-file {cert[0]}").replace(f"tls-key-file {pki.server_key}", f"tls-key-file {cert[1]}")
    return RedisProc(d, port, conf).start()


# --- Sentinel ------------------------------------------------------------------------------------

SERVICE = "pp-master"


def sentinel_conf(port: int, directory: Path, master_port: int, tls: Pki | None = None) -> str:
    ports = [f"port {port}"] if tls is None else [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {tls.server_cert}",
        f"tls-key-file {tls.server_key}",
        f"tls-ca-cert-file {tls.ca}",
        f"tls-client-cert-file {tls.client_cert}",
        f"tls-client-key-file {tls.client_key}",
        "tls-auth-clients optional",
        "tls-replication yes",  # a sentinel talks TLS to the data nodes and the other sentinels
    ]
    return "\n".join([
        *ports,
        "bind 127.0.0.1",
        "protected-mode no",
        f"dir {directory}",
        f"logfile {directory / 'redis.log'}",
        "daemonize no",
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {SERVICE} 1000",
        f"sentinel failover-timeout {SERVICE} 5000",
        f"sentinel parallel-syncs {SERVICE} 1",
        f"sentinel auth-user {SERVICE} {ADMIN_USER}",
        f"sentinel auth-pass {SERVICE} {ADMIN_PASSWORD}",
    ]) + "\n"


def _tls_args(tls: Pki | None) -> list[str]:
    return [] if tls is None else ["--tls", "--cacert", str(tls.ca), "--cert", str(tls.client_cert), "--key", str(tls.client_key)]


def _cli(port: int, *args: str, tls: Pki | None = None) -> str:
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *_tls_args(tls), "--user", ADMIN_USER, "--pass", ADMIN_PASSWORD, "--no-auth-warning", *args],
        capture_output=True, text=True, timeout=10, check=False,
    )
    return out.stdout


def _sentinel_cli(port: int, *args: str, tls: Pki | None = None) -> str:
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *_tls_args(tls), *args], capture_output=True, text=True, timeout=10, check=False)
    return out.stdout


def tls_query(tls: Pki, ca: Path | None = None) -> str:
    """The REDIS_URL query of a TLS topology: our CA (or ``ca``) and the client certificate."""
    return f"?ssl_ca_certs={ca or tls.ca}&ssl_certfile={tls.client_cert}&ssl_keyfile={tls.client_key}"


def start_sentinel_topology(tls: Pki | None = None) -> Topology:
    """One master, one replica, three sentinels (quorum 2); returns once the sentinels see each other.

    ``tls``: every node and sentinel TLS-only (replication and sentinel links too); the URL is
    ``rediss+sentinel://`` with the CA and the client certificate."""
    root = temp_root("pp-sentinel-")
    procs: list[RedisProc] = []
    topo = Topology("", procs, root, tls)
    try:
        mport = free_port()
        master = RedisProc(root / "master", mport, node_conf(mport, root / "master", tls=tls))
        procs.append(master.start())
        rport = free_port()
        replica_extra = f"replicaof 127.0.0.1 {mport}\nmasteruser {ADMIN_USER}\nmasterauth {ADMIN_PASSWORD}\n"
        # The master may become a replica after a failover: it needs the same credentials.
        master.conf_path.write_text(master.conf_path.read_text() + f"masteruser {ADMIN_USER}\nmasterauth {ADMIN_PASSWORD}\n")
        _cli(mport, "CONFIG", "SET", "masteruser", ADMIN_USER, tls=tls)
        _cli(mport, "CONFIG", "SET", "masterauth", ADMIN_PASSWORD, tls=tls)
        replica = RedisProc(root / "replica", rport, node_conf(rport, root / "replica", tls=tls, extra=replica_extra))
        procs.append(replica.start())
        wait_for(lambda: "master_link_status:up" in _cli(rport, "INFO", "replication", tls=tls), 10, "replica in sync")
        sports = [free_port() for _ in range(3)]
        for sp in sports:
            procs.append(RedisProc(root / f"sentinel-{sp}", sp, sentinel_conf(sp, root / f"sentinel-{sp}", mport, tls), sentinel=True).start())

        def sentinels_agree() -> bool:
            for sp in sports:
                info = _sentinel_cli(sp, "SENTINEL", "MASTER", SERVICE, tls=tls).split("\n")
                fields = dict(zip(info[::2], info[1::2]))
                if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != "1":
                    return False
            return True

        wait_for(sentinels_agree, 20, "three sentinels that know each other and the replica")
        hosts = ",".join(f"127.0.0.1:{sp}" for sp in sports)
        if tls is None:
            topo.url = f"redis+sentinel://{SIDECAR_USER}:{SIDECAR_PASSWORD}@{hosts}/{SERVICE}/0"
        else:
            topo.url = f"rediss+sentinel://{SIDECAR_USER}:{SIDECAR_PASSWORD}@{hosts}/{SERVICE}/0" + tls_query(tls)
        return topo
    except BaseException:
        topo.cleanup()
        raise


def sentinel_master_port(topo: Topology) -> int:
    """The master's port according to the first live sentinel."""
    for p in topo.procs:
        if p.sentinel and p.alive():
            out = _sentinel_cli(p.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE, tls=topo.tls).split()
            if len(out) == 2:
                return int(out[1])
    raise RuntimeError("no sentinel answered")


def data_node(topo: Topology, port: int) -> RedisProc:
    return next(p for p in topo.procs if p.port == port and not p.sentinel)


# --- Cluster -------------------------------------------------------------------------------------


def start_cluster_topology(masters: int = 3, tls: Pki | None = None) -> Topology:
    """Three masters, no replicas, slots split by ``redis-cli --cluster create``.

    ``tls``: TLS-only nodes and cluster bus (``tls-cluster yes``: CLUSTER SLOTS then names the TLS
    ports); the URL is ``rediss+cluster://`` with the CA and the client certificate."""
    root = temp_root("pp-cluster-")
    procs: list[RedisProc] = []
    topo = Topology("", procs, root, tls)
    try:
        ports = []
        extra = "cluster-enabled yes\ncluster-node-timeout 1000\ncluster-require-full-coverage no\n"
        if tls is not None:
            extra += "tls-cluster yes\n"
        for _ in range(masters):
            port = free_cluster_port()
            d = root / f"node-{port}"
            extra_node = extra + f"cluster-config-file {d / 'nodes.conf'}\n"
            procs.append(RedisProc(d, port, node_conf(port, d, acl=SIDECAR_ACL_CLUSTER, tls=tls, extra=extra_node)).start())
            ports.append(port)
        out = subprocess.run(
            ["redis-cli", *_tls_args(tls), "--user", ADMIN_USER, "--pass", ADMIN_PASSWORD, "--no-auth-warning", "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        wait_for(lambda: all("cluster_state:ok" in _cli(p, "CLUSTER", "INFO", tls=tls) for p in ports), 20, "cluster_state:ok on every node")
        hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        if tls is None:
            topo.url = f"redis+cluster://{SIDECAR_USER}:{SIDECAR_PASSWORD}@{hosts}"
        else:
            topo.url = f"rediss+cluster://{SIDECAR_USER}:{SIDECAR_PASSWORD}@{hosts}" + tls_query(tls)
        return topo
    except BaseException:
        topo.cleanup()
        raise


def cluster_node_for_key(topo: Topology, key: str) -> int:
    """The port of the master that serves ``key``'s slot."""
    first = next(p for p in topo.procs if p.alive())
    slot = int(_cli(first.port, "CLUSTER", "KEYSLOT", key, tls=topo.tls).strip())
    for line in _cli(first.port, "CLUSTER", "NODES", tls=topo.tls).splitlines():
        parts = line.split()
        if "master" not in parts[2]:
            continue
        for rng in parts[8:]:
            lo, _, hi = rng.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return int(parts[1].split("@")[0].rsplit(":", 1)[1])
    raise RuntimeError(f"no master serves slot {slot}")


def acl_log(port: int, *, tls: Pki | None = None) -> str:
    """ACL LOG of a node (denied commands), as the admin."""
    args = _tls_args(tls)
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args, "--user", ADMIN_USER, "--pass", ADMIN_PASSWORD, "--no-auth-warning", "ACL", "LOG"],
        capture_output=True, text=True, timeout=10, check=False,
    )
    return out.stdout


class SecretVolume:
    """A directory laid out as Kubernetes mounts a Secret: each key a symlink ``<key> -> ..data/<key>``,
    ``..data`` a symlink to a timestamped directory. ``update`` writes a new directory and swaps
    ``..data`` atomically (rename), as the kubelet does when cert-manager rotates the Secret: the
    paths the sidecar was given stay the same, their real files change."""

    def __init__(self, root: Path, files: dict[str, Path | bytes]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._version = 0
        self.update(files)
        for key in files:
            (root / key).symlink_to(Path("..data") / key)

    def path(self, key: str) -> Path:
        return self.root / key

    def update(self, files: dict[str, Path | bytes]) -> None:
        self._version += 1
        target = self.root / f"..{self._version}"
        target.mkdir()
        for key, content in files.items():
            (target / key).write_bytes(content if isinstance(content, bytes) else content.read_bytes())
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        tmp.replace(self.root / "..data")
