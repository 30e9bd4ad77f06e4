"""Fine-tuning methods, one module each with the same shape:

    prepare(model, cfg, task) -> model   wrap or modify the freshly loaded task model before training
    finalize(model, out_dir) -> model    turn the trained model into a plain transformers model to save
                                         (and save any extra files, e.g. a LoRA adapter, under out_dir)

Every method keeps the checkpoint contract, so export and serving never need to know which one ran.
Domain-adaptation methods (dann, dapt, udalm, fgm) are added here as further modules.
"""

from domainlift.config import ConfigError
from finetune.methods import full, lora

METHODS = {"full": full, "lora": lora}


def get(name: str):
    if name not in METHODS:
        raise ConfigError(f"unknown method.name {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
