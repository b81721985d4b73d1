"""The train-metrics writer keeps every scalar, including keys that appear only later."""

from __future__ import annotations

import csv

import pytest

torch = pytest.importorskip("torch", reason="flatrl.tdmpc2 needs torch")
metrics_log = pytest.importorskip("flatrl.tdmpc2.metrics_log", reason="flatrl is not installed")


def test_csv_appends_and_extends_header_when_sharpness_appears(tmp_path):
    writer = metrics_log.MetricsWriter(tmp_path)
    writer.write({"step": 500, "episode_reward": 12.5, "name": "skipped"}, "train", 500)
    writer.write({"step": 1000, "total_loss": torch.tensor(0.25), "sharpness": 0.01}, "train", 1000)
    writer.write({"step": 1000, "episode_reward": 99.0}, "eval", 1000)  # eval.csv is upstream's
    writer.close()
    with (tmp_path / "train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["500.0", "1000.0"]
    assert rows[0]["sharpness"] == "" and float(rows[1]["sharpness"]) == pytest.approx(0.01)
    assert float(rows[1]["total_loss"]) == pytest.approx(0.25)
    assert "name" not in rows[0]
    assert not (tmp_path / "eval.csv").exists()

    # A resumed run appends to the same file under the same header.
    again = metrics_log.MetricsWriter(tmp_path)
    again.write({"step": 1500, "sharpness": 0.02}, "train", 1500)
    with (tmp_path / "train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and float(rows[2]["sharpness"]) == pytest.approx(0.02)


def test_console_line_shows_loss_and_sharpness():
    line = metrics_log.console_line({"total_loss": torch.tensor(0.5), "sharpness": 0.0123})
    assert "loss 0.5" in line and "sharpness 0.0123" in line
    assert metrics_log.console_line({"episode_reward": 1.0}) is None


def test_tensorboard_gets_the_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = metrics_log.MetricsWriter(tmp_path, tensorboard=True)
    writer.write({"sharpness": 0.5, "total_loss": 1.0}, "train", 7)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/sharpness")] == [(7, 0.5)]
