"""One run across several processes (`collapse run nproc=N`, issue #13 part 5), on the CPU with gloo and N=2.

Workers are real spawned processes in a real gloo process group: the sharded generation and
scoring give what one process gives, bit for bit; DDP training gives it up to the order of
float sums; a whole run leaves one finished folder; failures and signals end every worker.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TINY,
    collapse_command,
    finished_runs,
    read_metrics,
    read_status,
    run_collapse,
    run_in_process,
    stable,
    start_collapse,
)
from test_errors import one_error_line
from test_resume import signal_when
from transformers import OPTConfig, OPTForCausalLM

from collapse_cli import collectives, ranks
from collapse_cli.config import TrainConfig, check_nodes, check_nproc
from collapse_cli.errors import CollapseError
from collapse_cli.experiment import distributed
from collapse_cli.experiment.distributed import WorkerFailed
from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm.evaluate import score_blocks, sliding_nll
from collapse_cli.families.lm.generate import generate
from collapse_cli.families.lm.train import train

# How long a test waits for what must happen (a run to end, workers to exit) before calling it a hang: far
# more than any machine needs, however loaded, and far less than the 30-minute process-group timeout that
# a hung rank would wait for. Liveness, never speed: how fast is for scripts/bench.py.
PATIENCE_S = 600

CPU = torch.device("cpu")
VOCAB = 50
# Relative tolerance of float metrics between nproc=2 and nproc=1: gloo sums the two ranks'
# gradients in another order than one process does, which moves metrics by ~1e-7 here.
METRIC_RTOL = 1e-3


def tiny_model() -> torch.nn.Module:
    config = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                       max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1,
                       eos_token_id=1, dropout=0.0, attention_dropout=0.0)  # dropout would draw per-process masks
    torch.manual_seed(0)
    model = OPTForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


def workload() -> dict:
    rng = np.random.default_rng(0)
    transition = rng.dirichlet(np.ones(VOCAB), size=VOCAB)
    return {
        # 11 prompts in chunks of 3: chunks 0, 2 on rank 0, chunks 1, 3 (the short one) on rank 1.
        "prompts": rng.integers(2, VOCAB, size=(11, 5)), "generate": GenerateConfig(new_tokens=8, batch_size=3),
        "blocks": rng.integers(2, VOCAB, size=(13, 16)), "transition": transition,
        # 10 blocks in global batches of 3: the last batch has one row, so rank 1 runs a weight-0 row.
        "train_blocks": rng.integers(2, VOCAB, size=(10, 16)),
        "train": TrainConfig(epochs=2, lr=1e-3, batch_size=3, block_size=16, warmup_ratio=0.1),
    }


def everything(model: torch.nn.Module, work: dict) -> dict:
    """What each rank (or the single process) computes: a corpus, scores, a trained model."""
    corpus = generate(model, work["prompts"], work["generate"], seed=7, device=CPU)
    nll, ce, entropy = score_blocks(model, work["blocks"], 4, CPU, work["transition"])
    sliding = sliding_nll(model, work["blocks"].reshape(-1), 16, 8, 4, CPU)
    trained = copy.deepcopy(model)
    stats = train(trained, work["train_blocks"], work["train"], seed=3, device=CPU, generation=0)
    return {"corpus": corpus, "nll": nll, "ce": ce, "entropy": entropy, "sliding": sliding,
            "weights": {k: v.detach().clone() for k, v in trained.state_dict().items()}, "loss_last": stats.loss_last,
            "rank": ranks.rank(), "world": ranks.world_size(),
            "shards": [collectives.shard_batch(torch.arange(n)) for n in (5, 1)]}


@pytest.mark.slow
def test_two_gloo_ranks_give_the_corpus_and_scores_of_one_process():
    model, work = tiny_model(), workload()
    alone = everything(model, work)
    by_rank = distributed.spawn(everything, 2, (model, work))
    assert [r["rank"] for r in by_rank] == [0, 1] and all(r["world"] == 2 for r in by_rank)
    assert alone["corpus"].shape == (11, 8)
    for result in by_rank:  # every rank gets everything back, in order
        assert np.array_equal(result["corpus"], alone["corpus"])
        # Same batches as one process, reassembled in order: the same numbers, not merely close ones.
        assert np.array_equal(result["nll"], alone["nll"])
        assert (result["ce"], result["entropy"], result["sliding"]) == (alone["ce"], alone["entropy"], alone["sliding"])
        # DDP: the same steps on the weighted shares of each global batch; only float sums differ. Adam turns
        # that noise into weight differences of ~2e-6 here; unweighted shares would make them ~7e-3.
        for name, weight in alone["weights"].items():
            torch.testing.assert_close(result["weights"][name], weight, rtol=0, atol=1e-4)
        assert result["loss_last"] == pytest.approx(alone["loss_last"], rel=1e-5)
    for name in alone["weights"]:  # the by_rank end with identical weights
        assert torch.equal(by_rank[0]["weights"][name], by_rank[1]["weights"][name])
    # Global batch of 5: rank 0 rows 0, 2, 4 (weight 3*2/5), rank 1 rows 1, 3 (2*2/5).
    # A batch of 1: rank 0 takes it (weight 1*2/1), rank 1 runs that row with weight 0.
    (rows0, weight0), (one0, w_one0) = by_rank[0]["shards"]
    (rows1, weight1), (one1, w_one1) = by_rank[1]["shards"]
    assert rows0.tolist() == [0, 2, 4] and weight0 == pytest.approx(1.2)
    assert rows1.tolist() == [1, 3] and weight1 == pytest.approx(0.8)
    assert (one0.tolist(), w_one0) == ([0], 2.0) and (one1.tolist(), w_one1) == ([0], 0.0)
    rows_alone, weight_alone = alone["shards"][0]
    assert rows_alone.tolist() == [0, 1, 2, 3, 4] and weight_alone == 1.0


def _fail_on_rank_1(pid_folder: str, how: str) -> None:
    Path(pid_folder, str(os.getpid())).touch()
    collectives.barrier()  # both ranks have said who they are
    if ranks.rank() == 1:
        if how == "raise":
            raise ValueError("boom on rank 1")
        os.kill(os.getpid(), signal.SIGKILL)
    collectives.barrier()  # rank 0 waits here for a rank that never comes
    time.sleep(600)  # should the barrier return after all, the parent must still stop this rank


@pytest.mark.parametrize("how,needle", [("raise", "rank 1 of 2 failed: ValueError: boom on rank 1"),
                                        ("sigkill", "rank 1 of 2 died (killed by signal 9) without a report")])
@pytest.mark.slow
def test_a_failing_rank_ends_every_rank(tmp_path: Path, how: str, needle: str):
    started = time.monotonic()
    with pytest.raises(WorkerFailed) as failure:
        distributed.spawn(_fail_on_rank_1, 2, (str(tmp_path), how))
    assert needle in str(failure.value)
    assert time.monotonic() - started < PATIENCE_S  # no rank waits for the process group's 30-minute timeout
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(pids) == 2
    for pid in pids:  # both workers are gone (and reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_nproc_checks():
    check_nproc(1, "auto", 0)
    check_nproc(4, "cpu", 1)  # CPU processes need no GPU
    check_nproc(2, "auto", 0)  # auto without a GPU: gloo on the CPU
    check_nproc(2, "cuda", 2)
    for nproc, device, n_gpus, needle in [(0, "cpu", 0, "nproc=0 must be at least 1"),
                                          (2, "cuda", 1, "nproc=2 needs 2 GPUs but 1 CUDA device(s) are visible"),
                                          (3, "auto", 2, "nproc=3 needs 3 GPUs but 2")]:
        with pytest.raises(CollapseError, match=re.escape(needle)):
            check_nproc(nproc, device, n_gpus)


def test_node_checks():
    check_nodes(1, "")
    check_nodes(2, "node001:29400")
    for nnodes, endpoint, needle in [(0, "", "nnodes=0 must be at least 1"),
                                     (2, "", "nnodes=2 needs rdzv_endpoint=HOST:PORT"),
                                     (2, "node001", "nnodes=2 needs rdzv_endpoint=HOST:PORT"),
                                     (2, "node001:0", "got 'node001:0'"),
                                     (1, "node001:29400", "rdzv_endpoint=node001:29400 is only for nnodes > 1")]:
        with pytest.raises(CollapseError, match=re.escape(needle)):
            check_nodes(nnodes, endpoint)


@pytest.mark.parametrize("args,needle", [([*TINY, "nproc=0"], "nproc=0 must be at least 1"),
                                         ([*TINY, "nproc=2", "device=cuda"], "nproc=2 needs 2 GPUs but 0 CUDA"),
                                         ([*TINY, "nnodes=2"], "nnodes=2 needs rdzv_endpoint=HOST:PORT"),
                                         (["model=gmm", "dataset=gaussian", "nproc=2"],
                                          "use nproc=1 with model.family=gmm")])
@pytest.mark.slow
def test_bad_nproc_is_one_line(tmp_path: Path, args: list[str], needle: str):
    result = run_collapse(["run", *args], cwd=tmp_path, timeout=PATIENCE_S, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert needle in one_error_line(result)
    assert not (tmp_path / "outputs").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """The same tiny run with one process (in-process) and with two (`collapse` as a subprocess)."""
    root = tmp_path_factory.mktemp("nproc")
    one = root / "one"
    assert run_in_process(["run", *TINY, "device=cpu", f"hydra.run.dir={one}"]) == 0
    result = run_collapse(["run", "nproc=2", "device=cpu", *TINY], cwd=root, timeout=PATIENCE_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "leaked" not in result.stderr, result.stderr[-3000:]  # see test_workers_leave_no_semaphore_behind
    (two,) = (root / "outputs" / "runs").iterdir()  # one folder: workers never compose a config
    return {1: one, 2: two}


def assert_close_metrics(run: Path, reference: Path, rtol: float) -> None:
    rows, expected = stable(read_metrics(run)), stable(read_metrics(reference))
    assert [row["generation"] for row in rows] == [row["generation"] for row in expected] == [0, 1]
    for row, want in zip(rows, expected):
        assert set(row) == set(want)
        for key, value in want.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=rtol), (row["generation"], key)
            else:
                assert row[key] == value, (row["generation"], key)


@pytest.mark.slow
def test_a_two_process_run_finishes_one_folder_with_the_metrics_of_one_process(runs: dict[int, Path]):
    two = runs[2]
    assert finished_runs(two.parent) == [two]
    assert_close_metrics(two, runs[1], METRIC_RTOL)
    assert (two / "summary.json").is_file() and not (two / "reference").exists()
    # Rank 0 alone writes: each generation's line is logged once, and no other rank left a file behind.
    log = (two / "collapse.log").read_text()
    assert log.count("gen 0:") == 1 and log.count("gen 1:") == 1
    assert not [p for p in two.rglob("*") if ".tmp" in p.name]
    files = {run: sorted(str(p.relative_to(run)) for p in run.rglob("*")) for run in (two, runs[1])}
    assert files[two] == files[runs[1]]


@pytest.mark.slow
def test_sigterm_interrupts_a_two_process_run_and_resume_continues_it(tmp_path: Path, runs: dict[int, Path]):
    run = tmp_path / "run"
    proc = start_collapse(["run", "nproc=2", "device=cpu", *TINY, f"hydra.run.dir={run}"], cwd=tmp_path)
    signal_when(proc, run / "gen_001/composition.json", signal.SIGTERM, timeout=PATIENCE_S)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, err[-2000:]
    status = read_status(run)
    assert status["state"] == "interrupted" and "collapse resume" in status["reason"]
    assert (run / "gen_000/DONE").exists() and not (run / "gen_001/DONE").exists()

    # The saved config says nproc=2, so the resume runs two processes again: it ends where the
    # uninterrupted two-process run ended (two ranks sum in a fixed order: the same bits).
    assert run_in_process(["resume", str(run)]) == 0
    assert read_status(run)["state"] == "finished"
    assert_close_metrics(run, runs[2], rtol=0)


@pytest.mark.slow
def test_an_error_in_the_workers_fails_the_run_with_one_line(tmp_path: Path):
    # Every rank finds it once the run started (TINY: 62 blocks; fresh needs 75): the line one process gives.
    result = run_collapse(["run", "nproc=2", "device=cpu", *TINY, "regime=fresh", "mix=0.5",
                           "dataset.max_train_blocks=50"], cwd=tmp_path, timeout=PATIENCE_S)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "regime=fresh" in line and "dataset.max_train_blocks" in line
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    status = read_status(run)
    assert status["state"] == "failed" and status["reason"] == line.removeprefix("collapse: error: ")


def _rendezvous_port(_: int) -> str:
    return os.environ["MASTER_PORT"]


@pytest.mark.slow
def test_the_rendezvous_port_cannot_be_taken_before_the_workers_meet(monkeypatch):
    """Another process binding any loopback port the parent lets go of (the free-port race) cannot stop a run.

    The thief acts at the worst moment: the instant the parent closes a bound TCP socket, it binds that
    port itself. Picking a free port and freeing it for the workers to bind would lose it here.
    """
    import socket

    stolen, close = [], socket.socket.close

    def close_and_steal(sock: socket.socket) -> None:
        port = sock.getsockname()[1] if sock.family == socket.AF_INET and sock.fileno() >= 0 else 0
        close(sock)
        if port:
            thief = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            thief.bind(("127.0.0.1", port))
            thief.listen()
            stolen.append(thief)

    monkeypatch.setattr(socket.socket, "close", close_and_steal)
    try:
        ports = distributed.spawn(_rendezvous_port, 2, (0,))
    finally:
        monkeypatch.undo()
        for thief in stolen:
            thief.close()
    assert ports[0] == ports[1] and int(ports[0]) > 0


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`, from /proc (zombies count as gone)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux's /proc")
@pytest.mark.slow
def test_workers_exit_soon_after_their_parent_is_killed(tmp_path: Path):
    run = tmp_path / "run"
    # Long enough (5,000 generations) that workers still running at the deadline are orphans, not a run finishing.
    # Output to a file, as to a terminal: a pipe the test closes would end the workers at their next write.
    with open(tmp_path / "output.txt", "w") as output:
        proc = subprocess.Popen([*collapse_command(), "run", "nproc=2", "device=cpu", *TINY, "generations=5000",
                                 f"hydra.run.dir={run}"], cwd=tmp_path, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while not (run / "gen_000" / "composition.json").exists():  # both ranks are inside the loop
            assert proc.poll() is None and time.monotonic() < deadline, "the run never reached generation 0"
            time.sleep(0.01)
        workers = [pid for pid in _children(proc.pid) if _is_worker(pid)]
        assert len(workers) == 2
    finally:
        proc.kill()  # SIGKILL: no handler in the parent runs, nothing stops the workers for it
        proc.wait()
    deadline = time.monotonic() + PATIENCE_S
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [pid for pid in workers if _alive(pid)]
    for pid in orphans:  # leave no process behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers outlived their killed parent"


SPAWN_A_LIBRARY_LOCK = """
from collapse_cli.experiment import distributed


def make_a_bar():
    from tqdm import tqdm

    tqdm(disable=True)  # a library's switched-off bar: tqdm makes its multiprocessing lock all the same
    return "done"


if __name__ == "__main__":
    print(distributed.spawn(make_a_bar, 2))
"""


@pytest.mark.slow
def test_workers_leave_no_semaphore_behind(tmp_path: Path):
    """A worker's semaphores (tqdm makes one) are unlinked by its own exit; a worker terminated after its
    report skipped that, and Python's resource tracker printed "leaked semaphore objects" as the run ended."""
    script = tmp_path / "spawn_a_library_lock.py"  # a file: spawned workers import the target from it
    script.write_text(SPAWN_A_LIBRARY_LOCK)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=PATIENCE_S,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "['done', 'done']"
    assert "leaked" not in result.stderr, result.stderr[-3000:]


def _elastic_env() -> dict:
    return {key: os.environ.get(key) for key in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "RANK", "GROUP_RANK")}


@pytest.mark.slow
def test_workers_run_under_torchelastic_and_leave_the_parent_as_it_was(tmp_path: Path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the agent's log folder goes
    handlers = {sig: signal.getsignal(sig) for sig in distributed.AGENT_SIGNALS}
    envs = distributed.spawn(_elastic_env, 2)
    assert [env["RANK"] for env in envs] == ["0", "1"]
    for env in envs:  # started by torchrun's agent, one group of 2 on this machine
        assert env["TORCHELASTIC_RUN_ID"] and env["LOCAL_WORLD_SIZE"] == "2" and env["GROUP_RANK"] == "0"
    assert list(tmp_path.iterdir()) == []  # no torchelastic_* folder per run left in /tmp
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # the agent's signal handlers are gone


def _free_endpoint() -> str:
    """A loopback HOST:PORT free now, as a user picks one for rdzv_endpoint (the race is the test's)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _start_script(folder: Path, source: str, *args: str) -> subprocess.Popen:
    """`source` run as a script file (spawned workers import their target from it), with collapse importable."""
    script = folder / f"script{len(list(folder.glob('script*.py')))}.py"
    script.write_text(source)
    return subprocess.Popen([sys.executable, str(script), *args], cwd=folder, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


NODE = """
import sys
from collapse_cli.experiment import distributed


def who(name):
    from collapse_cli import ranks

    return ranks.rank(), ranks.world_size(), name


if __name__ == "__main__":
    print(distributed.spawn(who, 1, (sys.argv[1],), nnodes=2, rdzv_endpoint=sys.argv[2]))
"""


@pytest.mark.slow
def test_two_machines_meet_at_the_rendezvous_endpoint_and_run_the_arguments_of_rank_0(tmp_path: Path):
    """Two launchers (as `srun` starts one per node), here on one machine: one group of 2 ranks."""
    endpoint = _free_endpoint()
    nodes = [_start_script(tmp_path, NODE, name, endpoint) for name in ("a", "b")]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    (rank_a, world_a, name_a), = ast.literal_eval(outputs[0][0])
    (rank_b, world_b, name_b), = ast.literal_eval(outputs[1][0])
    assert {rank_a, rank_b} == {0, 1} and world_a == world_b == 2
    assert name_a == name_b == ("a" if rank_a == 0 else "b")  # every rank runs global rank 0's arguments


@pytest.mark.slow
def test_two_launchers_of_one_run_as_srun_starts_them_finish_the_run_of_two_processes(tmp_path: Path,
                                                                                      runs: dict[int, Path]):
    """README's SLURM recipe on one machine: `collapse run nnodes=2 nproc=1` twice, one folder named alike."""
    endpoint = _free_endpoint()
    run = tmp_path / "run"
    args = ["run", "nnodes=2", "nproc=1", f"rdzv_endpoint={endpoint}", "device=cpu", *TINY, f"hydra.run.dir={run}"]
    launchers = [start_collapse(args, cwd=tmp_path) for _ in range(2)]
    try:
        errors = [launcher.communicate(timeout=300)[1] for launcher in launchers]
    finally:
        for launcher in launchers:
            launcher.kill()
    assert [launcher.returncode for launcher in launchers] == [0, 0], [err[-2000:] for err in errors]
    assert read_status(run)["state"] == "finished"
    assert (run / "collapse.log").read_text().count("gen 1:") == 1  # global rank 0 alone wrote
    assert_close_metrics(run, runs[2], rtol=0)  # 2 ranks on 2 machines: the bits of 2 ranks on one


STOPPED_FROM_OUTSIDE = """
import os, signal, sys, time
from pathlib import Path
from collapse_cli.experiment import distributed


class Terminated(KeyboardInterrupt):
    pass


def on_sigterm(signum, frame):
    raise Terminated()


def nap(folder):
    Path(folder, str(os.getpid())).touch()
    time.sleep(600)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)  # as cli.execute_guarded
    try:
        distributed.spawn(nap, 2, (sys.argv[1],))
    except Terminated:
        print("terminated")
    except KeyboardInterrupt:
        print("interrupted")
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum,said", [(signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupted")])
def test_a_signal_to_the_parent_stops_the_workers_then_reaches_its_own_handler(tmp_path: Path, signum, said):
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = _start_script(tmp_path, STOPPED_FROM_OUTSIDE, str(pids))
    deadline = time.monotonic() + 120
    while len(list(pids.iterdir())) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert out.strip() == said, err[-2000:]
    for pid in [int(p.name) for p in pids.iterdir()]:
        assert not _alive(pid)
