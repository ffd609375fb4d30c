"""bench/tune_beauty.py reuses a pre-trained model: settings that model fixes must not pass silently."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_harness():
    spec = importlib.util.spec_from_file_location("tune_beauty", REPO / "bench" / "tune_beauty.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reused_pretrained_model_names_the_settings_it_overrides(tmp_path, caplog):
    pre = tmp_path / "pretrain"
    (pre / "backbone").mkdir(parents=True)
    (pre / "rec_config.json").write_text(json.dumps({"lambda_v": 0.01, "edge_bias": "seed", "lora": None}))
    (pre / "backbone" / "config.json").write_text(json.dumps({"n_layer": 2, "n_embd": 128}))
    model = {"backbone": "tiny", "tiny": {"n_layer": 2, "n_embd": 128}, "lambda_v": 0.01, "edge_bias": "seed"}
    harness = load_harness()
    assert harness.warn_settings_fixed_by_pretrained(pre, {**model, "lora": None}) == []
    changed = {**model, "lambda_v": 0.03, "tiny": {"n_layer": 2, "n_embd": 256}}
    with caplog.at_level(logging.WARNING):
        assert harness.warn_settings_fixed_by_pretrained(pre, changed) == ["lambda_v", "tiny.n_embd"]
    assert "model.lambda_v = 0.03 is ignored" in caplog.text
    assert "model.tiny.n_embd = 256 is ignored: fine-tuning takes 128" in caplog.text
