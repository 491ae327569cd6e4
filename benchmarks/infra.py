"""The processes a benchmark run owns: the S3 server, latency proxies and mounts
(stormount, rclone). Everything started here is registered with a `Session`, which stops
it in reverse order on exit, also after an error, Ctrl-C or SIGTERM, and then lazily
detaches anything still mounted under the run's work directory."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "bench"
BUCKET = "bench"
REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "benchaccess", "benchsecret"


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the benchmark itself is killed (-9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def mounted(path: Path) -> str | None:
    """The filesystem type mounted exactly at `path`, if any."""
    for point, fstype in _mounts():
        if point == str(path):
            return fstype
    return None


def _mounts() -> list[tuple[str, str]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, fields[sep + 1]))
    return out


def detach(path: Path) -> None:
    """Lazily unmount `path` (the last resort when a daemon does not answer)."""
    cmd = ["umount", "-l", str(path)] if os.getuid() == 0 else \
        ["fusermount3", "-u", "-z", str(path)]
    subprocess.run(cmd, capture_output=True, timeout=30)


def drop_caches() -> bool:
    """Drop the kernel's page, dentry and inode caches; False when not permitted. No
    sync first: only clean pages matter here, and sync would wait on every other
    FUSE mount on the machine."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def vm_hwm_mib(pid: int | None) -> float | None:
    """Peak resident set size of a process (VmHWM), in MiB."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _signal(pid: int, sig: int) -> bool:
    """Send `sig`; False when the process is gone."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _pids_mentioning(text: str) -> dict[int, str]:
    """Processes (not this one) whose command line contains `text`: pid -> command line."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                out[int(d)] = cmd
    return out


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Session:
    """Owns the work directory and an undo stack run in reverse on close()."""

    def __init__(self) -> None:
        import tempfile
        self.workdir = Path(tempfile.mkdtemp(prefix="stormount-bench-"))
        # the mount registry of this run's daemons (read by `stormount unmount` and here)
        os.environ["STORMOUNT_RUNTIME_DIR"] = str(self.workdir / "runtime")
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def defer(self, label: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Register `fn` to run at close(); the returned callable runs it now instead."""
        entry = (label, fn)
        self._undo.append(entry)

        def now() -> None:  # stays registered if interrupted, so close() retries it
            if entry in self._undo:
                fn()
                self._undo.remove(entry)
        return now

    def close(self) -> None:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self._undo:
                label, fn = self._undo.pop()
                try:
                    fn()
                except Exception as e:
                    log(f"cleanup of {label} failed: {e}")
            strays = _pids_mentioning(str(self.workdir))  # e.g. a daemon whose CLI was killed
            for pid, cmd in strays.items():
                log(f"stopping leftover process {pid}: {cmd[:120]}")
                _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while strays and time.monotonic() < deadline:
                strays = {p: c for p, c in strays.items() if _signal(p, 0)}
                time.sleep(0.1)
            left = [p for p, _ in _mounts() if p.startswith(str(self.workdir) + "/")]
            for point in left:
                log(f"detaching leftover mount {point}")
                detach(Path(point))
            for pid in strays:
                _signal(pid, signal.SIGKILL)
            if any(p.startswith(str(self.workdir) + "/") for p, _ in _mounts()):
                log(f"mounts remain under {self.workdir}; not deleting it")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              ready: Callable[[], bool] | None = None, timeout: float = 30.0
              ) -> subprocess.Popen[bytes]:
        """Start a long-running helper; wait until `ready()`; stop it at close()."""
        logf = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
        logf.close()
        self.procs[name] = proc
        self.defer(name, lambda: _stop(proc))
        deadline = time.monotonic() + timeout
        while ready is not None and not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-800:]
                raise BenchError(f"{name} did not start: {tail.strip()}")
            time.sleep(0.1)
        return proc

    # -- the store ------------------------------------------------------------------------

    def start_s3_server(self) -> tuple[int, str]:
        """moto on a free port: ../shared/bench/s3server.py when present, else the venv's
        moto_server. Object data stays in memory (not in temp files), so dropping the
        page cache for a cold figure never makes the *server* read from disk."""
        port = free_port()
        script = SHARED / "s3server.py"
        if script.exists():
            argv, what = [sys.executable, str(script), "--port", str(port)], "s3server.py"
        else:
            argv = [str(REPO / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1",
                    "-p", str(port)]
            what = "stock moto_server (ranged GETs cost O(object), no keep-alive)"
        env = {**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(4 << 30)}
        self.spawn("s3server", argv, env, ready=lambda: _port_open(port))
        return port, what

    def start_proxy(self, target: int, rtt_ms: float, name: str = "latproxy") -> int | None:
        """A latency proxy in front of `target`; None when latproxy.py is not there."""
        script = SHARED / "latproxy.py"
        if not script.exists():
            return None
        port = free_port()
        self.spawn(name, [sys.executable, str(script), "--listen-port", str(port),
                          "--target-port", str(target), "--rtt-ms", str(rtt_ms),
                          "--max-seconds", "7200"], ready=lambda: _port_open(port))
        return port

    def counting_proxy(self, target: int, rtt_ms: float, name: str) -> Proxy | None:
        """A latency proxy of its own for one figure, whose byte counts `Proxy.counts()`
        reads; None when latproxy.py is not there. Stop it with `stop(name)`."""
        script = SHARED / "latproxy.py"
        if not script.exists():
            return None
        port = free_port()
        log_path = self.workdir / f"{name}.log"

        def ready() -> bool:  # "latproxy pid=" is printed once SIGUSR1 is handled
            return _port_open(port) and b"latproxy pid=" in log_path.read_bytes()
        proc = self.spawn(name, [sys.executable, str(script), "--listen-port", str(port),
                                 "--target-port", str(target), "--rtt-ms", str(rtt_ms),
                                 "--max-seconds", "7200"], ready=ready)
        return Proxy(port, proc, log_path)

    def stop(self, name: str) -> None:
        _stop(self.procs[name])

    # -- mounts ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def stormount(self, port: int, name: str, cache_dir: Path | None = None,
                  extra: tuple[str, ...] = ()) -> Iterator[Mount]:
        """A background stormount mount of the bucket through 127.0.0.1:`port`; `extra`
        are more `stormount mount` arguments, e.g. ("-o", "fsync=upload")."""
        mp = self.workdir / "mnt" / name
        mp.mkdir(parents=True, exist_ok=True)
        cache = cache_dir or self.workdir / "cache" / name
        url = f"s3://{BUCKET}?endpoint=http://127.0.0.1:{port}&region={REGION}"
        argv = [*stormount_cmd(), "mount", url, str(mp), "--cache-dir", str(cache), *extra]
        r = subprocess.run(argv, env=bench_env(), cwd=REPO, capture_output=True, text=True,
                           timeout=150)
        if r.returncode != 0:
            raise MountFailed(r.stderr.strip() or f"exit {r.returncode}")
        m = Mount("stormount", mp, _stormount_pid(mp))
        m.journal = cache / "journal.sqlite3"
        unmount = self.defer(f"mount {mp}", lambda: _unmount_stormount(m))
        try:
            yield m
        finally:
            m.peak_rss_mib = vm_hwm_mib(m.pid)
            unmount()

    @contextlib.contextmanager
    def rclone(self, port: int, name: str, rc: bool = False) -> Iterator[Mount]:
        """rclone mount --vfs-cache-mode full of the same bucket (env-var remote). With
        `rc`, its remote control listens on a loopback port, so that `pending_uploads`
        can see its upload queue."""
        mp = self.workdir / "mnt" / name
        mp.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rclone.conf"
        conf.touch()
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        env.update({"RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                    "RCLONE_CONFIG_BENCH_ENDPOINT": f"http://127.0.0.1:{port}",
                    "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
                    "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
                    "RCLONE_CONFIG_BENCH_REGION": REGION,
                    "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"})
        argv = ["rclone", "mount", f"bench:{BUCKET}", str(mp), "--config", str(conf),
                "--vfs-cache-mode", "full", "--cache-dir", str(self.workdir / "cache" / name)]
        rc_port = free_port() if rc else None
        if rc_port is not None:
            argv += ["--rc", "--rc-no-auth", "--rc-addr", f"127.0.0.1:{rc_port}"]
        with self._peer_mount("rclone", name, mp, argv, env) as m:
            m.rc_port = rc_port
            yield m

    @contextlib.contextmanager
    def s3fs(self, port: int, name: str) -> Iterator[Mount]:
        """s3fs (in the foreground, so the session owns it) of the same bucket, with its
        defaults: no local data cache, its stat cache in memory."""
        mp = self.workdir / "mnt" / name
        mp.mkdir(parents=True, exist_ok=True)
        passwd = self.workdir / "s3fs.passwd"
        if not passwd.exists():  # s3fs refuses a credentials file others can read
            passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
            passwd.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        argv = ["s3fs", BUCKET, str(mp), "-f", "-o", f"url=http://127.0.0.1:{port}",
                "-o", "use_path_request_style", "-o", f"endpoint={REGION}",
                "-o", f"passwd_file={passwd}", "-o", "dbglevel=warn"]
        with self._peer_mount("s3fs", name, mp, argv, env) as m:
            yield m

    def mount(self, kind: str, port: int, name: str) -> contextlib.AbstractContextManager[Mount]:
        """A fresh mount of `kind` ("stormount", "rclone", "s3fs") through `port`."""
        if kind == "stormount":
            return self.stormount(port, name)
        if kind == "rclone":
            return self.rclone(port, name)
        if kind == "s3fs":
            return self.s3fs(port, name)
        raise ValueError(kind)

    @contextlib.contextmanager
    def _peer_mount(self, kind: str, name: str, mp: Path, argv: list[str],
                    env: dict[str, str]) -> Iterator[Mount]:
        """A peer's foreground process, mounted at `mp` until the block ends."""
        proc = self.spawn(name, argv, env, ready=lambda: mounted(mp) is not None)
        m = Mount(kind, mp, proc.pid)

        def unmount() -> None:
            m.peak_rss_mib = m.peak_rss_mib or vm_hwm_mib(proc.pid)
            detach_cmd = ["fusermount3", "-u", str(mp)]
            subprocess.run(detach_cmd, capture_output=True, timeout=30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            _stop(proc)
            if mounted(mp):
                detach(mp)
        undo = self.defer(f"mount {mp}", unmount)
        try:
            yield m
        finally:
            m.peak_rss_mib = vm_hwm_mib(proc.pid)
            undo()


class MountFailed(BenchError):
    pass


class Proxy:
    """A latproxy.py the session started: its port, and the bytes it has forwarded each
    way since it started ("up" = client -> server), which it prints on SIGUSR1."""
    STATS = re.compile(rb"latproxy stats conns=(\d+) up=(\d+) down=(\d+)")

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.port, self.proc, self.log_path = port, proc, log_path
        self._lock = threading.Lock()  # one report at a time (a monitor thread may ask)

    def counts(self, timeout: float = 10.0) -> dict[str, int]:
        """{"conns", "up", "down"} so far: SIGUSR1, then the new line in its log. A byte
        is counted when the proxy sends it on, so what it still holds is not counted."""
        with self._lock:
            return self._counts(timeout)

    def _counts(self, timeout: float) -> dict[str, int]:
        seen = len(self.STATS.findall(self.log_path.read_bytes()))
        if self.proc.poll() is not None or not _signal(self.proc.pid, signal.SIGUSR1):
            raise BenchError(f"latproxy {self.port} is not running")
        deadline = time.monotonic() + timeout
        while True:
            found = self.STATS.findall(self.log_path.read_bytes())
            if len(found) > seen:
                conns, up, down = map(int, found[-1])
                return {"conns": conns, "up": up, "down": down}
            if time.monotonic() > deadline:
                raise BenchError(f"latproxy {self.port} did not report its counts")
            time.sleep(0.01)


class Mount:
    def __init__(self, kind: str, path: Path, pid: int | None) -> None:
        self.kind, self.path, self.pid = kind, path, pid
        self.peak_rss_mib: float | None = None
        self.journal: Path | None = None  # stormount: its write-back queue
        self.rc_port: int | None = None  # rclone with rc=True: its remote control


def pending_uploads(m: Mount) -> int:
    """Files the mount has accepted but not yet stored, seen from outside the mount:
    stormount's journal (sqlite, read-only), rclone's `vfs/stats` over its remote
    control. Neither touches the mounted filesystem, so this runs in-process."""
    if m.journal is not None:
        if not m.journal.exists():  # else read_pending() would say "nothing queued"
            raise BenchError(f"no write-back journal at {m.journal}")
        if str(REPO) not in sys.path:  # polled often: add it once
            sys.path.insert(0, str(REPO))
        from stormount.writeback import read_pending
        return len(read_pending(str(m.journal)))
    if m.rc_port is None:
        raise BenchError(f"cannot see the upload queue of {m.kind} at {m.path}")
    req = urllib.request.Request(f"http://127.0.0.1:{m.rc_port}/vfs/stats", data=b"{}",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        cache = json.load(resp)["diskCache"]
    return int(cache["uploadsInProgress"]) + int(cache["uploadsQueued"])


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE")}
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION})
    return env


def stormount_cmd() -> list[str]:
    """This checkout's venv's `stormount`; else `python -m stormount`, which (run with
    cwd=REPO, as every call here is) imports this checkout's package, e.g. from a git
    worktree that has no venv of its own, whatever the python's editable install says."""
    exe = REPO / ".venv" / "bin" / "stormount"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "stormount"]


def stormount_source() -> str:
    """Which stormount the mounts run: the package directory the command imports and the
    commit of this checkout, flagging uncommitted changes under stormount/."""
    exe = REPO / ".venv" / "bin" / "python"
    py = str(exe) if (REPO / ".venv" / "bin" / "stormount").exists() else sys.executable
    r = subprocess.run([py, "-c", "import stormount, os; print(os.path.dirname("
                        "stormount.__file__))"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    where = r.stdout.strip() or f"unknown ({r.stderr.strip()[-120:]})"
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip() or "?"
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "stormount"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git: the path alone
        return where
    return f"{where} at {head}" + (" with uncommitted changes" if dirty else "")


def _stormount_pid(mp: Path) -> int | None:
    """The daemon's pid, from stormount's mount registry, else from pgrep."""
    try:
        sys.path.insert(0, str(REPO))
        from stormount import registry
        rec = registry.lookup(str(mp))
        if rec is not None:
            return rec.pid
    except Exception:
        pass
    r = subprocess.run(["pgrep", "-f", f"stormount mount .* {mp} "], capture_output=True,
                       text=True)
    pids = [int(p) for p in r.stdout.split()]
    return pids[0] if pids else None


def _unmount_stormount(m: Mount) -> None:
    try:
        r = subprocess.run([*stormount_cmd(), "unmount", str(m.path), "--timeout", "60"],
                           env=bench_env(), cwd=REPO, capture_output=True, text=True,
                           timeout=90)
        ok = r.returncode == 0
        if not ok:
            log(f"stormount unmount {m.path}: {r.stderr.strip()}")
    except subprocess.TimeoutExpired:
        ok = False
    if not ok and m.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(m.pid, signal.SIGKILL)
    if mounted(m.path):
        detach(m.path)
    deadline = time.monotonic() + 15
    while m.pid is not None and time.monotonic() < deadline:
        try:
            os.kill(m.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
