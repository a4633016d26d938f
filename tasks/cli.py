"""``python -m densecnn {fit,validate,test,predict} --config C.yaml``: stock LightningCLI, plus what makes a
run trustworthy.

Model and data are chosen in YAML by class (``class_path: ClassificationTask``; short names resolve among
the classes ``tasks`` exports). Added here:

* seed 42 by default and the resolved config saved in each run directory (with the checkpoint path that
  ``--ckpt_path last`` resolved to);
* ``--ckpt_path last`` takes the newest readable ``last*.ckpt`` under the run root, the loggers' ``save_dir``
  and any ``ModelCheckpoint.dirpath``; ``fit`` continues the checkpoint's log version;
* a checkpoint is checked before anything runs: one saved by another task, or with another backbone or class
  count than the config states, is refused with an error naming the file and what saved it. The checkpoint's
  hyper-parameters fill in what the config and command line leave unset; what they set explicitly wins (and
  is reported). The pretrained ``weights`` file is never re-read: the checkpoint holds the weights;
* LightningCLI's generic ``--optimizer``/``--lr_scheduler`` are refused: a task's optimizer, parameter groups,
  warm-up and freezing are its own ``model.init_args``.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from densecnn.errors import ConfigError, UserError

import tasks  # noqa: F401  (registers the task and DataModule classes for short class names)
from tasks.base import BaseTask
from tasks.checkpoints import CheckpointError, find_last_checkpoint, last_checkpoint_candidates, read_checkpoint

#: the logger argument that names a run to continue, per logger class
LOGGER_RUN_ARGUMENT = {"TensorBoardLogger": "version", "CSVLogger": "version", "WandbLogger": "version",
                       "MLFlowLogger": "run_id"}
GENERIC_OPTIMISATION_KEYS = ("optimizer", "lr_scheduler")
HINTS = {"DataError": "check data.init_args (root, split files, the file named above)",
         "CheckpointError": "check --ckpt_path and that the config is the one the checkpoint was trained with",
         "ConfigError": "see `python -m densecnn <subcommand> --help`, or --print_config for the full config"}


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    if namespace is None:
        return default
    if isinstance(namespace, (Namespace, dict)):
        return namespace.get(key, default)
    return getattr(namespace, key, default)


def _as_plain(value: Any) -> Any:
    """Namespaces, tuples and lists as JSON-like values, so a config value compares equal to a saved one."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def _loggers(trainer_config: Any) -> list[Any]:
    logger = _get(trainer_config, "logger")
    return list(logger) if isinstance(logger, list) else [logger]


def checkpoint_search_dirs(trainer_config: Any) -> list[Path]:
    """Where a run's checkpoints may be: the run root, each logger's ``save_dir``, each ``ModelCheckpoint``'s
    ``dirpath``."""
    root = Path(_get(trainer_config, "default_root_dir") or os.getcwd())
    dirs = [root]
    for logger in _loggers(trainer_config):
        if save_dir := _get(_get(logger, "init_args"), "save_dir"):
            dirs.append(Path(save_dir))
    for callback in _get(trainer_config, "callbacks") or []:
        if dirpath := _get(_get(callback, "init_args"), "dirpath"):
            dirs.append(Path(dirpath))
    return list(dict.fromkeys(dirs))


def _task_class(class_path: str) -> type[BaseTask]:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module or "tasks"), name)


def describe_checkpoint(hparams: dict[str, Any]) -> str:
    """A short description of what a checkpoint holds (backbone, class count), for error messages.

    Args:
        hparams: the checkpoint's hyper-parameters.
    """
    parts = [f"backbone {hparams['backbone']!r}"] if "backbone" in hparams else []
    if hparams.get("num_classes") is not None:
        parts.append(f"{hparams['num_classes']} classes")
    return ", ".join(parts)


def merge_checkpoint_model(model: Any, explicit_model: Any, checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """The model config to run a checkpoint with: its hyper-parameters, overridden by what the user set
    explicitly; a checkpoint of another task, backbone or class count raises ``CheckpointError``."""
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    task = _task_class(model.class_path)
    saved_task = (checkpoint.get("densecnn") or {}).get("task")
    what = describe_checkpoint(hparams)
    if saved_task is not None and saved_task != task.__name__:
        raise CheckpointError(f"{path}: saved by {saved_task}{f' ({what})' if what else ''}, but the config's model "
                              f"is {task.__name__}; use a {saved_task} config with this checkpoint, or a "
                              f"{task.__name__} checkpoint")
    explicit = _get(explicit_model, "init_args")
    explicit = _as_plain(explicit) if explicit is not None else {}
    for key in task.identity_hparams:
        if key in explicit and key in hparams and _as_plain(hparams[key]) != explicit[key]:
            raise CheckpointError(f"{path}: saved by {saved_task or task.__name__} with {key}={hparams[key]!r}, but "
                                  f"the config or command line sets model.init_args.{key}={explicit[key]!r}; a "
                                  f"checkpoint only fits the model it was trained as")
    current = _as_plain(model.init_args)
    overridden = {k: (hparams[k], v) for k, v in explicit.items()
                  if k in hparams and k != "weights" and _as_plain(hparams[k]) != v}
    for key, (saved, given) in overridden.items():
        print(f"model.init_args.{key}: using {given!r} from the config/command line instead of the checkpoint's "
              f"{saved!r}", file=sys.stderr)
    init_args = {**current, **{k: v for k, v in hparams.items() if k in current}, **explicit}
    init_args["weights"] = None  # the checkpoint holds the weights; the pretrained file may be long gone
    return {"class_path": model.class_path, "init_args": init_args}


def continue_log_version(trainer_config: Any, checkpoint: dict[str, Any]) -> None:
    """Point the configured logger at the checkpoint's run (same class, save_dir and name), so a resumed fit
    keeps writing to the same version."""
    log = (checkpoint.get("densecnn") or {}).get("log")
    if not log or log.get("version") is None:
        return
    root = str(_get(trainer_config, "default_root_dir") or os.getcwd())
    logger = _get(trainer_config, "logger")
    if logger in (None, True):  # Lightning's default: TensorBoard under the run root
        if log["logger"] == "TensorBoardLogger" and Path(log["save_dir"]).resolve() == Path(root).resolve():
            trainer_config["logger"] = Namespace(class_path="pytorch_lightning.loggers.TensorBoardLogger",
                                                 init_args=Namespace(save_dir=root, version=log["version"]))
        return
    for entry in _loggers(trainer_config):
        class_name = str(_get(entry, "class_path", "")).rpartition(".")[2]
        init_args = _get(entry, "init_args")
        if class_name != log["logger"] or init_args is None:
            continue
        save_dir = _get(init_args, "save_dir") or root
        same_place = Path(str(save_dir)).resolve() == Path(str(log["save_dir"])).resolve() if log["save_dir"] else True
        if same_place and _get(init_args, "name", log["name"]) == log["name"]:
            init_args[LOGGER_RUN_ARGUMENT.get(class_name, "version")] = log["version"]
        return


def check_arguments(args: list[str] | None) -> None:
    """Refuse what the parser would report badly: a ``--config`` file that is not YAML (its parse error does
    not name the file), and LightningCLI's ``--optimizer``/``--lr_scheduler``, which would replace the task's
    parameter groups, warm-up and freezing (say which keys configure them instead)."""
    args = list(sys.argv[1:] if args is None else args)
    found = [a.split("=")[0] for a in args if a.startswith(tuple(f"--{k}" for k in GENERIC_OPTIMISATION_KEYS))]
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith(("--config=", "-c=")) else (
            args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else None)
        if value and Path(value).is_file():
            try:
                content = yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as err:
                raise ConfigError(f"{value}: not a valid YAML file: {' '.join(str(err).split())}") from err
            if isinstance(content, dict):
                found += [f"{k}: (in {value})" for k in GENERIC_OPTIMISATION_KEYS if k in content]
    if found:
        raise ConfigError(f"{', '.join(found)}: densecnn tasks configure their own optimisation; use "
                          f"model.init_args.optimizer (sgd | adamw), lr, momentum, nesterov, weight_decay, "
                          f"backbone_lr_scale, and model.init_args.lr_scheduler (none | step | multistep | plateau | "
                          f"cosine), lr_scheduler_kwargs, lr_scheduler_interval, warmup_steps")


def root_cause(err: BaseException) -> BaseException:
    """The innermost error in ``err``'s chain that says something (jsonargparse wraps what a class's
    ``__init__`` raised in its own union-type message)."""
    chosen, current = err, err
    while current is not None:
        if isinstance(current, (ValueError, TypeError, OSError, RuntimeError)) and not str(current).startswith(
                ("Does not validate", "Problem with given")):
            chosen = current
        current = current.__cause__ or current.__context__
    return chosen


def simplify_parser_message(message: str) -> str:
    """jsonargparse's report for a subclass-mode key, without the lines about the ``None`` alternative; an
    unknown ``init_args`` key is named with its full path and the nearest valid ones."""
    noise = ("Subtypes:", "Given value type:", "Given value:", "Errors:",
             "Does not validate against any of the Union subtypes", "- Expected a <class 'NoneType'>")
    message = " ".join(line.strip().removeprefix("- ") for line in message.splitlines()
                       if line.strip() and not line.strip().startswith(noise))
    unknown = re.search(r"""Parser key "(\w+)": Problem with given class_path '([\w.]+)': Option '(\w+)' is not """
                        r"accepted", message)
    if unknown:
        section, class_path, option = unknown.groups()
        try:
            module, _, name = class_path.rpartition(".")
            options = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
        except (ImportError, AttributeError, ValueError):
            options = []
        close = difflib.get_close_matches(option, options, n=3)
        message = (f"{section}.init_args.{option}: {class_path} has no such argument"
                   + (f"; did you mean {', '.join(close)}?" if close else ""))
    return message


class DenseCNNParser(LightningArgumentParser):
    """Reports a bad argument as one line and a hint (no 50-line usage); ``DENSECNN_DEBUG=1`` restores
    jsonargparse's full report."""

    def error(self, message: str, ex: Exception | None = None):
        if os.environ.get("DENSECNN_DEBUG") or not getattr(self, "exit_on_error", True):
            return super().error(message, ex)
        print(f"densecnn: error: {simplify_parser_message(message)}\n  hint: {HINTS['ConfigError']}",
              file=sys.stderr)
        sys.exit(2)


class DenseCNNCLI(LightningCLI):
    """densecnn's LightningCLI: stock ``LightningCLI`` with subclass mode for model and data, seed 42 by default,
    the task's own optimiser keys (LightningCLI's ``--optimizer``/``--lr_scheduler`` refused), checkpoint
    identity checks and ``--ckpt_path last`` resolution. Arguments as ``LightningCLI``.
    """
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", DenseCNNParser)
        kwargs.setdefault("parser_kwargs", {"description": "densecnn: train, evaluate and predict with the papers' CNNs."})
        super().__init__(BaseTask, pl.LightningDataModule, *args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        if not isinstance(args, (dict, Namespace)):
            check_arguments(args)
        self._args = args
        super().parse_arguments(parser, args)

    def instantiate_classes(self) -> None:
        # anything the model, data or trainer refuse while being built comes from a config value
        try:
            super().instantiate_classes()
        except UserError:
            raise
        except (ValueError, TypeError, OSError, RuntimeError, KeyError) as err:
            raise ConfigError(f"building the {self.subcommand} run from its config: {root_cause(err)}") from err
        if getattr(self, "trainer", None) is not None:
            check_cluster_allocation(self.trainer)

    def _explicit_config(self) -> Any:
        """The config as the user wrote it (files and command line), without the parser's defaults."""
        if isinstance(self._args, (dict, Namespace)):
            return self.parser.parse_object(self._args, defaults=False)
        return self.parser.parse_args(self._args, defaults=False)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        path = config.get("ckpt_path")
        if not path or path in ("best", "hpc") or str(path).startswith("registry"):
            return
        if path == "last":
            dirs = checkpoint_search_dirs(config.trainer)
            found = find_resume_checkpoint(dirs)
            if found is None:
                where = ", ".join(str(d) for d in dirs)
                if subcommand == "fit" and not last_checkpoint_candidates(dirs) and not requeue_checkpoints(dirs[0]):
                    print(f"--ckpt_path last: no last*.ckpt under {where}; starting a new run", file=sys.stderr)
                    config["ckpt_path"] = None
                    return
                raise CheckpointError(f"--ckpt_path last: no readable last*.ckpt under {where}")
            print(f"{'resuming' if subcommand == 'fit' else 'loading the model'} from {found}", file=sys.stderr)
            path = str(found)
            config["ckpt_path"] = path  # recorded in the run's config.yaml
        checkpoint = read_checkpoint(path)
        explicit_model = self._explicit_config()[subcommand].get("model")
        merged = merge_checkpoint_model(config.model, explicit_model, checkpoint, path)
        self.config = self.parser.parse_object({subcommand: {"model": merged}}, self.config)
        if subcommand == "fit":
            continue_log_version(self.config[subcommand].trainer, checkpoint)


def requeue_checkpoints(root: Path) -> list[Path]:
    """The ``hpc_ckpt_<n>.ckpt`` files Lightning's SLURM handler saves in the run root when the job is signalled
    before its time limit (``#SBATCH --signal=SIGUSR1@90``, configs/cluster/slurm_ddp.sbatch), highest n first."""
    found = [p for p in root.glob("hpc_ckpt_*.ckpt") if p.is_file() and p.stem.rpartition("_")[2].isdigit()]
    return sorted(found, key=lambda p: int(p.stem.rpartition("_")[2]), reverse=True)


def find_resume_checkpoint(dirs: list[Path]) -> Path | None:
    """What ``--ckpt_path last`` resumes: the newer of the newest readable ``last*.ckpt`` under ``dirs`` and the
    newest readable SLURM requeue checkpoint in the run root ``dirs[0]``. A requeued job restarts with the same
    command, and its requeue checkpoint is newer than ``last.ckpt`` unless a later save overtook it."""
    found = [find_last_checkpoint(dirs)]
    for candidate in requeue_checkpoints(dirs[0]):
        try:
            read_checkpoint(candidate)
        except CheckpointError as err:
            warnings.warn(f"skipping an unreadable requeue checkpoint: {err}", stacklevel=2)
            continue
        found.append(candidate)
        break
    found = [p for p in found if p is not None]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def check_cluster_allocation(trainer: pl.Trainer) -> None:
    """Under SLURM or torchrun the processes exist before Lightning starts, and ``trainer.devices`` x
    ``trainer.num_nodes`` must match them (or the ranks wait for each other forever). Lightning checks this
    only when the run launches, with a traceback; here it is a config error naming the keys."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None or not environment.creates_processes_externally:
        return
    try:
        environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    except ValueError as err:
        raise ConfigError(f"trainer.devices={trainer.num_devices}, trainer.num_nodes={trainer.num_nodes} do not "
                          f"match the processes {type(environment).__name__} started: {err}") from err


class _DropLightningNoise(logging.Filter):
    """Lightning's advertising tips, and its note that our default checkpoints replaced its own, on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("💡 Tip" in message or "configure_callbacks` will override existing callbacks" in message)


def _quiet_lightning(subcommand: str | None) -> None:
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNoise) for f in logger.filters):
            logger.addFilter(_DropLightningNoise())
    # a deprecation inside Lightning's own code (torch's pytree), printed on every run: nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if subcommand != "fit":  # evaluating a checkpoint does not need the callbacks that wrote it
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")


def user_error_message(err: UserError) -> str:
    """One message for the terminal: a DataLoader worker's wrapped traceback is cut to the error it carried."""
    message = str(err)
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    hint = HINTS.get(type(err).__name__, "check the file or key named above")
    return f"densecnn: error: {message}\n  hint: {hint}; set DENSECNN_DEBUG=1 to see the traceback"


def run_command(command, args) -> int:
    """Run ``command(args)`` as a console command: a user error prints one message and a hint and returns 2 (no
    traceback unless the environment variable ``DENSECNN_DEBUG`` is set); bugs keep their traceback."""
    try:
        command(args)
    except UserError as err:
        if os.environ.get("DENSECNN_DEBUG"):
            raise
        print(user_error_message(err), file=sys.stderr)
        return 2
    return 0


def run(args: list[str] | None = None) -> int:
    """The console entry point of ``fit``/``validate``/``test``/``predict`` (``run_command``)."""
    return run_command(main, args)


def main(args: list[str] | None = None) -> DenseCNNCLI:
    """Run the CLI on ``args`` (default: the command line)."""
    argv = sys.argv[1:] if args is None else args
    _quiet_lightning(next((a for a in argv if not a.startswith("-")), None))
    return DenseCNNCLI(args=args)
