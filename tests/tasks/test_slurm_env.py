"""SLURM without a cluster: Lightning reads world size and ranks from the variables ``srun`` sets (as Lightning's
own accelerator-connector tests do, by building a Trainer under a patched environment), and the scripts in
``configs/cluster/`` are valid: their ``srun``/``torchrun`` line parses as a ``densecnn fit`` command and the
requeue settings match the signal Lightning listens for."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
import yaml
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy

from densecnn.errors import ConfigError
from tasks.cli import find_resume_checkpoint, main
from tests.helpers import QUICKSTART, REPO, classification_args

CLUSTER = REPO / "configs" / "cluster"
#: variables that would make Lightning pick another cluster environment (torchrun's) or a leftover address
LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
                      "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


def slurm_variables(nodes: int, tasks_per_node: int, node: int, local: int, **extra: str) -> dict[str, str]:
    """What ``srun`` exports to one task of an ``sbatch --nodes=N --ntasks-per-node=T`` job (block distribution:
    task ids run node by node)."""
    return {"SLURM_JOB_ID": "4242317", "SLURM_JOB_NAME": "densecnn", "SLURM_NNODES": str(nodes),
            "SLURM_NTASKS": str(nodes * tasks_per_node), "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
            "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local), "SLURM_PROCID": str(node * tasks_per_node + local),
            "SLURM_NODELIST": f"gpu[{17}-{17 + nodes - 1}]", "SLURM_GPUS_ON_NODE": str(tasks_per_node), **extra}


@pytest.fixture
def slurm_env():
    """Set SLURM's variables for one test; the whole environment is restored afterwards (Lightning writes
    MASTER_ADDR and MASTER_PORT into it)."""
    with mock.patch.dict(os.environ):
        for name in [*LAUNCHER_VARIABLES, *(k for k in os.environ if k.startswith("SLURM_"))]:
            os.environ.pop(name, None)

        def apply(variables: dict[str, str]) -> None:
            os.environ.update(variables)
        yield apply


@pytest.mark.parametrize("node, local", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_lightning_reads_world_size_and_ranks_from_slurm(slurm_env, node, local):
    slurm_env(slurm_variables(nodes=2, tasks_per_node=2, node=node, local=local))
    trainer = pl.Trainer(num_nodes=2, devices=2, accelerator="cpu", strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and isinstance(trainer.strategy, DDPStrategy)
    # the block distribution by hand: 2 nodes x 2 tasks, task id = node * 2 + local id
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (
        4, node * 2 + local, node, local)
    assert trainer.is_global_zero == (node == 0 and local == 0)
    # rendezvous: the first host of the node list, and a port every task derives from the job id (last 4 digits
    # + 15000), so no task has to be told
    assert environment.main_address == "gpu17"
    assert environment.main_port == 2317 + 15000


def test_a_slurm_allocation_that_does_not_match_the_trainer_is_refused_by_the_cli(slurm_env, classification_root,
                                                                                   tmp_path):
    # the job asks for 4 tasks per node, the command line for 2 devices: 8 processes would wait for 4 forever
    slurm_env(slurm_variables(nodes=2, tasks_per_node=4, node=0, local=0))
    with pytest.raises(ConfigError, match="ntasks-per-node=4"):
        main(["fit", "--config", str(QUICKSTART / "classification.yaml"),
              "--data.init_args.root", str(classification_root), "--trainer.default_root_dir", str(tmp_path),
              "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "2",
              "--trainer.strategy", "ddp"])


def test_lightning_installs_the_requeue_handler_for_the_script_signal(slurm_env):
    """``#SBATCH --signal`` must name the signal Lightning's SLURM environment waits for, or the job is killed at
    its time limit without the checkpoint and requeue."""
    slurm_env(slurm_variables(nodes=1, tasks_per_node=1, node=0, local=0))
    script = (CLUSTER / "slurm_ddp.sbatch").read_text()
    name, seconds = re.search(r"^#SBATCH --signal=(?:B:)?(\w+)@(\d+)", script, re.MULTILINE).groups()
    assert "#SBATCH --requeue" in script.splitlines() and int(seconds) >= 60
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="ddp", logger=False, enable_checkpointing=False)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert environment.requeue_signal == getattr(signal, name)
    previous = signal.getsignal(environment.requeue_signal)
    trainer._signal_connector.register_signal_handlers()
    try:
        handler = signal.getsignal(environment.requeue_signal)
        assert trainer._signal_connector._slurm_sigusr_handler_fn in handler.signal_handlers
    finally:
        trainer._signal_connector.teardown()
        signal.signal(environment.requeue_signal, previous)


def command_line(script: str, program: str) -> list[str]:
    """The ``program ...`` command of a shell script (continuation lines joined), split as the shell would."""
    joined = re.sub(r"\\\n\s*", " ", script)
    (line,) = [line.strip() for line in joined.splitlines() if line.strip().startswith(program)]
    return shlex.split(line)


def substitute(words: list[str], variables: dict[str, str]) -> list[str]:
    """``$NAME``, ``${NAME}`` and ``${NAME:-default}`` replaced; ``"$@"`` (the user's extra arguments) dropped."""
    return [re.sub(r"\$\{?(\w+)(?::-([^}]*))?\}?", lambda m: variables.get(m[1], m[2] or ""), w)
            for w in words if w != "$@"]


def print_config(args: list[str]) -> dict:
    out = StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_the_sbatch_srun_line_is_a_valid_fit_command_with_resume(slurm_env):
    script = (CLUSTER / "slurm_ddp.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(CLUSTER / "slurm_ddp.sbatch")], check=False).returncode == 0
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, re.MULTILINE))
    nodes, tasks, gpus = int(sbatch["nodes"]), int(sbatch["ntasks-per-node"]), int(sbatch["gpus-per-node"])
    assert tasks == gpus  # one task per GPU: Lightning's SLURM environment requires devices == ntasks-per-node
    variables = slurm_variables(nodes=nodes, tasks_per_node=tasks, node=0, local=0, CONFIG=str(QUICKSTART / "classification.yaml"),
                                RUN_DIR="/shared/runs/exp1", WORKERS="7")
    words = substitute(command_line(script, "srun"), variables)
    start = words.index("python")
    assert words[start:start + 4] == ["python", "-m", "densecnn", "fit"]
    args = words[start + 3:]
    assert args[args.index("--ckpt_path") + 1] == "last"  # a requeued job continues where it stopped
    config = print_config([*args, "--print_config"])
    assert config["trainer"]["num_nodes"] == nodes and int(config["trainer"]["devices"]) == tasks
    assert config["trainer"]["strategy"] == "ddp" and config["trainer"]["accelerator"] == "gpu"
    assert config["trainer"]["default_root_dir"] == "/shared/runs/exp1"
    assert config["data"]["init_args"]["num_workers"] == 7


def test_the_torchrun_script_is_a_valid_fit_command():
    script = (CLUSTER / "torchrun_multinode.sh").read_text()
    assert subprocess.run(["bash", "-n", str(CLUSTER / "torchrun_multinode.sh")], check=False).returncode == 0
    variables = {"NNODES": "2", "NODE_RANK": "1", "GPUS_PER_NODE": "8", "MASTER_ADDR": "10.0.0.1",
                 "MASTER_PORT": "29500", "ACCELERATOR": "gpu", "CONFIG": str(QUICKSTART / "classification.yaml"),
                 "RUN_DIR": "/shared/r"}
    words = substitute(command_line(script, "torchrun"), variables)
    options = dict(w.lstrip("-").split("=", 1) for w in words[:words.index("-m")] if w.startswith("--"))
    assert options == {"nnodes": "2", "node_rank": "1", "nproc_per_node": "8", "master_addr": "10.0.0.1",
                       "master_port": "29500"}
    args = words[words.index("densecnn") + 1:]
    config = print_config([*args, "--print_config"])
    # torchrun starts the processes: Lightning must expect exactly nnodes x nproc_per_node of them
    assert config["trainer"]["num_nodes"] == 2 and int(config["trainer"]["devices"]) == 8
    assert config["trainer"]["strategy"] == "ddp"


def fake_checkpoint(path, step: int, age_s: float) -> None:
    torch.save({"state_dict": {}, "global_step": step}, path)
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_ckpt_path_last_prefers_the_newer_of_last_and_the_requeue_checkpoint(tmp_path):
    (tmp_path / "lightning_logs/version_0/checkpoints").mkdir(parents=True)
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    fake_checkpoint(last, 400, age_s=300)
    fake_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 100, age_s=900)  # an older requeue, superseded
    assert find_resume_checkpoint([tmp_path]) == last
    fake_checkpoint(tmp_path / "hpc_ckpt_2.ckpt", 450, age_s=60)  # saved on SIGUSR1 after the last.ckpt
    assert find_resume_checkpoint([tmp_path]) == tmp_path / "hpc_ckpt_2.ckpt"
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"cut short by the kill")  # unreadable: the next one is used
    with pytest.warns(UserWarning, match="hpc_ckpt_3"):
        assert find_resume_checkpoint([tmp_path]) == tmp_path / "hpc_ckpt_2.ckpt"


class SignalledAtStep(pl.Callback):
    """What SLURM does to a job reaching its time limit with ``--signal=SIGUSR1@90``: SIGUSR1 at ``step``, then
    (here at once) SIGKILL."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGUSR1)
            time.sleep(0.2)  # the Python-level handler runs here, in this (main) thread
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_a_job_signalled_before_its_time_limit_requeues_and_resumes_from_lightnings_checkpoint(classification_root,
                                                                                              tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")}
    env.update(slurm_variables(nodes=1, tasks_per_node=1, node=0, local=0), PYTHONPATH=str(REPO),
               PATH=f"{bin_dir}:{env['PATH']}", OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    # 60 images in batches of 16: 4 steps an epoch, last.ckpt at step 4, the signal at step 6
    args = classification_args(classification_root, run_dir, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    callbacks = json.dumps([{"class_path": "tests.tasks.test_slurm_env.SignalledAtStep", "init_args": {"step": 6}}])

    def fit(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "densecnn", "fit", *args, *extra], cwd=REPO, env=env, check=False,
                              capture_output=True, text=True, timeout=300)

    first = fit("--trainer.callbacks", callbacks)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242317"]
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 6
    (last,) = run_dir.rglob("last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 4

    second = fit()  # the requeued job: the same command
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {run_dir / 'hpc_ckpt_1.ckpt'}" in second.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 12
    assert [p.parent.parent.name for p in run_dir.rglob("last.ckpt")] == [last.parent.parent.name]  # same version
