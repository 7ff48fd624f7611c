"""The embedded default runtime: one local Prefect API server and the settings Ray workers inherit.

Prefect's ephemeral mode would start one API server per Ray worker (~4 s each); instead one
server is started here and its URL is exported before Ray starts, so every worker reports to it.
When the user already points PREFECT_API_URL at a server, that server is used as is.

`local_runtime` starts the server and Ray at the same time (each takes seconds): the server's port
is chosen first, so its URL is known (and inherited by Ray's workers) before either is up, and its
process is launched before the build's own checks run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path

from faceshard.config import RuntimeConfig

log = logging.getLogger(__name__)

# Quiet, local, offline-friendly defaults; a user's explicit environment always wins.
LOCAL_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "DO_NOT_TRACK": "1",  # Prefect's client telemetry (and its first-run notice on a terminal)
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Environment variables that Ray workers must see exactly as the driver does.
FORWARDED_ENV = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_LOGGING_TO_API_ENABLED",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT",
    "DO_NOT_TRACK",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "TORCH_HOME",
    "TOKENIZERS_PARALLELISM",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_SESSION_TOKEN",
    "FACESHARD_FAULTS",
)


def apply_local_defaults() -> None:
    """Set the quiet local defaults without overriding anything the user exported."""
    for key, value in LOCAL_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path.home() / ".faceshard" / "prefect")))
    home.mkdir(parents=True, exist_ok=True)  # the server's SQLite database lives here


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yield a Prefect API URL: the user's server if configured, else one local server for this build."""
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    server = LocalApiServer(free_port())
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


# What prefect.server.api.server.SubprocessASGIServer sets for its server (prefect 3.8): no UI, and
# the ephemeral app (no background services).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def ray_init_kwargs(runtime: RuntimeConfig) -> dict:
    """Arguments for `ray.init` whose workers share the driver's settings.

    A cluster started here inherits this process's environment. One elsewhere (`ray_address`,
    RAY_ADDRESS) gets the settings as the job's runtime_env; a local cluster is not given one,
    because then Ray cannot use the workers it prestarts and boots new ones for the first tasks.
    """
    env_vars = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    kwargs: dict = {
        "include_dashboard": False,
        "log_to_driver": True,
        "configure_logging": True,
        "logging_level": logging.WARNING,
    }
    if runtime.ray_address or os.environ.get("RAY_ADDRESS"):
        kwargs["runtime_env"] = {"env_vars": env_vars}
    if runtime.num_cpus is not None:
        kwargs["num_cpus"] = runtime.num_cpus
    return kwargs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_runtime(
    runtime: RuntimeConfig,
    on_ray_ready: Callable[[], None] | None = None,
    before_ray: Callable[[], None] | None = None,
    on_phase: Callable[[str, float, str], None] | None = None,
    whole: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> Iterator[None]:
    """A Prefect API and a Ray cluster for one build, started side by side.

    The user's server (PREFECT_API_URL) and an already initialised Ray are used as they are and left
    running; what is started here is stopped on exit. The server's process is launched first and
    boots (seconds, on its own core) while `before_ray` runs, then while `ray.init` runs here, on
    the main thread, as Ray expects; a thread watches for it to answer. `on_ray_ready` runs as soon
    as Ray is up, while the server may still be starting (the build warms its workers there).
    `on_phase(name, seconds, detail)` is told as the server and the cluster come up. Steps that
    must not be torn in two (a child process being started) run inside `whole()` (the build's
    Ctrl-C handling defers a signal to their end). An exception from any step stops whatever was
    started.
    """
    import ray

    tell = on_phase or (lambda phase, seconds, detail: None)
    server = None
    owns_ray = not ray.is_initialized()
    try:
        if not os.environ.get("PREFECT_API_URL"):
            server = LocalApiServer(free_port())
            os.environ["PREFECT_API_URL"] = server.api_url  # known now: Ray's workers inherit it
            with whole():
                server.launch()
            server.watch(lambda seconds: tell("prefect", seconds, f"API server on {server.api_url}"))
            if serial_startup():
                server.wait_ready()
        if before_ray is not None:
            before_ray()
        if owns_ray:
            started = time.perf_counter()
            with whole():
                start_ray(runtime, tell)
            cpus = ray.cluster_resources().get("CPU", 0)
            tell("ray", time.perf_counter() - started, f"local cluster, {cpus:g} CPUs")
        if on_ray_ready is not None:
            on_ray_ready()
        if server is not None:
            server.wait_ready()
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        updates: dict = {PREFECT_API_URL: os.environ["PREFECT_API_URL"]}
        if server is not None:
            # Heartbeats let a lasting server notice a crashed flow run; this server ends with the
            # build, and their thread held the build's end for up to a second.
            updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        with temporary_settings(updates=updates):
            yield
    finally:
        stopper = None
        if server is not None:  # stops beside Ray's shutdown (each takes a moment)
            os.environ.pop("PREFECT_API_URL", None)
            stopper = threading.Thread(target=server.stop, daemon=True)
            stopper.start()
        if owns_ray and ray.is_initialized():
            stop_autoscaler_monitor()
            ray.shutdown()
        if stopper is not None:
            stopper.join()


def stop_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of the cluster this process started, before `ray.shutdown`.

    `ray.shutdown` sends each of its processes SIGTERM and waits up to 1 s before SIGKILL; the
    monitor ignores SIGTERM for that second (measured: shutdown 2.1-2.6 s, 0.6-1.1 s with the monitor
    killed first, at load 20+). A local cluster's monitor has nothing to save, so it gets the SIGKILL
    at once. Ray's node object is private API: if it moves, the shutdown is only slower.
    """
    with suppress(Exception):
        from ray._private import worker

        for info in worker._global_node.all_processes.get("monitor", []):
            info.process.kill()


def start_ray(runtime: RuntimeConfig, tell: Callable[[str, float, str], None]) -> None:
    """`ray.init` for the build, tried twice: Ray gives its node 30 s to register (not configurable),
    which a busy machine can miss. A second failure is one line the user can act on."""
    import ray

    for attempt in (1, 2):
        started = time.perf_counter()
        try:
            ray.init(address=runtime.ray_address, **ray_init_kwargs(runtime))
            return
        except Exception as exc:
            ray.shutdown()  # whatever of the node did start
            if attempt == 2:
                where = runtime.ray_address or "a local cluster"
                reason = " ".join(str(exc).split())
                raise StartupError(
                    f"Ray could not start or reach {where}: {reason} (a busy machine? run the build again)"
                ) from exc
            tell("ray", time.perf_counter() - started, "did not start in time; trying once more")


def serial_startup() -> bool:
    """FACESHARD_STARTUP=serial: the server, Ray and the models start one after another, each
    waited for, as builds did before they started side by side (`faceshard bench startup`'s baseline)."""
    return os.environ.get("FACESHARD_STARTUP") == "serial"


class StartupError(RuntimeError):
    """The embedded Prefect server or Ray cluster did not come up; the message says what to do."""


class ServerStartError(StartupError):
    """The embedded Prefect server did not come up; the message says what to do (one line)."""


# Seconds the embedded server may take to answer: ~4 s on an idle machine, past 120 s once on a
# machine at load 13-25. FACESHARD_SERVER_START_S overrides it.
SERVER_START_S = 300.0


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child receive SIGTERM when this process dies (Linux), so a
    killed driver leaves no server behind; resolved here, so the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Children started inside inherit SIGINT blocked: the terminal's Ctrl-C is the driver's to act on
    (Ray starts its own processes so too); one that arrives meanwhile is handled after the block."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class LocalApiServer:
    """Prefect's API server in a subprocess on 127.0.0.1:`port`, as Prefect's own temporary server runs
    it (uvicorn with `prefect.server.api.server:create_app`, UI and background services off), but
    started without importing Prefect's server package here: that import alone held this process
    for ~1.3 s, and the server's start-up went from 5.8 s to 3.5 s beside a starting Ray.
    """

    def __init__(self, port: int, timeout_s: float | None = None) -> None:
        self.port = port
        self.timeout_s = float(os.environ.get("FACESHARD_SERVER_START_S", SERVER_START_S))
        if timeout_s is not None:
            self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._deadline = 0.0
        self._launched = 0.0
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._watcher: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Start the server and wait until `/health` answers; an early exit raises with its output."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the server's process and return at once (it takes seconds to answer).

        Its output goes to a log file under PREFECT_HOME (a pipe nobody reads would fill and stall it).
        """
        command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
        command += [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        home = Path(os.environ.get("PREFECT_HOME", str(Path.home() / ".prefect")))
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / f"faceshard-server-{self.port}.log"
        # Its own process group (a SIGTERM to the driver's group leaves it to the driver to stop, in
        # order) and SIGINT blocked (the terminal's Ctrl-C reaches only the driver).
        with self.log_path.open("wb") as log, _sigint_blocked():
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **SERVER_ENV},
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_die_with_parent(),
            )
        self._launched = time.perf_counter()
        self._deadline = time.monotonic() + self.timeout_s

    def watch(self, on_ready: Callable[[float], None] | None = None) -> None:
        """Wait for the launched server on a thread; `on_ready(seconds since launch)` when it answers.
        `wait_ready` then returns (or raises) with that thread's outcome."""

        def wait() -> None:
            try:
                self._poll_ready()
            except BaseException as exc:
                self._failure = exc
            else:
                if on_ready is not None:
                    on_ready(time.perf_counter() - self._launched)
            finally:
                self._ready.set()

        self._watcher = threading.Thread(target=wait, name="prefect-server-watch", daemon=True)
        self._watcher.start()

    def wait_ready(self) -> None:
        """Wait until the launched server's `/health` answers; an early exit raises with its output.

        Waits in short steps, so that a signal handler of this (main) thread may raise meanwhile.
        """
        if self._watcher is None:
            self._poll_ready()
            return
        while not self._ready.wait(0.2):
            pass
        if self._failure is not None:
            raise self._failure

    def _poll_ready(self) -> None:
        import httpx

        if self.process is None or self.log_path is None:
            raise RuntimeError("the local Prefect server was not launched")
        with httpx.Client() as client:
            while time.monotonic() < self._deadline:
                process = self.process
                if process is None:  # stopped meanwhile
                    raise ServerStartError("the local Prefect server was stopped before it answered")
                if process.poll() is not None:
                    output = self.log_path.read_text(errors="replace")[-3000:]
                    raise ServerStartError(
                        f"the local Prefect server exited with code {process.returncode}:\n{output}"
                    )
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"the local Prefect server did not answer on {self.api_url} within {self.timeout_s:.0f} s "
            "(a busy machine?): run the build again, set FACESHARD_SERVER_START_S to wait longer, "
            "or start one with `prefect server start` and export PREFECT_API_URL"
        )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)  # kept only while it can explain a failed start
