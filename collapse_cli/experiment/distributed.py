"""One run across several processes (`collapse run nproc=N`): one per GPU, or gloo processes on the CPU.

The parent composes the config and creates the run folder; it then starts N workers with
`spawn`, through torchelastic's `elastic_launch` (the engine under torchrun), hands each the
validated RunConfig (pickled) and the folder, and the agent watches them. With nnodes=M one such
parent runs on each of M machines; they meet at rdzv_endpoint (c10d), and every rank runs the
arguments of global rank 0. Every
worker runs the same loop on the same data with the same seeds, so they agree on everything
without being told; they differ in three places, each of which ends in a collective:

    train     DistributedDataParallel: every rank takes its share of each global batch
    generate  rank r decodes chunks r, r+N, ...; all ranks gather them back in chunk order
    evaluate  rank r scores batches r, r+N, ...; the same gather

Those collectives live in collectives.py, below the families that call them; this module starts,
joins and watches the workers. Only rank 0 writes (`ranks.is_main`): the run folder's writes check it.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing import connection
from pathlib import Path
from typing import Any

from collapse_cli.errors import CollapseError
from collapse_cli.ranks import active
from collapse_cli.ranks import process_group as _group

# A rank waits at a collective while another one works alone (rank 0 saving a checkpoint,
# a straggler's last chunk); past this the process group gives up instead of hanging forever.
TIMEOUT = timedelta(minutes=30)
# After the first failure, the other workers get this long to exit on SIGTERM before SIGKILL.
GRACE_S = 5  # whole seconds for torchelastic; a torch whose LaunchConfig lacks shutdown_timeout waits 30


class WorkerFailed(CollapseError):
    """A worker of a distributed run failed; the message says which and why, `details` its traceback."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


# --- joining and leaving the group (a worker) --------------------------------------------------
def init(device_choice: str) -> None:
    """Join the process group torchelastic describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT): NCCL on CUDA, else gloo.

    env:// joins the agent's own rendezvous store as a client where torch shares it (>= 2.4).
    """
    import torch
    import torch.distributed as dist

    cuda = device_choice != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif "OMP_NUM_THREADS" not in os.environ:
        # N processes on one CPU: each gets its share of the cores instead of all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", timeout=TIMEOUT)


def teardown() -> None:
    if active():
        _group().destroy_process_group()


# --- the parent -----------------------------------------------------------------------------
# The signals torchelastic's agent takes over while it runs (it stops the workers, then raises SignalException).
AGENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def launch_config(nproc: int, log_dir: str, nnodes: int = 1, rdzv_endpoint: str = ""):
    """torchrun's settings for N workers per node: no restarts (a failed rank fails the run, which
    `collapse resume` continues), the c10d rendezvous, and on one node a loopback store on a port the kernel
    picks as it binds (torchrun --standalone): held until the run ends, so no other process can take it
    (torch >= 2.4, whose workers share the agent's store; before, the agent probed a free port for them).
    The run id names the rendezvous at the endpoint: the same on every machine, or they never meet."""
    import dataclasses

    from torch.distributed.launcher.api import LaunchConfig

    settings: dict[str, Any] = dict(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id="collapse",
        rdzv_backend="c10d", rdzv_endpoint=rdzv_endpoint or "127.0.0.1:0", max_restarts=0,
        monitor_interval=0.1, start_method="spawn", shutdown_timeout=int(GRACE_S))
    if nnodes == 1:
        settings["local_addr"] = "127.0.0.1"  # else the rank-0 address is the host's FQDN, which may not resolve
    known = {f.name for f in dataclasses.fields(LaunchConfig)}
    if "logs_specs" in known:  # torch >= 2.3; before, the log folder was a field of its own
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

        settings["logs_specs"] = DefaultLogsSpecs(log_dir=log_dir)
    else:
        settings["log_dir"] = log_dir
    return LaunchConfig(**{key: value for key, value in settings.items() if key in known})


def spawn(target: Callable[..., Any], nproc: int, args: Sequence = (), device_choice: str = "cpu",
          nnodes: int = 1, rdzv_endpoint: str = "") -> list:
    """Run `target(*args)` in `nproc` fresh processes (per node) joined in one process group; their results by rank.

    torchelastic's agent (the engine under torchrun) starts and watches them. The first worker to fail ends
    them all (SIGTERM, SIGKILL after GRACE_S), and WorkerFailed names the rank and its error. Ctrl-C or
    SIGTERM in the parent stops every worker, then reaches the parent's own handler (a KeyboardInterrupt);
    a parent killed outright leaves no worker behind either (each exits when its parent is gone).
    """
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    handlers = {sig: signal.getsignal(sig) for sig in AGENT_SIGNALS}
    # The agent's error files live here while the run lasts; torchelastic would leave a folder in /tmp each run.
    with tempfile.TemporaryDirectory(prefix="collapse-workers-") as log_dir, _quiet_agent():
        try:
            config = launch_config(nproc, log_dir, nnodes, rdzv_endpoint)
            by_rank = elastic_launch(config, _worker)(device_choice, target, tuple(args), nnodes > 1)
        except ChildFailedError as err:
            raise _failure(err.failures, log_dir, nproc * nnodes) from None
        except SignalException as err:
            signum = err.sigval
        else:
            return [by_rank[r] for r in sorted(by_rank)]
        finally:
            for sig, handler in handlers.items():  # the agent leaves its handlers installed
                signal.signal(sig, handler)
    # Every worker is stopped: the signal now gets the handling it had before (cli: an interrupted run).
    signal.raise_signal(signum)
    raise KeyboardInterrupt()  # a handler that returned: the run was stopped all the same


class _quiet_agent:
    """The agent logs each worker's start and stop to stderr; collapse reports failures in one line of its own."""

    LOGGERS = ("torch.distributed", "torch.multiprocessing")

    def __enter__(self) -> None:
        import logging

        self.loggers = [logging.getLogger(name) for name in self.LOGGERS]
        self.saved = [(logger.propagate, list(logger.handlers)) for logger in self.loggers]
        for logger in self.loggers:
            logger.propagate, logger.handlers = False, [logging.NullHandler()]

    def __exit__(self, *exc) -> None:
        for logger, (propagate, handlers) in zip(self.loggers, self.saved):
            logger.propagate, logger.handlers = propagate, handlers


def _failure(failures: dict, log_dir: str, n_ranks: int) -> BaseException:
    """The error the parent raises for the failed workers: the first to fail speaks for the run.

    A worker that died without a report (a signal, os._exit) goes first: the others' errors are then
    the collectives that lost it. Else the first report written, read from every rank's error file: the
    agent lists only the workers it saw fail, and a rank that reported may still be exiting while the peers
    it left fail at their next collective.
    """
    silent = sorted(r for r, failure in failures.items() if not Path(failure.error_file).is_file())
    if silent:
        code = failures[silent[0]].exitcode
        if code in (-signal.SIGTERM, 128 + signal.SIGTERM, -signal.SIGINT):
            return KeyboardInterrupt()  # stopped from outside (a scheduler, `kill`): resumable
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return WorkerFailed(f"rank {silent[0]} of {n_ranks} died ({how}) without a report")
    # DefaultLogsSpecs' layout: <log_dir>/<run>/attempt_0/<local rank>/error.json; global = local + this node's first.
    first = min(Path(log_dir).glob("*/attempt_*/*/error.json"), key=lambda path: path.stat().st_mtime_ns)
    node_start = next(r - int(Path(failure.error_file).parent.name) for r, failure in failures.items())
    worker_rank, report = node_start + int(first.parent.name), json.loads(first.read_text())["message"]
    outcome, _, message = report["message"].partition(": ")
    if outcome == _Interrupted.__name__:
        return KeyboardInterrupt()
    if outcome == _Refused.__name__:  # bad input or a diverged loss: the same line one process would give
        return CollapseError(message)
    return WorkerFailed(f"rank {worker_rank} of {n_ranks} failed: {report['message']}",
                        report["extraInfo"]["py_callstack"])


class _Refused(Exception):
    """A worker's CollapseError, on its way to the parent (torchelastic's error file holds its class name)."""


class _Interrupted(Exception):
    """A worker's KeyboardInterrupt, on its way to the parent; an Exception, so that its process fails."""


def _worker(device_choice: str, target: Callable[..., Any], args: tuple, args_of_rank0: bool) -> Any:
    """One rank, started by the agent with RANK, WORLD_SIZE, MASTER_ADDR/PORT set: join the group, run, leave.

    On several machines each machine's parent composed its own arguments (config, resume or not); with
    `args_of_rank0` every rank runs global rank 0's, so that all agree.

    A failure leaves as an exception: torchelastic writes its class, message and traceback to the
    rank's error file, which the parent reads (`_failure`).
    """
    _exit_with_parent()
    try:
        init(device_choice)
        if args_of_rank0:
            shared = [args]
            _group().broadcast_object_list(shared, src=0)
            args = shared[0]
        result = target(*args)
    except CollapseError as err:  # already one line for the user
        raise _Refused(str(err)) from None
    except KeyboardInterrupt:
        raise _Interrupted() from None
    # A failed rank stays in the group until its error file is written: its peers fail only after it.
    teardown()
    return result


def _exit_with_parent() -> None:
    """End this worker as soon as its parent is gone (SIGKILLed, OOM-killed): nobody would collect its
    result, and it would hold its GPU and CPUs until the process group's timeout.

    torch.multiprocessing asks Linux for a SIGINT when the parent dies (PR_SET_PDEATHSIG), but Python
    acts on it only when the main thread is back in the interpreter: a rank blocked in a collective (a
    barrier waiting for rank 0's checkpoint) would sit there until TIMEOUT. multiprocessing's sentinel of
    the parent is a pipe whose other end only the parent holds: it becomes readable the moment the parent
    dies, and a thread waiting on it ends the process from outside the blocked call.
    """
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing: nothing to watch
        return

    def watch() -> None:
        connection.wait([parent.sentinel])
        os._exit(128 + signal.SIGHUP)  # as a shell's SIGHUP to the children of a terminal that closed

    threading.Thread(target=watch, name="collapse-parent-watch", daemon=True).start()


def launch(rank_main: Callable[[Any, str], None], run_config, path: Path) -> None:
    """The parent's side of `collapse run nproc=N`: `rank_main(run_config, path)` (the loop) in N workers;
    raises on the first failure. The loop is passed in, so this module stays below it.

    A crashed worker's traceback goes to the run's collapse.log, and the error line points there.
    """
    try:
        spawn(rank_main, run_config.nproc, (run_config, str(path)), run_config.device, run_config.nnodes,
              run_config.rdzv_endpoint)
    except WorkerFailed as err:
        if not err.details or not path.is_dir():
            raise
        with open(path / "collapse.log", "a") as log_file:
            log_file.write(f"{err}\n{err.details}")
        raise WorkerFailed(f"{err} (traceback in {path / 'collapse.log'})") from None
