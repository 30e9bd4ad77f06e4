"""LoRA through peft: low-rank adapters on the named Linear layers; the new task head trains fully.

The saved checkpoint has the adapter merged (W + B·A·alpha/r), so export and serving see a plain model
with no peft dependency and no extra latency; the adapter alone is kept in `adapter/` beside the weights.
"""

import logging
from pathlib import Path

from peft import LoraConfig, TaskType, get_peft_model

from domainlift.errors import ConfigError

log = logging.getLogger(__name__)


def prepare(model, cfg, task: str):
    c = cfg.method.lora
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in c.target_modules if m not in names]
    if missing:
        raise ConfigError(
            f"method.lora.target_modules names {missing} which this model does not have; "
            f"Linear layers here include: {', '.join(sorted(n for n in names if not n.isdigit()))}"
        )
    peft_cfg = LoraConfig(
        # SEQ_CLS / TOKEN_CLS make peft train the freshly initialised classifier head in full.
        task_type=TaskType.SEQ_CLS if task == "text-classification" else TaskType.TOKEN_CLS,
        r=c.r,
        lora_alpha=c.alpha,
        lora_dropout=c.dropout,
        target_modules=list(c.target_modules),
    )
    model = get_peft_model(model, peft_cfg)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters train (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def finalize(model, out_dir: Path):
    model.save_pretrained(Path(out_dir) / "adapter")  # adapter + trained head, loadable with peft
    return model.merge_and_unload()
