"""``make docs``: the guide and API reference site builds in strict mode (issue 16).

Slow (two mkdocs builds, about 10-20 s each). CI's ``make test-slow`` installs the ``docs`` extra first, so a
missing mkdocs is a failure here, not a skip.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site``."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.fail("mkdocs/mkdocstrings are not installed: `make docs` or `pip install -c constraints.txt -e .[docs]` "
                    "(make test-slow installs them)")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})


def nav_pages(nav) -> list[str]:
    """Every page file a mkdocs ``nav`` names."""
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_site_builds_strict_with_every_page_and_the_reference(tmp_path):
    result = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    for page in nav_pages(config["nav"]):
        html = tmp_path / "site" / (page[:-3].removesuffix("index") + "/index.html").lstrip("/")
        assert html.is_file(), f"{page} was not built ({html})"
    # The reference is rendered from the docstrings: create_backbone's own first line appears on its page.
    from densecnn import create_backbone
    first_line = create_backbone.__doc__.strip().splitlines()[0]
    reference = (tmp_path / "site" / "reference" / "densecnn" / "index.html").read_text()
    assert 'id="densecnn.create_backbone"' in reference
    assert re.sub(r"``?", "", first_line).split("(")[0] in re.sub(r"<[^>]+>", "", reference)
    assert 'id="tasks.ClassificationTask"' in (tmp_path / "site" / "reference" / "tasks" / "index.html").read_text()


def test_strict_build_fails_on_a_broken_reference_and_a_missing_page(tmp_path):
    # The same site with one unresolvable API cross-reference and one link to a page that does not exist:
    # strict mode must refuse it and name both.
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    plugin = next(p for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)
    plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(REPO)]  # the packages stay where they are
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "docs" / "index.md", "a") as f:
        f.write("\nSee [`nothing`][densecnn.does_not_exist] and [a page](missing.md).\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "densecnn.does_not_exist" in log and "missing.md" in log, log
