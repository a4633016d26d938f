"""One throughput table for the hardware at hand: for each task family (classification, Faster R-CNN detection,
Eigen dense prediction, C3D video), training and inference images/s (clips/s for video) at a given batch size,
with fp32 against bf16 autocast, channels_last off/on and ``torch.compile`` off/on, beside the rate at which the
family's own DataModule (its real dataset class and transforms, on the embedded synthetic data) delivers
training batches with N workers.

    python benchmarks/throughput.py                       # tiny sizes: the quickstart recipes' models and data
    python benchmarks/throughput.py --full                # paper sizes, for a GPU (reference rows beside them)
    python benchmarks/throughput.py --families video --batch-size 16 --workers 4 --json out.json
    python benchmarks/throughput.py --grid full           # every precision x channels_last x compile combination

Default sizes are configs/quickstart/<recipe>.yaml's model and data (CIFAR ResNet-20 at 32 px, a half-width
ResNet-18 Faster R-CNN at 96 px, the narrowed Eigen depth network at 64x88, C3D x1/4 on 8x32x32 clips).
``--full``: ResNet-50 training at 224 px (NVIDIA's 2,470 images/s on one A100 with AMP), Faster R-CNN
ResNet-50-FPN at 800 px (torchvision's fasterrcnn_resnet50_fpn settings), the Eigen & Fergus VGG-16 depth
network at 304x228, C3D on 16x112x112 clips (Tran et al.: 313 fps).

What one step is: training = the task's own ``compute_loss(batch, "train")`` (the loss Lightning's training step
backpropagates), ``backward`` and an SGD step; inference = the task's prediction path in eval mode without
gradients (softmax probabilities, ``detect`` with NMS, the dense maps at input size, C3D clip logits). The batch
is one real training batch of the DataModule, kept on the device, so the model rate excludes data loading; the
loader column is measured separately, with its own worker processes, so the ``bound`` column says which of the
two would limit a training run (on a CPU both share the same cores).

The synthetic datasets are written on first use under ``--data-root`` (``data/synthetic``, shared with the
quickstart recipes; ``--full``: ``data/synthetic/full``), so a first run also spends that time.

Timing: ``--warmup`` calls first (the first call, which includes ``torch.compile``'s compilation, is timed on
its own and reported as ``1st call s``), then ``--repeats`` spans of ``--iters`` calls, each closed by
``torch.cuda.synchronize()`` on a GPU; the rate is from the median span. Rows the hardware cannot run (bf16
without support, a compile failure) show ``-`` and the reason below the table.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from pytorch_lightning.utilities import move_data_to_device

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: `tasks` sits next to it
import tasks

FAMILIES = ("classification", "detection", "dense", "video")
PRECISIONS = ("fp32", "bf16")
SWITCH = ("off", "on")


@dataclasses.dataclass(frozen=True)
class Family:
    """How to build, feed and time one task family. ``full_*`` replace the quickstart recipe's init_args."""
    recipe: str  # configs/quickstart/<recipe>.yaml: the tiny model and data
    label: str  # what the rows call the model after its backbone
    unit: str  # what one item of a batch is
    key: str  # the batch entry holding the network input
    infer: Callable[[Any, dict], Any]  # the task's prediction path on a batch
    compile_targets: Callable[[Any], list[tuple[Any, str]]]  # (object, method) pairs torch.compile wraps
    full_model: dict
    full_data: dict
    tiny_batch: int
    full_batch: int
    memory_format: torch.memory_format = torch.channels_last
    task_channels_last: bool = False  # the task has a channels_last option of its own (video)
    references: tuple = ()  # (phase, rate in units/s, source) printed beside --full rows


SPECS: dict[str, Family] = {
    "classification": Family(
        recipe="classification", label="", unit="images", key="image",
        infer=lambda task, batch: task.predict_probs(batch["image"]),
        compile_targets=lambda task: [(task.backbone, "forward")],
        full_model={"backbone": "resnet50", "num_classes": 1000},
        full_data={"image_size": 224, "train_transforms": "resnet", "synthetic": True, "synthetic_image_size": 96},
        tiny_batch=32, full_batch=256,  # NVIDIA's ResNet-50 recipe: 256 per GPU
        references=(("train", 2470.0, "NVIDIA DeepLearningExamples ResNet-50 v1.5, 1x A100, AMP, batch 256"),)),
    "detection": Family(
        recipe="faster_rcnn", label=" Faster R-CNN", unit="images", key="image",
        infer=lambda task, batch: task.detect(batch["image"], batch),
        # the backbone and its FPN: the RPN and RoI heads have data-dependent shapes (proposals after NMS)
        compile_targets=lambda task: [(task.detector.backbone, "forward")],
        full_model={"backbone": "resnet50", "num_classes": 80, "fpn": True, "fpn_levels": 4,
                    "anchor_sizes": [32, 64, 128, 256, 512], "rpn_pre_nms_top_n_test": 1000,
                    "rpn_post_nms_top_n_test": 1000, "box_batch_size_per_image": 512, "nms_thresh": 0.5},
        full_data={"image_size": 800, "synthetic": True, "synthetic_image_size": 256},
        tiny_batch=4, full_batch=2),  # Detectron's 2 images per GPU
    "dense": Family(
        recipe="depth", label=" Eigen depth", unit="images", key="image",
        infer=lambda task, batch: task(batch["image"]),
        compile_targets=lambda task: [(task, "forward_scales")],  # scales 1-3 (backbone + MultiScaleDenseHead)
        full_model={"backbone": "vgg16", "targets": ["depth"]},  # the paper's widths are the defaults
        full_data={"image_size": [240, 320], "crop_size": [228, 304], "maps": ["depth"], "synthetic": True,
                   "synthetic_size": [240, 320]},
        tiny_batch=8, full_batch=16),
    "video": Family(
        recipe="video", label="", unit="clips", key="video",
        infer=lambda task, batch: task.clip_logits(batch["video"]),
        compile_targets=lambda task: [(task.backbone, "forward")],
        full_model={"backbone": "c3d", "num_classes": 101, "clip_len": 16, "crop_size": 112},
        full_data={"clip_len": 16, "resize": [128, 171], "crop_size": 112, "train_transforms": "c3d",
                   "synthetic": True, "synthetic_videos_per_class": {"train": 6, "test": 1},
                   "synthetic_num_frames": 32, "synthetic_frame_size": [128, 172]},
        tiny_batch=8, full_batch=32,
        memory_format=torch.channels_last_3d, task_channels_last=True,
        # Tran et al. 2015 (Table/Sec. on runtime): 313 fps on one K40; a clip of 16 frames counted as 16 frames
        references=(("infer", 313.0 / 16, "C3D paper: 313 frames/s on a K40 (= 19.6 clips of 16 frames/s)"),)),
}


# measured with `--families classification video --precision fp32 --channels-last off --compile on` on 2 shared cores
CPU_COMPILE_NOTE = "first training call 150 s for CIFAR ResNet-20, 369 s for C3D x1/4"


@dataclasses.dataclass(frozen=True)
class Config:
    precision: str
    channels_last: str
    compile: str


# ---- building ---------------------------------------------------------------------------------------------------
def recipe(family: Family) -> dict:
    return yaml.safe_load((ROOT / "configs" / "quickstart" / f"{family.recipe}.yaml").read_text())


def model_spec(family: Family, full: bool) -> tuple[type, dict]:
    model = recipe(family)["model"]
    kwargs = dict(family.full_model) if full else dict(model["init_args"])
    for key in ("lr_scheduler", "warmup_steps"):  # schedules need a Trainer; the benchmark steps SGD itself
        kwargs.pop(key, None)
    return getattr(tasks, model["class_path"]), kwargs


def datamodule(family: Family, full: bool, data_root: Path, batch_size: int, workers: int):
    data = recipe(family)["data"]
    kwargs = dict(family.full_data) if full else dict(data["init_args"])
    kwargs.update(root=str(data_root / Path(data["init_args"]["root"]).name), batch_size=batch_size,
                  num_workers=workers)
    dm = getattr(tasks, data["class_path"])(**kwargs)
    dm.prepare_data()  # writes the embedded synthetic data on first use
    dm.setup("fit")
    return dm


def build_task(family: Family, full: bool, config: Config, device: torch.device):
    cls, kwargs = model_spec(family, full)
    if family.task_channels_last:
        kwargs["channels_last"] = config.channels_last == "on"
    torch.manual_seed(0)
    task = cls(**kwargs).to(device)
    if config.channels_last == "on" and not family.task_channels_last:
        task = task.to(memory_format=family.memory_format)
    return task


def describe(family: Family, full: bool) -> tuple[str, str]:
    """(model, input) labels of a family's rows."""
    _, kwargs = model_spec(family, full)
    data = dict(family.full_data) if full else recipe(family)["data"]["init_args"]
    width = (kwargs.get("backbone_kwargs") or {}).get("width_mult")
    model = kwargs["backbone"] + ("-FPN" if kwargs.get("fpn") else "") + family.label + (f" x{width}" if width else "")
    if family.key == "video":
        crop = data["crop_size"]
        size = f"{data['clip_len']}x{crop}x{crop}"
    elif family.recipe == "depth":
        h, w = data.get("crop_size") or data["image_size"]
        size = f"{w}x{h}"
    else:
        size = f"{data['image_size']}px"
    return model, size


# ---- timing -----------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate_of(step: Callable[[], Any], items: int, device: torch.device, warmup: int, iters: int,
            repeats: int) -> tuple[float, float]:
    """(items/s from the median of ``repeats`` spans of ``iters`` calls, seconds of the first call)."""
    synchronize(device)
    start = time.perf_counter()
    step()  # compilation (with torch.compile), allocator and kernel selection: reported, not averaged in
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    spans = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        synchronize(device)
        spans.append(time.perf_counter() - start)
    return items * iters / statistics.median(spans), first


def model_batch(source: tuple, family: Family, batch_size: int, device: torch.device, config: Config) -> dict:
    """One training batch of ``batch_size`` items from the DataModule's own (dataset, collate function)."""
    dataset, collate = source
    batch = collate([dataset[i % len(dataset)] for i in range(batch_size)])
    batch = move_data_to_device(batch, device)
    if config.channels_last == "on":
        batch[family.key] = batch[family.key].contiguous(memory_format=family.memory_format)
    return batch


def bf16_unsupported(device: torch.device) -> str | None:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 support"
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no bfloat16 support in oneDNN (needs AVX-512 BF16/AMX or AVX-512 BW/VL/DQ)"
    return None


def reason_of(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def compile_task(family: Family, task, mode: str | None, backend: str) -> None:
    # a fresh Dynamo cache per row: every row's model shares its classes' code objects, and recompilations for
    # earlier rows' modules would count towards the cache limit (past it Dynamo silently falls back to eager)
    torch._dynamo.reset()
    for owner, name in family.compile_targets(task):
        setattr(owner, name, torch.compile(getattr(owner, name), mode=mode, backend=backend))


def measure_row(family: Family, config: Config, args, source: tuple, device: torch.device) -> dict:
    """Training and inference rates of one row; a phase that cannot run gives its reason instead."""
    row: dict[str, Any] = {}
    reason = bf16_unsupported(device) if config.precision == "bf16" else None
    if config.compile == "on" and args.compile_skipped and not reason:
        reason = args.compile_skipped
    if reason:
        return {f"{phase}_error": reason for phase in args.phases}
    task = build_task(family, args.full, config, device)
    if config.compile == "on":
        try:
            compile_task(family, task, args.compile_mode, args.compile_backend)
        except Exception as err:  # noqa: BLE001  (an unknown backend or mode)
            return {f"{phase}_error": f"torch.compile: {reason_of(err)}" for phase in args.phases}
    batch = model_batch(source, family, args.batch_size_of[family.recipe], device, config)
    items = len(batch[family.key])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    timing = {"device": device, "warmup": args.warmup, "iters": args.iters, "repeats": args.repeats}
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)  # small steps: random data must not diverge

    def train_step():
        with autocast:
            loss, _ = task.compute_loss(batch, "train")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step():
        with torch.no_grad(), autocast:
            return family.infer(task, batch)

    for phase, step in (("train", train_step), ("infer", infer_step)):
        if phase not in args.phases:
            continue
        task.train(phase == "train")
        try:
            row[phase], row[f"{phase}_first_s"] = rate_of(step, items, **timing)
        except Exception as err:  # noqa: BLE001  (a row the hardware or compiler cannot run: say why)
            row[f"{phase}_error"] = reason_of(err)
    return row


def loader_rate(loader, family: Family, batches: int) -> float:
    """Items/s the training DataLoader delivers once its workers are up (the first batch is start-up)."""
    it = iter(loader)
    next(it)
    start, items = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:  # a small synthetic dataset: start the next epoch
            it = iter(loader)
            batch = next(it)
        items += len(batch[family.key])
    return items / (time.perf_counter() - start)


# ---- rows and table ---------------------------------------------------------------------------------------------
def configs(args) -> list[Config]:
    """``full``: every combination; ``ablation``: the baseline (first value of each option), each option changed
    alone, and all changed together."""
    options = (args.precision, args.channels_last, args.compile)
    if args.grid == "full":
        return [Config(*combo) for combo in itertools.product(*options)]
    base = [values[0] for values in options]
    rows = [Config(*base)]
    for i, values in enumerate(options):
        for value in values[1:]:
            rows.append(Config(*(base[:i] + [value] + base[i + 1:])))
    rows.append(Config(*(values[-1] for values in options)))
    return list(dict.fromkeys(rows))


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


COLUMNS = (("family", 14), ("model", 30), ("input", 10), ("batch", 5), ("prec", 4), ("NHWC", 4), ("compile", 7),
           ("train/s", 9), ("infer/s", 9), ("1st call s", 13), ("loader/s", 9), ("bound", 5))


def fmt_rate(row: dict, phase: str, notes: list[str]) -> str:
    if phase in row:
        return f"{row[phase]:.1f}"
    error = row.get(f"{phase}_error")
    if error is None:
        return ""
    if error not in notes:
        notes.append(error)
    return f"- [{notes.index(error) + 1}]"


def table(rows: list[dict], workers: int) -> str:
    notes: list[str] = []
    header = " ".join(f"{name:>{width}}" if i >= 7 else f"{name:<{width}}" for i, (name, width) in enumerate(COLUMNS))
    lines = [header, "-" * len(header)]
    for r in rows:
        first = "/".join(f"{r[f'{p}_first_s']:.1f}" if f"{p}_first_s" in r else "-" for p in ("train", "infer"))
        if r.get("reference"):
            cells = [r["family"], r["model"], "", "", "", "", "", fmt_rate(r, "train", notes),
                     fmt_rate(r, "infer", notes), "", "", ""]
        else:
            cells = [r["family"], r["model"], r["input"], str(r.get("batch", "")), r["precision"], r["channels_last"],
                     r["compile"], fmt_rate(r, "train", notes), fmt_rate(r, "infer", notes), first,
                     f"{r['loader']:.1f}", r.get("bound", "")]
        line = " ".join(f"{c:>{w}}" if i >= 7 else f"{c:<{w}}" for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))
        lines.append(f"{line}  {r['source']}" if r.get("reference") else line)
    lines.append(f"rates in items/s (images; clips for video); loader/s: the training DataLoader with {workers} "
                 "workers; bound: which of loader and training step is slower; 1st call s: train/infer first call "
                 "(includes compilation)")
    lines += [f"[{i + 1}] {note}" for i, note in enumerate(notes)]
    return "\n".join(lines)


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows: list[dict] = []
    for name in args.families:
        family = SPECS[name]
        batch_size = args.batch_size_of[family.recipe]
        dm = datamodule(family, args.full, args.data_root, batch_size, args.workers)
        loader = dm.train_dataloader()
        loader_items = loader_rate(loader, family, args.loader_batches)
        source = (loader.dataset, loader.collate_fn)
        del loader, dm  # stops its worker processes before the model is timed
        model, size = describe(family, args.full)
        for config in configs(args):
            row = {"family": name, "model": model, "input": size, "unit": family.unit,
                   "batch": batch_size, **dataclasses.asdict(config), "loader": loader_items,
                   "workers": args.workers}
            row.update(measure_row(family, config, args, source, device))
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next row's model starts from the same free memory
            if "train" in row:
                row["bound"] = "data" if loader_items < row["train"] else "model"
            rows.append(row)
            done = ", ".join(f"{phase} {row[phase]:.1f}/s" if phase in row else f"{phase} not run"
                             for phase in args.phases)
            print(f"  {name} {config.precision} channels_last={config.channels_last} compile={config.compile}: {done}",
                  file=sys.stderr, flush=True)
        if args.full:
            for phase, rate, source in family.references:
                rows.append({"family": name, "model": "reference", "reference": True, "source": source, phase: rate})
    return {"hardware": hardware(), "device": str(device), "full": args.full, "workers": args.workers,
            "timing": {"warmup": args.warmup, "iters": args.iters, "repeats": args.repeats}, "rows": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="paper sizes (for a GPU)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--batch-size", type=int, default=None, help="every family's batch (default: per family)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 2; --full: min(8, cpus))")
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--channels-last", nargs="+", default=list(SWITCH), choices=SWITCH)
    parser.add_argument("--compile", nargs="+", default=None, choices=SWITCH,
                        help="default off on; on a CPU the compiled rows are skipped unless --compile is given "
                             "(inductor builds C++ kernels for minutes per model on 2 cores)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (max-autotune, reduce-overhead, ...)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: no codegen)")
    parser.add_argument("--grid", choices=("ablation", "full"), default="ablation",
                        help="ablation: baseline, each option alone, all together; full: every combination")
    parser.add_argument("--phases", nargs="+", default=["train", "infer"], choices=("train", "infer"))
    parser.add_argument("--warmup", type=int, default=None, help="calls before timing (default 2; --full 5)")
    parser.add_argument("--iters", type=int, default=None, help="calls per timed span (default 3; --full 10)")
    parser.add_argument("--repeats", type=int, default=None, help="timed spans, median taken (default 5)")
    parser.add_argument("--loader-batches", type=int, default=None, help="batches timed (default 10; --full 50)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the synthetic datasets are (written on first use; default data/synthetic, "
                             "--full: data/synthetic/full)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    full = args.full
    args.compile_skipped = None
    if args.compile is None:
        args.compile = list(SWITCH)
        if args.device == "cpu":
            args.compile_skipped = (f"compile skipped on CPU by default: inductor generates C++ kernels for minutes "
                                    f"per model on 2 cores ({CPU_COMPILE_NOTE}); pass --compile off on to run it")
    for key, tiny, paper in (("workers", 2, min(8, os.cpu_count() or 1)), ("warmup", 2, 5), ("iters", 3, 10),
                             ("repeats", 5, 5), ("loader_batches", 10, 50)):
        if getattr(args, key) is None:
            setattr(args, key, paper if full else tiny)
    if min(args.warmup, args.iters, args.repeats, args.loader_batches) < 1 or args.workers < 0:
        parser.error("--warmup, --iters, --repeats and --loader-batches must be >= 1, --workers >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    args.batch_size_of = {f.recipe: args.batch_size or (f.full_batch if full else f.tiny_batch) for f in SPECS.values()}
    args.data_root = args.data_root or ROOT / "data" / "synthetic" / ("full" if full else "")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # the tasks log through Lightning, which warns once per call site that no Trainer is attached
        warnings.filterwarnings("ignore", message=".*self.log.*")
        result = run(args)
    result["wall_s"] = time.perf_counter() - start
    print(f"{result['hardware']} ({result['device']}), {'--full paper' if args.full else 'tiny'} sizes, "
          f"warm-up {args.warmup}, median of {args.repeats} x {args.iters} calls")
    print(table(result["rows"], args.workers))
    print(f"wall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
