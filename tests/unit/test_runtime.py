"""domainlift/runtime.py: padding, which runtime a directory uses, and the ONNX and PyTorch runners agreeing."""

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoTokenizer, BertForTokenClassification

from domainlift import manifest
from domainlift.errors import ManifestError
from domainlift.runtime import OnnxRunner, TorchRunner, load_runner, pad_batch, runtime_of
from domainlift.tasks import MODEL_INPUTS
from export import build


def test_pad_batch_pads_on_the_right_to_the_longest_row_and_fills_every_input():
    batch = pad_batch([{"input_ids": [101, 7, 102]}, {"input_ids": [101, 102], "token_type_ids": [0, 1]}], pad_id=0)
    assert set(batch) == set(MODEL_INPUTS)
    assert all(a.dtype == np.int64 and a.shape == (2, 3) for a in batch.values())
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 1, 0]]
    assert pad_batch([{"input_ids": [5]}], pad_id=9)["input_ids"].tolist() == [[5]]


@pytest.fixture(scope="module")
def token_model(tmp_path_factory, tiny_model_dir):
    """The tiny BERT with a token-classification head, saved as an artifact with a manifest, and its ONNX export."""
    root = tmp_path_factory.mktemp("runtime")
    torch.manual_seed(0)
    checkpoint = root / "checkpoint"
    BertForTokenClassification.from_pretrained(tiny_model_dir, num_labels=3).save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(checkpoint)
    manifest.write(checkpoint, kind="checkpoint", config={}, parent={}, quality={})
    onnx_dir = root / "onnx"
    onnx_dir.mkdir()
    build.copy_tokenizer_and_config(checkpoint, onnx_dir)
    exported = build.export_onnx(checkpoint, root / "exported", "token-classification", opset=18)
    exported.rename(onnx_dir / "model.onnx")
    manifest.write(onnx_dir, kind="variant", config={}, parent={}, quality={})
    return checkpoint, onnx_dir


def test_runtime_of_and_load_runner_pick_the_runtime_from_the_files(token_model):
    checkpoint, onnx_dir = token_model
    assert runtime_of(checkpoint) == "torch" and runtime_of(onnx_dir) == "onnxruntime"
    assert isinstance(load_runner(checkpoint, threads=1), TorchRunner)
    assert isinstance(load_runner(onnx_dir, threads=1), OnnxRunner)


def test_onnx_and_torch_runners_give_the_same_logits_at_every_position(token_model):
    checkpoint, onnx_dir = token_model
    tok = AutoTokenizer.from_pretrained(checkpoint)
    rows = [{"input_ids": ids} for ids in tok(["a short one", "a somewhat longer text to pad the other"])["input_ids"]]
    batch = pad_batch(rows, tok.pad_token_id)
    torch_logits = load_runner(checkpoint, threads=1)(batch)
    onnx_logits = load_runner(onnx_dir, threads=1)(batch)
    assert torch_logits.shape == onnx_logits.shape == (2, batch["input_ids"].shape[1], 3)
    assert torch_logits.dtype == onnx_logits.dtype == np.float32
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_load_runner_refuses_a_tampered_artifact(token_model, tmp_path):
    _, onnx_dir = token_model
    copy = tmp_path / "copy"
    shutil.copytree(onnx_dir, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="model.onnx does not match its sha256"):
        load_runner(copy, threads=1)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this ONNX Runtime has CUDA")
def test_asking_for_cuda_without_the_provider_names_the_fix(token_model):
    with pytest.raises(RuntimeError, match="install onnxruntime-gpu"):
        OnnxRunner(token_model[1], threads=1, device="cuda")
