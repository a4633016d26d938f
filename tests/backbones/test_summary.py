"""``densecnn.summary`` and ``python -m densecnn summary``: shapes, parameters, multiply-adds."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from densecnn.summary import backbone_table, main, parse_input_size, summarize
from tests.helpers import run_fresh


def test_multiply_adds_of_a_convolution_and_a_linear_layer():
    # S2 L218-283: 10 filters 5x5x3, S=1, P=2 on 32x32x3 -> 32x32x10; each output is 75 multiply-adds
    model = nn.Sequential(nn.Conv2d(3, 10, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(10 * 32 * 32, 4))
    s = summarize(model, (3, 32, 32))
    assert [r.name for r in s.rows] == ["0", "1", "2", "3"]
    assert s.rows[0].output_shape == (1, 10, 32, 32) and s.rows[0].params == 760
    assert s.rows[0].mult_adds == 32 * 32 * 10 * 75 and s.rows[3].mult_adds == 10 * 32 * 32 * 4
    assert s.mult_adds == sum(r.mult_adds for r in s.rows) and s.params == sum(r.params for r in s.rows)


def test_alexnet_summary_rows_follow_the_paper():
    s = summarize("alexnet")
    assert s.input_size == (3, 227, 227) and s.params == 60_965_224
    convs = [r for r in s.rows if r.kind == "Conv2d"]
    assert [r.output_shape[2] for r in convs] == [55, 27, 13, 13, 13]
    assert s.rows[-1].output_shape == (1, 1000)
    assert s.mult_adds == sum(r.mult_adds for r in s.rows)
    text = s.format()
    assert "features.0" in text and "96x55x55" in text and "60,965,224" in text and "multiply-adds" in text


def test_reused_modules_count_their_parameters_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    s = summarize(model, (4,))
    assert [r.params for r in s.rows] == [20, 0, 0] and s.params == 20
    assert [r.mult_adds for r in s.rows] == [16, 0, 16]


def test_cli_prints_a_table_and_rejects_bad_sizes(capsys):
    assert main(["lenet5", "--input-size", "1x32x32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "c1" in out and "6x28x28" in out and "total parameters" in out
    with pytest.raises(SystemExit):
        main(["lenet5", "--input-size", "32by32"])
    assert "expected dimensions joined by 'x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no_such_net"])
    assert "unknown backbone 'no_such_net'" in capsys.readouterr().err
    assert parse_input_size("3x16x112x112") == (3, 16, 112, 112)


def test_markdown_table_of_backbones():
    table = backbone_table(["resnet50", "vgg16"])
    lines = table.splitlines()
    assert lines[0].startswith("| backbone |") and len(lines) == 4
    assert "25.56 M" in lines[2] and "4.09 G" in lines[2] and "He et al. 2015" in lines[2]
    assert "138.36 M" in lines[3] and "15.47 G" in lines[3]


def test_python_m_densecnn_summary_dispatches_before_lightning():
    result = run_fresh(["-m", "densecnn", "summary", "allcnn_c", "--input-size", "3x32x32"], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1,369,738" in result.stdout and "192x6x6" in result.stdout


def test_summary_keeps_the_models_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model.train()
    summarize(model, (2,))
    assert model.training and not any(h for h in model[0]._forward_hooks.values())
    assert torch.is_grad_enabled()
