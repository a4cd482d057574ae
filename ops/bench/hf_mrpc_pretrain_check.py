#!/usr/bin/env python3
"""Does language-model pretraining on the local GLUE train text lift MRPC above the
majority class? A check in plain PyTorch + transformers, independent of qsched.

1. Causal-LM pretraining of a Qwen3 of the given shape (random init, the real 151,936-token
   vocabulary, tied embeddings) on the train splits of SST-2, CoLA, MRPC, STS-B, RTE and
   WNLI in DATA_DIR (no validation text): blocks of 128 tokens, batch 64, AdamW lr 1e-3,
   100 warm-up steps and linear decay, clipping at 1.0.
2. MRPC fine-tuning with Qwen3ForSequenceClassification (last-token pooling), from the
   pretrained weights and from random weights, with qsched's tiny MRPC protocol:
   "Sentence 1: …\\nSentence 2: …" cut to 64 tokens, a seeded 500-pair dev split taken from
   train, 1000 steps of 16, AdamW (weight decay 0.01, 4 warm-up steps, linear decay,
   clipping 1.0), dev F1 every 50 steps, the test metrics (the official validation split,
   408 pairs) at the best dev F1.

  python3 ops/bench/hf_mrpc_pretrain_check.py DATA_DIR [--hidden 64] [--layers 2] [--epochs 10] [--device cuda]

Prints one JSON object per fine-tuning configuration (3 seeds each). Needs torch,
transformers and tokenizers.
"""

import argparse
import csv
import json
import random
import time

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

PAD = 151643  # <|endoftext|>, also the document separator in the pretraining stream
MAX_SEQ_LEN = 64


def tsv_rows(path, columns, header=True):
    """The rows of a GLUE TSV file; a row with fewer than `columns` fields is an error."""
    csv.field_size_limit(10**8)
    with open(path, encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 if header else 0:]
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) < columns:
            raise SystemExit(f"{path}:{number}: {len(row)} fields, expected at least {columns}")
    return rows


def pretraining_texts(data):
    g = f"{data}/glue"
    texts = [r[0] for r in tsv_rows(f"{g}/SST-2/train.tsv", 1)]
    texts += [r[3] for r in tsv_rows(f"{g}/CoLA/train.tsv", 4, header=False)]
    texts += [r[3] + "\n" + r[4] for r in tsv_rows(f"{g}/MRPC/train.tsv", 5)]
    texts += [r[7] + "\n" + r[8] for r in tsv_rows(f"{g}/STS-B/train.tsv", 9)]
    texts += [r[1] + "\n" + r[2] for r in tsv_rows(f"{g}/RTE/train.tsv", 3)]
    texts += [r[1] + "\n" + r[2] for r in tsv_rows(f"{g}/WNLI/train.tsv", 3)]
    return texts


def config(hidden, layers):
    return Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                       max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=PAD, num_labels=2)


def linear_schedule(opt, warmup, steps):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warmup) * max(0.0, 1 - s / steps))


def pretrain(ids, cfg, device, seed, epochs, block=128, batch=64, lr=1e-3):
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).to(device)
    data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    steps = epochs * (len(data) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = linear_schedule(opt, 100, steps)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(data))
        for i in range(0, len(data) - batch + 1, batch):
            x = data[perm[i:i + batch]].to(device)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        losses.append(round(loss.item(), 3))
    return model.state_dict(), losses


def mrpc_split(data, tok, split):
    out = []
    for r in tsv_rows(f"{data}/glue/MRPC/{split}.tsv", 5):
        text = "Sentence 1: " + r[3].strip() + "\nSentence 2: " + r[4].strip()
        out.append((tok.encode(text).ids[:MAX_SEQ_LEN], int(r[0])))
    return out


def collate(batch, device):
    width = max(len(ids) for ids, _ in batch)
    x = torch.tensor([ids + [PAD] * (width - len(ids)) for ids, _ in batch], device=device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
    return x, mask


def evaluate(model, data, device):
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(data), 128):
            x, mask = collate(data[i:i + 128], device)
            preds += model(input_ids=x, attention_mask=mask).logits.argmax(-1).tolist()
    model.train()
    gold = [label for _, label in data]
    tp = sum(p == 1 and g == 1 for p, g in zip(preds, gold))
    fp = sum(p == 1 and g == 0 for p, g in zip(preds, gold))
    fn = sum(p == 0 and g == 1 for p, g in zip(preds, gold))
    return {"accuracy": sum(p == g for p, g in zip(preds, gold)) / len(gold), "f1": 2 * tp / max(1, 2 * tp + fp + fn)}


def finetune(train_all, test, cfg, init, lr, seed, device, steps=1000, batch=16, every=50):
    rnd = random.Random(seed)
    train = train_all[:]
    rnd.shuffle(train)
    dev, train = train[:500], train[500:]
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(cfg).to(device)
    if init is not None:
        # The classifier's `score` head stays random; the LM head is tied to the embeddings.
        loaded = model.load_state_dict({k: v for k, v in init.items() if not k.startswith("lm_head")}, strict=False)
        if loaded.unexpected_keys or loaded.missing_keys != ["score.weight"]:
            raise SystemExit(f"pretrained weights do not fit the classifier: {loaded}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = linear_schedule(opt, 4, steps)
    best = {"dev_f1": -1.0}
    for step in range(1, steps + 1):
        examples = [train[rnd.randrange(len(train))] for _ in range(batch)]
        x, mask = collate(examples, device)
        y = torch.tensor([label for _, label in examples], device=device)
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % every == 0:
            dev_f1 = evaluate(model, dev, device)["f1"]
            if dev_f1 > best["dev_f1"]:
                best = {"dev_f1": dev_f1, "step": step, "test": evaluate(model, test, device)}
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    vocab = f"{args.data_dir}/tokenizers/qwen"
    tok = ByteLevelBPETokenizer(f"{vocab}/vocab.json", f"{vocab}/merges.txt")
    cfg = config(args.hidden, args.layers)
    ids = []
    for text in pretraining_texts(args.data_dir):
        ids += tok.encode(text).ids + [PAD]
    start = time.time()
    weights, losses = pretrain(ids, cfg, args.device, 1, args.epochs)
    print(json.dumps({"record": "pretrain", "corpus_tokens": len(ids), "hidden": args.hidden, "layers": args.layers,
                      "epochs": args.epochs, "loss_per_epoch": losses, "seconds": round(time.time() - start, 1),
                      "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}), flush=True)
    train, test = mrpc_split(args.data_dir, tok, "train"), mrpc_split(args.data_dir, tok, "dev")
    for init_name, init, lrs in [("random", None, [1e-3]), ("pretrained", weights, [1e-4, 3e-4, 1e-3])]:
        for lr in lrs:
            runs = [finetune(train, test, cfg, init, lr, seed, args.device) for seed in (1, 2, 3)]
            print(json.dumps({"record": "mrpc", "init": init_name, "lr": lr, "seeds": [1, 2, 3], "runs": runs}), flush=True)


if __name__ == "__main__":
    main()
