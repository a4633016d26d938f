"""Every shipped recipe parses against the task and DataModule signatures it names: a renamed or mistyped key
in ``configs/`` fails here instead of at the start of someone's week-long run."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_recipe_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(path.read_text())
    assert printed["model"]["class_path"].endswith(written["model"]["class_path"])
    for key, value in written["model"].get("init_args", {}).items():
        assert printed["model"]["init_args"][key] == value, key
