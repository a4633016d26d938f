"""``make demo``: train, test and predict the classification quickstart, then say where everything is.

Runs the same commands a user would (``python -m densecnn fit|test|predict --config ...``) in one process.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tasks.cli import main as cli

DEFAULT_CONFIG = "configs/quickstart/classification.yaml"


def run_demo(config: str = DEFAULT_CONFIG, root_dir: str = "runs/demo", extra: list[str] | None = None) -> dict:
    """Fit, test the best checkpoint and predict with one config, as ``make demo`` does.

    Args:
        config: the YAML config (default: the classification quickstart).
        root_dir: the run's ``trainer.default_root_dir``.
        extra: further command-line overrides.

    Returns:
        Where the checkpoints, metrics, pictures and predictions are, and the test metrics.
    """
    extra = list(extra or [])
    common = ["--config", config, "--trainer.default_root_dir", root_dir, *extra]
    fit = cli(["fit", *common])
    best = fit.trainer.checkpoint_callback.best_model_path
    test = cli(["test", *common, "--ckpt_path", best])
    predict = cli(["predict", *common, "--ckpt_path", best])
    run = {
        "checkpoint (best)": best,
        "checkpoint (last)": str(Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"),
        "training log + pictures": fit.trainer.log_dir,
        "test metrics": str(Path(test.trainer.log_dir) / "metrics.json"),
        "test pictures": str(Path(test.trainer.log_dir) / "pictures"),
        "predictions": str(Path(predict.trainer.log_dir) / "predictions"),
    }
    metrics = json.loads(Path(run["test metrics"]).read_text())
    return {"paths": run, "metrics": metrics}


def main() -> None:
    """``python -m tasks.demo [--config C] [--root-dir D]``: run the demo and print where its outputs are."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--root-dir", default="runs/demo")
    args, extra = parser.parse_known_args()
    result = run_demo(args.config, args.root_dir, extra)
    print("\n==== densecnn demo: done ====")
    for key in ("test/acc1", "test/acc5"):
        if key in result["metrics"]:
            print(f"{key:>24}: {result['metrics'][key]:.4f}")
    for name, path in result["paths"].items():
        print(f"{name:>24}: {path}")
    print("TensorBoard: .venv/bin/tensorboard --logdir", args.root_dir)


if __name__ == "__main__":
    main()
