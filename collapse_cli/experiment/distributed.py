"""One run across several processes (`collapse run nproc=N`): one per GPU, or gloo processes on the CPU.

The parent composes the config and creates the run folder; it then starts N workers with
`spawn`, hands each the validated RunConfig (pickled) and the folder, and watches them. Every
worker runs the same loop on the same data with the same seeds, so they agree on everything
without being told; they differ in three places, each of which ends in a collective:

    train     DistributedDataParallel: every rank takes its share of each global batch
    generate  rank r decodes chunks r, r+N, ...; all ranks gather them back in chunk order
    evaluate  rank r scores batches r, r+N, ...; the same gather

Only rank 0 writes (`is_main`): the run folder's writes check it. Without a process group (the
default nproc=1) every helper here is the identity, and the code reads like single-device code.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing import connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collapse_cli.errors import CollapseError
from collapse_cli.ranks import active, is_main, rank, world_size  # noqa: F401 (is_main: for callers of this module)
from collapse_cli.ranks import process_group as _group

if TYPE_CHECKING:
    import torch

# A rank waits at a collective while another one works alone (rank 0 saving a checkpoint,
# a straggler's last chunk); past this the process group gives up instead of hanging forever.
TIMEOUT = timedelta(minutes=30)
# After the first failure, the other workers get this long to exit on SIGTERM before SIGKILL.
GRACE_S = 5.0


class WorkerFailed(CollapseError):
    """A worker of a distributed run failed; the message says which and why, `details` its traceback."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


# --- inside a worker ------------------------------------------------------------------------
def local_rank() -> int:
    """The GPU of this process on its machine (one machine: its rank)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def barrier() -> None:
    if active():
        _group().barrier()


def init(device_choice: str) -> None:
    """Join the process group described by MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE: NCCL on CUDA, else gloo.

    The rendezvous store at MASTER_PORT is the parent's (`host_store`); every rank joins it as a client.
    """
    import torch
    import torch.distributed as dist

    cuda = device_choice != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif "OMP_NUM_THREADS" not in os.environ:
        # N processes on one CPU: each gets its share of the cores instead of all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    n_ranks = int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), n_ranks, is_master=False,
                          timeout=TIMEOUT)
    dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=int(os.environ["RANK"]),
                            world_size=n_ranks, timeout=TIMEOUT)


def teardown() -> None:
    if active():
        _group().destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to train through: DDP (gradients averaged across ranks) when distributed, else the model."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_batch(rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's rows of a global batch, and the weight of its mean loss.

    DDP averages gradients over ranks; weighting each rank's mean loss by its share of the batch
    (times N) makes that average the gradient of the global batch's mean loss, as with one process,
    also when the batch does not split evenly. A rank left without rows (a last batch smaller
    than N) runs one row with weight 0, since every rank must take part in every step.
    """
    n_ranks = world_size()
    if n_ranks == 1:
        return rows, 1.0
    mine = rows[rank()::n_ranks]
    if len(mine) == 0:
        return rows[:1], 0.0
    return mine, len(mine) * n_ranks / len(rows)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average of a tensor over ranks (every rank gets it); the tensor itself without a group."""
    if not active():
        return value
    total = value.detach().clone()
    _group().all_reduce(total)
    return total / world_size()


def my_items(n_items: int) -> range:
    """The items (chunks, batches) of this rank: r, r+N, r+2N, ..."""
    return range(rank(), n_items, world_size())


def gather_items(mine: list, n_items: int) -> list:
    """Every rank's results of `my_items(n_items)`, on every rank, back in item order."""
    if not active():
        return mine
    by_rank: list = [None] * world_size()
    _group().all_gather_object(by_rank, mine)
    return [by_rank[k % world_size()][k // world_size()] for k in range(n_items)]


# --- the parent -----------------------------------------------------------------------------
def host_store(nproc: int):
    """The workers' rendezvous store, served by the parent on a loopback port the kernel picks as it binds.

    The port is held from the moment it exists until the run ends: picking a free port for rank 0 to
    bind later would leave a moment in which another process can take it (EADDRINUSE in rank 0).
    """
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False, timeout=TIMEOUT)


def spawn(target: Callable[..., Any], nproc: int, args: Sequence = (), device_choice: str = "cpu") -> list:
    """Run `target(*args)` in `nproc` fresh processes joined in one process group; their results by rank.

    The first worker to fail ends them all: the others are terminated (killed after GRACE_S),
    and WorkerFailed names the rank and its error. Ctrl-C or SIGTERM in the parent (a
    KeyboardInterrupt) also stops every worker before it propagates; a parent killed outright
    leaves no worker behind either (each exits when its parent is gone).
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
    store = host_store(nproc)  # served until spawn returns, after every worker has left the group
    port = store.port
    pipes, workers = [], []
    try:
        for worker_rank in range(nproc):
            reader, writer = context.Pipe(duplex=False)
            worker = context.Process(target=_worker, name=f"collapse-rank{worker_rank}",
                                     args=(worker_rank, nproc, port, device_choice, target, tuple(args), writer))
            worker.start()
            writer.close()  # the worker holds the write end; EOF here means it is gone
            pipes.append(reader)
            workers.append(worker)
        results = _watch(workers, pipes)
        _let_exit(workers)
        return results
    finally:
        _stop(workers)


def _watch(workers: list, pipes: list) -> list:
    """Results by rank once all workers succeed; WorkerFailed at the first report of a failure."""
    results: list = [None] * len(workers)
    waiting = dict(enumerate(pipes))
    while waiting:
        for pipe in connection.wait(list(waiting.values())):
            worker_rank = next(r for r, p in waiting.items() if p is pipe)
            del waiting[worker_rank]
            try:
                outcome, payload = pickle.loads(pipe.recv_bytes())
            except EOFError:  # died without a word: killed (OOM killer, signal) or os._exit
                workers[worker_rank].join(1.0)
                code = workers[worker_rank].exitcode
                if code in (-signal.SIGTERM, 128 + signal.SIGTERM, -signal.SIGINT):
                    raise KeyboardInterrupt() from None  # stopped from outside (a scheduler, `kill`): resumable
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                raise WorkerFailed(f"rank {worker_rank} of {len(workers)} died ({how}) without a report") from None
            if outcome == "interrupted":
                raise KeyboardInterrupt()
            if outcome == "refused":  # bad input or a diverged loss: the same line one process would give
                raise CollapseError(payload)
            if outcome == "crashed":
                message, details = payload
                raise WorkerFailed(f"rank {worker_rank} of {len(workers)} failed: {message}", details)
            results[worker_rank] = payload
    return results


def _let_exit(workers: list) -> None:
    """Wait (GRACE_S at most) for workers that reported success to end on their own.

    A worker's own exit runs multiprocessing's finalizers, which unlink the semaphores it made (tqdm makes
    one for every bar, even a disabled one); terminated meanwhile (SIGTERM: os._exit), it leaves them to
    the resource tracker, which reports them as leaked when the run ends.
    """
    deadline = time.monotonic() + GRACE_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


def _stop(workers: list) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(GRACE_S)
        if worker.is_alive():
            worker.kill()
            worker.join()


def _worker(worker_rank: int, nproc: int, port: int, device_choice: str, target: Callable[..., Any], args: tuple,
            report) -> None:
    """One rank: join the group, run the target, report (outcome, payload) to the parent, leave."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(worker_rank),
                      WORLD_SIZE=str(nproc), LOCAL_RANK=str(worker_rank))
    # SIGTERM from the parent (another rank failed, or the run was stopped) ends this rank quietly.
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
    _exit_with_parent()
    try:
        init(device_choice)
        outcome = ("ok", target(*args))
    except CollapseError as err:  # already one line for the user
        outcome = ("refused", str(err))
    except KeyboardInterrupt:
        outcome = ("interrupted", "")
    except BaseException as err:  # every failure goes to the parent, the traceback with it
        outcome = ("crashed", (f"{type(err).__name__}: {err}", traceback.format_exc()))
    # Report before leaving the group: the other ranks see this one go only after the parent knows why.
    # Plain pickle: a Connection's own pickler would pass tensors as shared memory of a process about to exit.
    report.send_bytes(pickle.dumps(outcome))
    report.close()
    try:
        teardown()
    except Exception:  # the outcome is reported; a peer already gone can make leaving fail
        pass


def _exit_with_parent() -> None:
    """End this worker as soon as its parent is gone (SIGKILLed, OOM-killed): nobody would collect its
    result, and it would hold its GPU and CPUs until the process group's timeout.

    multiprocessing's sentinel of the parent is a pipe whose other end only the parent holds: it
    becomes readable the moment the parent dies, so a thread waiting on it costs nothing meanwhile.
    """
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:  # not started by spawn(): nothing to watch
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
        spawn(rank_main, run_config.nproc, (run_config, str(path)), run_config.device)
    except WorkerFailed as err:
        if not err.details or not path.is_dir():
            raise
        with open(path / "collapse.log", "a") as log_file:
            log_file.write(f"{err}\n{err.details}")
        raise WorkerFailed(f"{err} (traceback in {path / 'collapse.log'})") from None
