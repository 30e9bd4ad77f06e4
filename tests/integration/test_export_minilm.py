"""Export parity on the real all-MiniLM-L6-v2 (fine-tuned briefly on real kitchen reviews)."""

import pytest
from conftest import KITCHEN, write_config

from domainlift.config import load_config
from export.recipe import Exporter
from finetune.recipe import run as finetune

pytestmark = pytest.mark.slow


def test_onnx_parity_with_pytorch(tmp_path):
    cfg = load_config(
        write_config(
            tmp_path,
            data={"source": KITCHEN, "target": KITCHEN, "max_train_samples": 320, "max_eval_samples": 100},
            model={"max_length": 96},
            train={"epochs": 1, "batch_size": 16, "learning_rate": 1e-4},
            export={"latency_samples": 10},
        )
    )
    finetune(cfg)
    report = Exporter(cfg).run(["onnx-fp32", "onnx-int8-dynamic"])
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["onnx-fp32"]["max_abs_dlogit"] < 1e-4, "fp32 ONNX must match PyTorch to 1e-4"
    assert rows["onnx-fp32"]["agreement"] == 1.0
    assert rows["onnx-int8-dynamic"]["agreement"] >= 0.95, rows["onnx-int8-dynamic"]
    assert rows["onnx-int8-dynamic"]["size_bytes"] <= 0.30 * rows["onnx-fp32"]["size_bytes"]
