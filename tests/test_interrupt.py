"""A build that refuses or has nothing to do starts no server; Ctrl-C ends a build cleanly.

The pseudo-terminal tests drive `faceshard build` as a user does: the CLI is the session leader of
a new pty and Ctrl-C is the byte the terminal sends (^C), which the kernel turns into SIGINT to the
whole foreground process group. Every process the build started is in that session (Ray's and the
Prefect server's too, whatever their process groups), so "nothing outlives it" is checked there.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from faceshard.config import load_config
from faceshard.flows.fanout import bounded_as_completed
from faceshard.flows.interrupt import BuildInterrupted, Interrupts
from faceshard.flows.progress import BuildProgress
from faceshard.records import VideoTask
from faceshard.storage.manifest import ShardPlan
from tests.conftest import faceshard_cli
from tests.processes import session_members

REPO = Path(__file__).resolve().parents[1]
FACESHARD = Path(sys.executable).with_name("faceshard")
RESUME = re.compile(r"interrupted: (\d+) of (\d+) shards committed; resume with: faceshard build (.+)")


# ------------------------------------------------------------------ the pieces, without processes


def test_first_signal_before_shards_run_stops_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest itself runs in the background
    with Interrupts(), pytest.raises(BuildInterrupted):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler raises here
    assert signal.getsignal(signal.SIGINT) == before  # restored


def test_once_shards_run_the_first_signal_only_stops_submitting_and_the_second_abandons() -> None:
    told: list[int] = []
    with Interrupts(told.append) as interrupts:
        interrupts.graceful = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        assert interrupts.stopping.is_set() and not interrupts.abandoning.is_set()
        interrupts.check()  # a graceful stop lets the flow end normally
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # inside the flow the handler never raises: the fan-out sees `abandoning`
        assert interrupts.abandoning.is_set()
        with pytest.raises(BuildInterrupted):
            interrupts.check()  # what run_build does once the flow has returned
    assert told == [1, 2]


def test_sigterm_abandons_at_once() -> None:
    with Interrupts() as interrupts:
        interrupts.graceful = True
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    assert interrupts.stopping.is_set() and interrupts.abandoning.is_set()


def test_a_signal_inside_a_deferred_step_takes_effect_when_it_ends() -> None:
    finished = False
    with Interrupts() as interrupts, pytest.raises(BuildInterrupted), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        finished = True
    assert finished


def _immediate(item: int) -> Future:
    future: Future = Future()
    threading.Timer(0.05, future.set_result, (item,)).start()
    return future


def test_fanout_submits_nothing_more_once_stopped_but_waits_for_what_runs() -> None:
    submitted: list[int] = []
    stop = threading.Event()

    def submit(item: int) -> Future:
        submitted.append(item)
        return _immediate(item)

    done = []
    for item, _ in bounded_as_completed(range(10), submit, 3, stop=stop.is_set):
        done.append(item)
        stop.set()  # after the first outcome
    assert len(submitted) == 4 and sorted(done) == sorted(submitted)  # 3 + the one launched before


def test_fanout_stops_waiting_once_abandoned() -> None:
    never: Future = Future()
    abandon = threading.Event()
    threading.Timer(0.3, abandon.set).start()
    started = time.monotonic()
    assert list(bounded_as_completed([1], lambda _: never, 1, abandon=abandon.is_set)) == []
    assert time.monotonic() - started < 5


def test_progress_counts_each_video_once_and_a_shard_fills_in_the_rest() -> None:
    videos = [VideoTask(video_id=f"v{i}", path=f"/x/v{i}.mp4", label=0) for i in range(3)]
    plan = ShardPlan(shard_id=0, videos=videos)
    progress = BuildProgress(shards_total=1, videos_total=3)
    progress.video_finished(0, "v0", failed=False)
    progress.video_finished(0, "v0", failed=False)  # a retried shard reports its videos again
    progress.video_finished(0, "v1", failed=True)
    assert (progress.videos_done, progress.failures) == (2, "1")
    assert progress.eta_seconds is not None
    progress.shard_finished(plan, failed=False)
    assert (progress.videos_done, progress.failures, progress.percent) == (3, "1", 100.0)
    progress.video_finished(0, "v2", failed=False)  # a report that arrives after its shard finished
    assert progress.videos_done == 3


# ------------------------------------------------------------------ builds that need no server


def _env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    return base | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }


def _committed_output(manifest: Path, uri: Path, shard_size: int) -> None:
    """Every shard of `manifest` committed under the demo preset's fingerprint, with stub rows
    (no Prefect, Ray or model), so a `faceshard build` of it with the same settings has nothing to do."""
    from faceshard.flows import plan as planning
    from faceshard.storage.commit import Output
    from faceshard.storage.manifest import load_manifest
    from faceshard.tasks import shard as shard_task
    from tests.stub_build import StubProcessor

    cfg = load_config("demo", shard_size=shard_size)
    videos = load_manifest(str(manifest))
    with Output.open(str(uri), config=cfg, weights=planning.dataset_weights(cfg)) as output:
        plan = planning.plan_output(output, videos, cfg, prune=False)
        output.apply_plan(plan)
        original = shard_task.get_processor
        shard_task.get_processor = lambda _cfg: StubProcessor()  # type: ignore[assignment]
        try:
            for shard in planning.shards_to_run(output, videos, plan, False):
                shard_task.process_shard(shard, cfg, output)
        finally:
            shard_task.get_processor = original  # type: ignore[assignment]


NO_OP_PROBE = """
import json, sys
from faceshard.config import load_config
from faceshard.flows.local import run_build

phases = []
summary = run_build(sys.argv[1], sys.argv[2], load_config("demo", shard_size=2),
                    on_phase=lambda name, seconds, detail: phases.append(name))
print(json.dumps({"phases": phases, "processed": summary["processed"], "skipped": summary["skipped"],
                  "prefect": "prefect" in sys.modules, "ray": "ray" in sys.modules}))
"""


def test_a_build_with_nothing_to_do_starts_neither_prefect_nor_ray(
    synth_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _committed_output(synth_corpus, out, shard_size=2)
    done = subprocess.run(
        [sys.executable, "-c", NO_OP_PROBE, str(synth_corpus), str(out)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Neither library was even imported, let alone a server or cluster started.
    assert report == {
        "phases": ["manifest", "lease", "plan"],
        "processed": 0,
        "skipped": 2,
        "prefect": False,
        "ray": False,
    }
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()

    cli = faceshard_cli(
        "build", str(synth_corpus), "--out", str(out), "--shard-size", "2", "--json", env=_env(tmp_path)
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    summary = json.loads(cli.stdout)
    assert (summary["processed"], summary["skipped"], summary["startup_seconds"]) == (0, 2, 0.0)
    assert len(summary["warnings"]) == 1 and "RANDOM WEIGHTS" in summary["warnings"][0]
    assert cli.stderr.count("RANDOM WEIGHTS") == 1  # on stderr once, --json or not
    assert not re.search(r"^(prefect|ray|models) ", cli.stderr, re.M)


def test_a_held_output_is_refused_in_one_line_before_any_server_starts(
    synth_corpus: Path, tmp_path: Path
) -> None:
    from faceshard.flows.plan import dataset_weights
    from faceshard.storage.commit import Output

    cfg = load_config("demo", shard_size=2)
    out = tmp_path / "out"
    with Output.open(str(out), config=cfg, weights=dataset_weights(cfg), owner="the-other-build"):
        cli = faceshard_cli(
            "build", str(synth_corpus), "--out", str(out), "--shard-size", "2", env=_env(tmp_path)
        )
    assert cli.returncode not in (0, 130)
    assert "Traceback" not in cli.stderr
    assert len([line for line in cli.stderr.splitlines() if line.startswith("error:")]) == 1
    message = " ".join(cli.stderr.split())  # rich wraps at the console's width
    assert "is being built by" in message and "the-other-build" in message
    assert not re.search(r"^(plan|prefect|ray|models) ", cli.stderr, re.M)
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()


# ------------------------------------------------------------------ Ctrl-C in a terminal


class Terminal:
    """`faceshard ARGS` as the session leader of a new pseudo-terminal; its output is collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once
            os.execve(str(FACESHARD), [str(FACESHARD), *args], env)
        self.output = ""
        self.status: int | None = None

    def read_until(self, ready: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not ready(self.output):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not seen in {timeout:.0f} s; output so far:\n{self.output[-3000:]}")
            if not self._read(0.5) and self.exited():
                raise AssertionError(f"exited ({self.status}) first:\n{self.output[-3000:]}")
        return self.output

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")  # what the terminal sends; the kernel signals the foreground group

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after {timeout:.0f} s:\n{self.output[-3000:]}")
            self._read(0.2)
        while self._read(0.1):
            pass
        assert self.status is not None
        return self.status

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def _read(self, timeout: float) -> bool:
        if not select.select([self.fd], [], [], timeout)[0]:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the child closed the terminal
            return False
        self.output += data.decode(errors="replace")
        return bool(data)

    def close(self) -> None:
        if not self.exited():
            for pid in session_members(self.pid):
                os.kill(pid, signal.SIGKILL)
            self.wait(30)
        os.close(self.fd)


def _no_survivors(session: int, grace: float = 20.0) -> list[int]:
    deadline = time.monotonic() + grace
    while session_members(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    return session_members(session)


def _plain(text: str) -> str:
    """Terminal output without colour or cursor codes, line endings normalised."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.slow
def test_ctrl_c_mid_build_commits_what_runs_stops_everything_and_the_next_build_resumes(
    tmp_path: Path,
) -> None:
    from faceshard.app.synth import make_corpus
    from faceshard.storage.status import dataset_status

    manifest = make_corpus(tmp_path / "corpus", n_videos=6, seed=1)
    out = tmp_path / "out"
    args = ["build", str(manifest), "--out", str(out), "--shard-size", "1"]
    env = _env(tmp_path) | {"COLUMNS": "200"}
    terminal = Terminal(args, env)
    try:
        terminal.read_until(lambda text: re.search(r"videos [1-9]/6", _plain(text)) is not None, timeout=600)
        terminal.ctrl_c()
        code = terminal.wait(timeout=300)
    finally:
        terminal.close()
    text = _plain(terminal.output)
    assert code == 130, text[-3000:]
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1, text[-3000:]
    committed, total, resume = RESUME.match(lines[0]).groups()  # type: ignore[union-attr]
    assert int(total) == 6 and 1 <= int(committed) < 6
    assert resume.split() == args[1:]
    assert _no_survivors(terminal.pid) == []  # Ray's processes and the Prefect server are gone too
    assert dataset_status(str(out))["committed"] == int(committed)  # what it said is what is there

    again = faceshard_cli(*args, "--json", env=_env(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert (summary["skipped"], summary["processed"]) == (int(committed), 6 - int(committed))
    # Each warning once per build: the workers that loaded random weights said nothing; the driver once.
    assert len(summary["warnings"]) == 1 and again.stderr.count("RANDOM WEIGHTS") == 1
    assert dataset_status(str(out))["committed"] == 6


@pytest.mark.slow
def test_ctrl_c_during_start_up_stops_the_servers_and_writes_no_shard(
    synth_corpus: Path, tmp_path: Path
) -> None:
    from faceshard.storage.status import dataset_status

    out = tmp_path / "out"
    args = ["build", str(synth_corpus), "--out", str(out), "--shard-size", "2"]
    terminal = Terminal(args, _env(tmp_path) | {"COLUMNS": "200"})
    try:
        terminal.read_until(lambda text: "\nplan " in _plain(text), timeout=300)  # servers starting now
        time.sleep(1)
        terminal.ctrl_c()
        code = terminal.wait(timeout=120)
    finally:
        terminal.close()
    text = _plain(terminal.output)
    assert code == 130, text[-3000:]
    assert "Traceback" not in text
    assert re.search(r"^interrupted: 0 of 2 shards committed; resume with: faceshard build ", text, re.M)
    assert _no_survivors(terminal.pid) == []
    assert dataset_status(str(out))["committed"] == 0


@pytest.mark.slow
def test_sigterm_to_the_process_group_mid_build_exits_130_and_leaves_nothing_failed(tmp_path: Path) -> None:
    """`kill -TERM -PGID` (a supervisor stopping the job) also reaches Ray's own processes: the running
    shards die with the cluster, so they are left pending, not recorded as failed, and nothing outlives it."""
    from faceshard.app.synth import make_corpus
    from faceshard.storage.status import dataset_status

    manifest = make_corpus(tmp_path / "corpus", n_videos=4, seed=2)
    out = tmp_path / "out"
    terminal = Terminal(["build", str(manifest), "--out", str(out), "--shard-size", "1"], _env(tmp_path))
    try:
        terminal.read_until(lambda text: re.search(r"videos [1-9]/4", _plain(text)) is not None, timeout=600)
        os.killpg(terminal.pid, signal.SIGTERM)
        code = terminal.wait(timeout=300)
    finally:
        terminal.close()
    text = _plain(terminal.output)
    assert code == 130, text[-3000:]
    assert "Traceback" not in text and re.search(r"^interrupted: \d of 4 shards committed", text, re.M)
    assert _no_survivors(terminal.pid) == []
    assert dataset_status(str(out))["failed"] == 0
