"""Two simulated nodes on this host: ``torchrun --nnodes 2 --node_rank 0|1 --nproc_per_node 1`` (static
rendezvous on 127.0.0.1, gloo) running ``python -m densecnn fit``/``test`` with ``--trainer.num_nodes 2``.

Each node runs in a working directory of its own with a relative run root, as two machines with their own
disks would: everything a run writes must come from rank 0 (node 0), and node 1's directory stays empty.
What "equal to one process" means: DDP training doubles the global batch and splits the samples, so a
two-node fit equals a two-process fit on one node (bit-identical weights, the same world size and sampler),
and both nodes end with the same weights; evaluation of one fixed checkpoint sees every sample exactly once,
so its metrics equal a single process's on the same data."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
import yaml

from densecnn.data.synthetic.dense import write_dense_dataset
from tests.helpers import REPO, classification_args, run_fresh

pytestmark = pytest.mark.slow  # every test here starts several interpreters
TIMEOUT = 300  # a hung rendezvous or collective fails the test instead of blocking CI
#: variables of an enclosing launcher that would confuse the nodes' own torchrun
LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
                      "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")
TWO_NODES = ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
             "--trainer.strategy", "ddp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(args: list[str], nodes: list[Path], timeout: float = TIMEOUT) -> None:
    """Run ``torchrun --nnodes 2 --node_rank r --nproc_per_node 1 -m densecnn <args>`` for r = 0, 1 in parallel,
    node r in working directory ``nodes[r]``. If one node fails or time runs out, both process groups are killed
    (torchrun's workers too) and the test fails with their output."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    processes, logs = [], []
    with ExitStack() as stack:
        stack.callback(kill_all, processes)  # runs before the logs close: on success, failure or timeout
        for rank, cwd in enumerate(nodes):
            cwd.mkdir(parents=True, exist_ok=True)
            # a file, not a pipe: neither node blocks on a full pipe while the test waits for the other
            log = stack.enter_context(open(cwd.parent / f"{cwd.name}.log", "w+"))
            logs.append(log)
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                 "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                 "-m", "densecnn", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes]
            if all(c == 0 for c in codes):
                return
            if any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.2)
        raise AssertionError(f"two-node run {'failed' if time.monotonic() < deadline else 'timed out'} "
                             f"(exit codes {[p.poll() for p in processes]}):\n" + "\n".join(
                                 f"--- node {r}:\n{_tail(log)}" for r, log in enumerate(logs)))


def kill_all(processes: list[subprocess.Popen]) -> None:
    """Kill each still-running node with its process group (torchrun's workers)."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _tail(log, chars: int = 3000) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-chars:]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def metrics_of(folder: Path) -> dict[str, float]:
    (path,) = folder.rglob("metrics.json")
    return json.loads(path.read_text())


def single_process(subcommand: str, args: list[str], cwd: Path) -> dict[str, float]:
    """``python -m densecnn <subcommand> args`` in one process (``--trainer.devices 1``); its metrics."""
    cwd.mkdir(parents=True, exist_ok=True)
    run = run_fresh(["-m", "densecnn", subcommand, *args, "--trainer.devices", "1", "--trainer.num_nodes", "1",
                     "--trainer.accelerator", "cpu"], cwd=cwd, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-4000:]
    return metrics_of(cwd)


def weights_per_rank(folder: Path) -> list[dict[str, torch.Tensor]]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def save_weights(folder: Path) -> list[str]:
    return ["--trainer.callbacks", json.dumps([{"class_path": "tests.helpers.SaveWeightsPerRank",
                                                "init_args": {"folder": str(folder)}}])]


def test_classification_on_two_nodes_trains_like_two_processes_and_tests_like_one(classification_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(classification_root, root)
    next((root / "test" / "disk").iterdir()).unlink()  # 23 test images for 2 ranks: padding would count one twice
    args = classification_args(root, Path("runs"), "--trainer.max_epochs", "2")  # 60 images, 2 x 16 a step
    nodes = [tmp_path / "node0", tmp_path / "node1"]

    torchrun_two_nodes(["fit", *args, *TWO_NODES, *save_weights(tmp_path / "two_nodes")], nodes)
    (checkpoint,) = nodes[0].rglob("last.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4  # 2 epochs of ceil(60 / 32) steps
    assert files_under(nodes[1]) == []  # rank 0 alone writes checkpoints, config and logs
    node0, node1 = weights_per_rank(tmp_path / "two_nodes")
    assert all(torch.equal(node0[k], node1[k]) for k in node0)  # DDP kept the replicas in sync

    # the oracle for training: Lightning's own two processes on one node (same world size, seed and sampler)
    one_node = run_fresh(["-m", "densecnn", "fit", *classification_args(root, tmp_path / "one_node", "--trainer.max_epochs",
                                                                         "2"), "--trainer.devices", "2",
                          "--trainer.strategy", "ddp", *save_weights(tmp_path / "one_node_w")], timeout=TIMEOUT)
    assert one_node.returncode == 0, one_node.stderr[-4000:]
    reference = weights_per_rank(tmp_path / "one_node_w")[0]
    assert reference.keys() == node0.keys()
    differing = [k for k in node0 if not torch.equal(node0[k], reference[k])]
    assert not differing, differing[:5]

    test_nodes = [tmp_path / "test0", tmp_path / "test1"]
    torchrun_two_nodes(["test", *args, *TWO_NODES, "--ckpt_path", str(checkpoint)], test_nodes)
    assert files_under(test_nodes[1]) == []
    two = metrics_of(test_nodes[0])
    one = single_process("test", [*args, "--ckpt_path", str(checkpoint)], tmp_path / "single")
    assert 0.0 < one["test/acc1"] < 1.0  # otherwise a sample counted twice could not change it
    assert two["test/acc1"] == one["test/acc1"]  # 23 samples: a count, exact
    assert two["test/loss"] == pytest.approx(one["test/loss"], rel=1e-5)


SMALL_HEAD = {"coarse_pool": [2, 2], "coarse_hidden": 32, "coarse_channels": 8, "coarse_size": [6, 8],
              "scale2_image_channels": 8, "scale2_widths": [8, 8], "scale3_image_channels": 8, "scale3_widths": [8]}


def test_depth_on_two_nodes_trains_in_sync_and_tests_like_one_process(tmp_path):
    data = tmp_path / "rooms"
    write_dense_dataset(data, height=24, width=32, splits={"train": 8, "val": 3, "test": 5})  # odd eval splits
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "default_root_dir": "runs", "enable_progress_bar": False,
                    "enable_model_summary": False},
        "model": {"class_path": "DensePredictionTask",
                  "init_args": {"backbone": "cifar_resnet20", "targets": ["depth"], "optimizer": "adamw",
                                "lr": 0.001, **SMALL_HEAD}},
        "data": {"class_path": "DenseDataModule",
                 "init_args": {"root": str(data), "image_size": [24, 32], "batch_size": 2, "num_workers": 0}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "config.yaml")]
    nodes = [tmp_path / "node0", tmp_path / "node1"]

    torchrun_two_nodes(["fit", *args, *TWO_NODES, *save_weights(tmp_path / "w")], nodes)
    (checkpoint,) = nodes[0].rglob("last.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2  # 8 images, 2 nodes x 2 a step
    assert files_under(nodes[1]) == []
    node0, node1 = weights_per_rank(tmp_path / "w")
    assert all(torch.equal(node0[k], node1[k]) for k in node0)

    test_nodes = [tmp_path / "test0", tmp_path / "test1"]
    torchrun_two_nodes(["test", *args, *TWO_NODES, "--ckpt_path", str(checkpoint)], test_nodes)
    assert files_under(test_nodes[1]) == []
    two = metrics_of(test_nodes[0])
    one = single_process("test", [*args, "--ckpt_path", str(checkpoint)], tmp_path / "single")
    depth = {k for k in one if k.startswith("test/depth/")}
    assert {"test/depth/rmse", "test/depth/abs_rel"} <= depth and one["test/depth/rmse"] > 0
    assert set(two) == set(one)
    for key in sorted(one):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
