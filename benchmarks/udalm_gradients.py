"""One-off diagnostic (kept for one commit, so the docs can name it): on the encoder udalm starts from, the size of
the task loss's gradient on the shared encoder against the masked-LM loss's, each weighed as udalm weighs them
(1/(k+1) and k/(k+1)), and the cosine between them, over a few draws of one source batch and k target batches.

python -m benchmarks.udalm_gradients artifacts/adapt-matrix-udalm5e5/runs/dapt-cache/<key>
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
)

from finetune.methods import udalm

ROW = "task loss {:.3f}  masked-LM loss {:.3f}  |g task| {:.3f}  |g masked-LM| {:.3f}  cosine {:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("start", help="the encoder udalm starts from: a DAPT cache entry (with its mlm_head.safetensors)")
    p.add_argument("--source", default="data/amazon-reviews/books.jsonl")
    p.add_argument("--target", default="data/amazon-reviews/unlabeled/kitchen.jsonl")
    p.add_argument("--k", type=int, default=2, help="masked-LM batches per source batch")
    p.add_argument("--draws", type=int, default=8)
    a = p.parse_args()
    torch.manual_seed(42)
    rng = random.Random(42)
    tok = AutoTokenizer.from_pretrained(a.start)
    model = AutoModelForSequenceClassification.from_pretrained(a.start, num_labels=2)
    model.mlm_head = udalm.mlm_head_for(model)
    model.train()
    source = [json.loads(line) for line in open(a.source)]
    target = [json.loads(line)["text"] for line in open(a.target)]
    labels = sorted({r["label"] for r in source})
    pad, mask = DataCollatorWithPadding(tok), DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    encoder = [p for n, p in model.named_parameters() if n.startswith(model.base_model_prefix + ".")]
    mlm_loss = udalm.Trainer._mlm_loss  # uses neither self nor the Trainer's state

    def grad(loss):
        gs = torch.autograd.grad(loss, encoder, allow_unused=True)
        return torch.cat([torch.zeros(p.numel()) if g is None else g.flatten() for g, p in zip(gs, encoder)])

    def encode(text):
        return tok(text, truncation=True, max_length=256)

    rows = []
    for _ in range(a.draws):
        batch = pad([{**encode(r["text"]), "labels": labels.index(r["label"])} for r in rng.sample(source, 16)])
        task = model(**batch).loss
        mlm = sum(mlm_loss(None, model, mask([encode(t) for t in rng.sample(target, 16)])) for _ in range(a.k)) / a.k
        g_task, g_mlm = grad(task / (a.k + 1)), grad(mlm * a.k / (a.k + 1))
        rows.append((task.item(), mlm.item(), g_task.norm().item(), g_mlm.norm().item(),
                     torch.nn.functional.cosine_similarity(g_task, g_mlm, dim=0).item()))  # fmt: skip
        print(ROW.format(*rows[-1]))
    m = [sum(c) / len(c) for c in zip(*rows)]
    print("mean: " + ROW.format(*m))
    print(f"the masked-LM gradient is {m[3] / m[2]:.1f}x the task's on the encoder")


if __name__ == "__main__":
    main()
