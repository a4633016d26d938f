"""benchmarks/throughput.py: its timing arithmetic against a scripted clock, the rows it chooses, and a smoke run
of the real command at tiny sizes (table, JSON, positive rates, reasons for rows that cannot run)."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_throughput():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


throughput = load_throughput()


class ScriptedClock:
    """``perf_counter`` that only moves when a step says how long it took."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_rate_is_items_over_the_median_span_and_the_first_call_is_apart(monkeypatch):
    clock = ScriptedClock()
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    # first call 7 s (compilation), one more warm-up call, then 3 spans of 2 calls: 0.1+0.1, 0.3+0.3, 0.15+0.15 s
    durations = iter([7.0, 0.5, 0.1, 0.1, 0.3, 0.3, 0.15, 0.15])
    rate, first = throughput.rate_of(lambda: clock.advance(next(durations)), items=8, device=torch.device("cpu"),
                                     warmup=2, iters=2, repeats=3)
    assert first == pytest.approx(7.0)
    assert rate == pytest.approx(8 * 2 / 0.3)  # the median span (0.3 s), not the mean (0.37) nor the fastest (0.2)
    assert next(durations, None) is None  # exactly 1 + 1 + 3 x 2 calls


def test_loader_rate_skips_start_up_and_crosses_epochs(monkeypatch):
    clock = ScriptedClock()
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))

    class Loader:  # an epoch of two batches of 3 images; each batch takes 0.5 s, the first one 10 s (workers)
        started = False

        def __iter__(self):
            for _ in range(2):
                clock.advance(0.5 if Loader.started else 10.0)
                Loader.started = True
                yield {"image": torch.zeros(3, 3, 4, 4)}

    rate = throughput.loader_rate(Loader(), throughput.SPECS["classification"], batches=5)
    assert rate == pytest.approx(5 * 3 / (5 * 0.5))


def test_ablation_rows_and_the_full_grid():
    args = throughput.parse_args([])
    C = throughput.Config
    assert throughput.configs(args) == [C("fp32", "off", "off"), C("bf16", "off", "off"), C("fp32", "on", "off"),
                                        C("fp32", "off", "on"), C("bf16", "on", "on")]
    args = throughput.parse_args(["--grid", "full"])
    assert len(throughput.configs(args)) == 8 == len(set(throughput.configs(args)))
    args = throughput.parse_args(["--precision", "bf16", "--channels-last", "on", "--compile", "off"])
    assert throughput.configs(args) == [C("bf16", "on", "off")]


def test_defaults_and_full_sizes():
    tiny, full = throughput.parse_args([]), throughput.parse_args(["--full", "--workers", "3"])
    assert tiny.batch_size_of == {"classification": 32, "faster_rcnn": 4, "depth": 8, "video": 8}
    assert full.batch_size_of["classification"] == 256 and full.workers == 3
    assert throughput.describe(throughput.SPECS["classification"], True) == ("resnet50", "224px")
    assert throughput.describe(throughput.SPECS["detection"], True) == ("resnet50-FPN Faster R-CNN", "800px")
    assert throughput.describe(throughput.SPECS["dense"], True) == ("vgg16 Eigen depth", "304x228")
    assert throughput.describe(throughput.SPECS["video"], True) == ("c3d", "16x112x112")
    assert throughput.describe(throughput.SPECS["video"], False) == ("c3d x0.25", "8x32x32")
    # --full writes its own synthetic videos: H.264 yuv420p needs even frame sizes (C3D's 128x171 is resized to)
    assert all(side % 2 == 0 for side in throughput.SPECS["video"].full_data["synthetic_frame_size"])
    with pytest.raises(SystemExit):
        throughput.parse_args(["--iters", "0"])
    # on a CPU the compiled rows are skipped (with the reason) unless asked for
    assert "--compile off on" in throughput.parse_args(["--device", "cpu"]).compile_skipped
    assert throughput.parse_args(["--device", "cpu", "--compile", "off", "on"]).compile_skipped is None
    assert throughput.parse_args(["--device", "cuda"]).compile_skipped is None


def run_command(tmp_path: Path, argv: list[str], capsys) -> tuple[dict, str]:
    out = tmp_path / "out.json"
    result = throughput.main(["--data-root", str(tmp_path), "--warmup", "1", "--iters", "1", "--repeats", "1",
                              "--loader-batches", "1", "--workers", "0", "--batch-size", "2",
                              "--compile", "off", "on", "--compile-backend", "eager", "--json", str(out), *argv])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result, printed


def check_rows(rows: list[dict], printed: str) -> None:
    header = printed.splitlines()[1]
    for column, _ in throughput.COLUMNS:
        assert column in header
    for row in rows:
        assert row["loader"] > 0
        for phase in ("train", "infer"):
            assert (row[phase] > 0 and row[f"{phase}_first_s"] > 0) if phase in row else row[f"{phase}_error"]
        if "train" in row:
            assert row["bound"] == ("data" if row["loader"] < row["train"] else "model")
        line = next(line for line in printed.splitlines() if line.startswith(row["family"])
                    and f" {row['precision']} {row['channels_last']:<4} {row['compile']} " in line)
        assert (f"{row['train']:.1f}" in line) if "train" in row else "- [" in line


def test_smoke_classification_table_and_json(tmp_path, capsys, monkeypatch):
    from densecnn.data.synthetic import write_classification_dataset

    write_classification_dataset(tmp_path / "classification", per_class={"train": 2, "val": 1})
    # bf16 rows on hardware without it say why instead of failing
    monkeypatch.setattr(throughput, "bf16_unsupported", lambda device: "no bf16 on this test machine")
    result, printed = run_command(tmp_path, ["--families", "classification"], capsys)
    rows = result["rows"]
    assert [(r["precision"], r["channels_last"], r["compile"]) for r in rows] == [
        ("fp32", "off", "off"), ("bf16", "off", "off"), ("fp32", "on", "off"), ("fp32", "off", "on"),
        ("bf16", "on", "on")]
    assert all(r["batch"] == 2 for r in rows if "train" in r)
    assert all(r["train_error"] == r["infer_error"] == "no bf16 on this test machine"
               for r in rows if r["precision"] == "bf16")
    assert "[1] no bf16 on this test machine" in printed
    check_rows(rows, printed)


def test_a_compile_failure_is_a_reason_not_a_crash(tmp_path, capsys):
    from densecnn.data.synthetic import write_classification_dataset

    write_classification_dataset(tmp_path / "classification", per_class={"train": 2, "val": 1})
    result, printed = run_command(tmp_path, ["--families", "classification", "--precision", "fp32",
                                             "--channels-last", "off", "--compile", "on",
                                             "--compile-backend", "no_such_backend"], capsys)
    (row,) = result["rows"]
    assert "no_such_backend" in row["train_error"] and "train" not in row
    assert "- [1]" in printed and "no_such_backend" in printed


@pytest.mark.slow
def test_smoke_every_family(tmp_path, capsys):
    """All four families at tiny sizes, every ablation row (compile with the eager backend: no code generation), on
    small copies of the embedded synthetic datasets (the recipes' sizes, fewer samples)."""
    from densecnn.data.synthetic import (
        write_classification_dataset,
        write_dense_dataset,
        write_detection_dataset,
    )
    from densecnn.data.synthetic.video import write_video_dataset

    write_classification_dataset(tmp_path / "classification", per_class={"train": 2, "val": 1})
    write_detection_dataset(tmp_path / "detection", image_size=96, splits={"train": 4, "val": 1})
    write_dense_dataset(tmp_path / "dense", splits={"train": 4, "val": 1})
    write_video_dataset(tmp_path / "video", videos_per_class={"train": 3, "test": 1}, num_frames=12,
                        frame_size=(32, 44))
    result, printed = run_command(tmp_path, [], capsys)
    rows = result["rows"]
    assert [r["family"] for r in rows] == [f for f in throughput.FAMILIES for _ in range(5)]
    assert {r["unit"] for r in rows if r["family"] == "video"} == {"clips"}
    check_rows(rows, printed)


def test_reference_rows_sit_in_their_phase_column():
    rows = [{"family": "classification", "model": "resnet50", "input": "224px", "batch": 256, "precision": "bf16",
             "channels_last": "on", "compile": "off", "train": 2000.0, "train_first_s": 1.0, "infer": 6000.0,
             "infer_first_s": 0.5, "loader": 3000.0, "bound": "model"}]
    for family in ("classification", "video"):
        rows += [{"family": family, "model": "reference", "reference": True, "source": source, phase: rate}
                 for phase, rate, source in throughput.SPECS[family].references]
    lines = throughput.table(rows, workers=8).splitlines()
    train_at = lines[0].index("train/s") + len("train/s")
    infer_at = lines[0].index("infer/s") + len("infer/s")
    assert lines[2][:train_at].endswith("2000.0") and lines[2][:infer_at].endswith("6000.0")
    assert lines[3][:train_at].endswith("2470.0") and lines[3][train_at:].strip().startswith("NVIDIA")
    assert "313 frames/s" in lines[4] and lines[4][:infer_at].endswith(f"{313 / 16:.1f}")
