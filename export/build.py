"""Build steps: Hugging Face model dir -> ONNX (Optimum) -> fused graph -> int8 / int4 (ONNX Runtime).

Order matters. ONNX Runtime's quantizer runs ONNX shape inference, which knows nothing of the fused
com.microsoft ops (Attention, SkipLayerNormalization) and fails on a fused graph unless it is told the
default tensor type; with that set, fusing first and quantizing second keeps the fusions *and* turns the
fused Attention into QAttention, which is where most of the int8 speed-up on CPU comes from.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx

from domainlift.errors import ConfigError
from domainlift.runtime import ONNX_FILE
from domainlift.tasks import model_class

log = logging.getLogger(__name__)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_tokenizer_and_config(src: Path, dst: Path, config: bool = True) -> None:
    for name in _TOKENIZER_FILES + (("config.json",) if config else ()):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def check_onnx_support(model_dir: Path, task: str) -> None:
    """Fail early, naming the architecture, when Optimum has no ONNX export for it."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "?")
    try:
        supported = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except KeyError:
        supported = {}
    if task not in supported:
        raise ConfigError(
            f"ONNX export does not support {task} for architecture {model_type!r} (Optimum knows no "
            "ONNX config for it); export only torch variants, or fine-tune a BERT-family model"
        )


def export_onnx(model_dir: Path, out: Path, task: str, opset: int) -> Path:
    """PyTorch -> ONNX through Optimum, dynamic batch and sequence axes; validated against PyTorch by Optimum."""
    from optimum.exporters.onnx import main_export

    main_export(
        str(model_dir),
        output=str(out),
        task=task,
        opset=opset,
        device="cpu",
        do_validation=True,
        local_files_only=True,
        library_name="transformers",
    )
    return out / ONNX_FILE


def optimize(src: Path, dst: Path, num_heads: int = 0, hidden_size: int = 0) -> None:
    """ONNX Runtime transformer fusions (attention, LayerNorm, GELU, skip/bias adds), fp32.

    num_heads=0 lets ORT read each layer's head count from the graph, which pruned models need."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
    )  # graph fusions only; ORT's own level-1/2 passes run at session load
    fused = model.get_fused_operator_statistics()
    log.info("fusions: %s", {k: v for k, v in fused.items() if v})
    model.save_model_to_file(str(dst))


def quantize_dynamic(src: Path, dst: Path) -> None:
    """int8 weights (per channel), activations quantized on the fly: no calibration data needed."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    ort_quantize_dynamic(
        str(src),
        str(dst),
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


class _Calibration:
    """Feeds tokenized calibration texts one at a time to ONNX Runtime's calibrator."""

    def __init__(self, batches: list[dict], input_names: list[str]):
        self._it = iter([{k: np.asarray(b[k], dtype=np.int64) for k in input_names} for b in batches])

    def get_next(self):
        return next(self._it, None)


def quantize_static(src: Path, dst: Path, calibration: list[dict], method: str) -> None:
    """QDQ int8 weights and activations, activation ranges calibrated on target-domain unlabeled text.

    dst's directory must be a scratch or artifact directory: a pre-processed copy is written beside dst."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    if not calibration:
        raise ValueError("onnx-int8-static needs calibration text: the target domain's unlabeled split is empty")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [i.name for i in ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()]
    # Static QDQ needs every tensor's type and shape: run it on the *unfused* graph after symbolic shape
    # inference (the fused contrib ops defeat ONNX shape inference and their MatMuls would be skipped).
    prepared = Path(dst).with_name("preprocessed.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # ONNX shape inference suffices here
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    ort_quantize_static(
        str(prepared),
        str(dst),
        _Calibration(calibration, names),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[method],
        # MatMul weights and activations, and the embedding tables (Gather: 12M of MiniLM's 22M weights);
        # softmax, LayerNorm and the small pooler/classifier Gemms stay fp32.
        op_types_to_quantize=["MatMul", "Gather"],
        extra_options={"ActivationSymmetric": False},
    )
    prepared.unlink()


def check_int4_shapes(src: Path, block_size: int) -> None:
    """MatMulNBits quantizes along the input dimension in blocks; refuse shapes that do not divide."""
    model = onnx.load(str(src), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            k = inits[node.input[1]].dims[0]
            if k % block_size:
                bad.append(f"{node.name} (K={k})")
    if bad:
        raise ValueError(
            f"onnx-int4: export.int4_block_size={block_size} does not divide the input dimension of "
            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; choose a block size that divides it"
        )


def quantize_int4(src: Path, dst: Path, block_size: int) -> None:
    """Weight-only 4-bit: MatMul weights become MatMulNBits blocks (symmetric), activations stay fp32."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    check_int4_shapes(src, block_size)
    model = onnx.load(str(src))
    q = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def to_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations, inputs/outputs kept fp32 (for the CUDA provider)."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))


def bitsandbytes_weights(model_dir: Path, dst: Path, task: str, bits: int) -> None:
    """torch-int8 (LLM.int8) or torch-nf4 (4-bit NormalFloat, bf16 compute) weights through bitsandbytes,
    saved with their quantization state so they load again without re-quantizing (needs a CUDA GPU)."""
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        qcfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["classifier"])
    else:
        qcfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=["classifier"],
        )
    model = model_class(task).from_pretrained(model_dir, quantization_config=qcfg, device_map={"": 0})
    model.save_pretrained(dst, safe_serialization=True)
    copy_tokenizer_and_config(model_dir, dst, config=False)  # keep the config.json that records the quantization
