"""Run an artifact's model on already-tokenized inputs, whatever its runtime: one small interface.

    runner = load_runner(artifact_dir, threads=2)   # verifies the manifest first
    logits = runner(batch)                           # batch: dict of int64 numpy arrays -> float32 numpy logits

ONNX artifacts run in an ONNX Runtime session (CUDA provider when present); Hugging Face checkpoints run in
PyTorch eager (fp32 on the CPU; bitsandbytes-quantized weights on the GPU). Export verification, serving
and benchmarks all use this, so they measure the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from domainlift import manifest, tasks

ONNX_FILE = "model.onnx"


def runtime_of(root: Path) -> str:
    """Which runtime an artifact directory runs on: ONNX Runtime when it holds model.onnx, else PyTorch."""
    return "onnxruntime" if (Path(root) / ONNX_FILE).is_file() else "torch"


def pad_batch(rows: list[dict], pad_id: int) -> dict[str, np.ndarray]:
    """Token id lists -> one int64 batch of every model input, padded on the right to the batch's own longest row
    (never to the model's maximum: padding short texts to a long one costs more than batching gains).
    Each row has input_ids and optionally attention_mask / token_type_ids (default: ones / zeros)."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {name: np.zeros((len(rows), width), dtype=np.int64) for name in tasks.MODEL_INPUTS}
    batch["input_ids"][:] = pad_id
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = r["input_ids"]
        batch["attention_mask"][i, :n] = r.get("attention_mask", 1)
        batch["token_type_ids"][i, :n] = r.get("token_type_ids", 0)
    return batch


class OnnxRunner:
    runtime = "onnxruntime"

    def __init__(self, root: Path, threads: int | None = None, device: str | None = None):
        """device: "cpu", "cuda", or None = CUDA when this ONNX Runtime has the provider, else the CPU."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        self.threads = threads or os.cpu_count() or 1
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if device == "cuda" and not has_cuda:
            raise RuntimeError("this onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu")
        self.device = "cuda" if device == "cuda" or (device is None and has_cuda) else "cpu"
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "cuda" else ["CPUExecutionProvider"]
        )
        self.session = ort.InferenceSession(str(Path(root) / ONNX_FILE), opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict) -> np.ndarray:
        feed = {k: np.asarray(batch[k], dtype=np.int64) for k in self.input_names}
        return self.session.run(None, feed)[0].astype(np.float32)


class TorchRunner:
    runtime = "torch"

    def __init__(
        self,
        root: Path,
        threads: int | None = None,
        device: str | None = None,
        half: bool = False,
        compiled: bool = False,
    ):
        """device: where plain weights run ("cpu" when None); half: fp16 weights (a GPU path); compiled:
        torch.compile, which on a GPU also records CUDA graphs (at small batches a BERT forward there is mostly
        kernel-launch overhead, which one graph replay removes). On the CPU it compiles without graphs."""
        import torch
        from transformers import AutoConfig

        if threads:
            torch.set_num_threads(threads)
        config = AutoConfig.from_pretrained(root)
        cls = tasks.model_class(tasks.task_of((config.architectures or [""])[0]))
        # bitsandbytes weights (torch-int8 / torch-nf4) only run on a CUDA GPU; plain weights run on the CPU.
        quantized = getattr(config, "quantization_config", None) is not None
        kwargs = {"device_map": {"": 0}} if quantized else {}
        self.model = cls.from_pretrained(root, use_safetensors=True, **kwargs).eval()
        if not quantized:
            self.model.to(device or "cpu")
        if half:
            self.model.half()
        self.device = self.model.device
        self.pad_id = config.pad_token_id or 0
        self.bucket = 0
        if compiled:
            # Compiled once for symbolic shapes; a CUDA graph is recorded per input shape, so lengths are padded
            # up to a multiple of 32 tokens: a handful of graphs, not one per length (the padding costs little
            # at the batch sizes where graphs help).
            self.model = torch.compile(self.model, mode="reduce-overhead", dynamic=True)
            self.bucket = 32
        self.torch = torch

    def __call__(self, batch: dict) -> np.ndarray:
        arrays = {k: np.asarray(batch[k]) for k in tasks.MODEL_INPUTS if k in batch}
        width = arrays["input_ids"].shape[1]
        if self.bucket and width % self.bucket:
            extra = self.bucket - width % self.bucket
            fill = {"input_ids": self.pad_id}  # masks and token types pad with 0
            arrays = {k: np.pad(a, ((0, 0), (0, extra)), constant_values=fill.get(k, 0)) for k, a in arrays.items()}
        with self.torch.inference_mode():
            inputs = {k: self.torch.as_tensor(a, dtype=self.torch.long, device=self.device) for k, a in arrays.items()}
            logits = self.model(**inputs).logits
            if logits.dim() == 3:  # token classification: drop the bucket padding again
                logits = logits[:, :width]
            return logits.float().cpu().numpy()


def load_runner(root: Path, threads: int | None = None, verify: bool = True, device: str | None = None):
    root = Path(root)
    if verify:
        manifest.verify(root)
    runner = OnnxRunner if runtime_of(root) == "onnxruntime" else TorchRunner
    return runner(root, threads, device=device)
