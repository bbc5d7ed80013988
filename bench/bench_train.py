"""Benchmark: training throughput of cookiebaker's trainer vs the plain recipe, same data and model.

    python bench/bench_train.py [--samples 64] [--base-model embedded:smollm2-135m]

The plain recipe: batch 1, one sample per optimizer step, loss on the whole text (every logit), fp32,
the stock Hugging Face Trainer. cookiebaker: its own trainer (padding-free batches of --batch-size samples,
logits only where there is a label, the precision its plan picks for this machine). Both train the same
LoRA (r=8 on the seven projections) on the same samples (pairs of a synthetic export, rendered with the
model's chat template). Throughput counts every token of the samples, forward + backward.
Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
SYNTH = HERE.parent.parent / "shared" / "tools" / "synth_telegram_export.py"


def sample_table(work: Path, samples: int) -> Path:
    """Pairs from a synthetic export, written by the real ingest and pairs stages."""
    import subprocess

    import polars as pl

    from cookiebaker import ingest, pairs

    export = work / "synth_20000.json"
    if not export.exists():
        subprocess.run([sys.executable, str(SYNTH), "--messages", "20000", "--out", str(export)], check=True,
                       stdout=subprocess.DEVNULL)
    ingest.run(ingest.IngestConfig(inputs=[str(export)], output=str(work / "bench_messages.parquet")))
    pairs.run(pairs.PairsConfig(input=str(work / "bench_messages.parquet"), output=str(work / "bench_qa.parquet")))
    table = pl.read_parquet(work / "bench_qa.parquet").head(samples)
    path = work / f"bench_qa_{samples}.parquet"
    table.write_parquet(path)
    return path


def plain_recipe(data: Path, base: str, samples: int, seed: int) -> dict:
    """Batch 1, one sample per step, labels = input ids (loss on the whole text), fp32, stock Trainer."""
    import polars as pl
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from cookiebaker.chat import samples_to_messages
    from cookiebaker.train import DEFAULT_TARGET_MODULES

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = []
    for messages in samples_to_messages(pl.read_parquet(data)):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        rows.append({"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids)})
    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=DEFAULT_TARGET_MODULES, task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=samples, per_device_train_batch_size=1,
                                 gradient_accumulation_steps=1, learning_rate=1e-5, warmup_steps=0, report_to="none",
                                 save_strategy="no", use_cpu=not torch.cuda.is_available(), seed=seed,
                                 logging_steps=10_000, disable_tqdm=True, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1)}


def cookiebaker_trainer(data: Path, base: str, samples: int, batch_size: int, seed: int, out: Path) -> dict:
    from cookiebaker import train

    steps = max(1, samples // batch_size)
    metrics = train.run(train.TrainConfig(data=str(data), output_dir=str(out), base_model=base, max_steps=steps,
                                          batch_size=batch_size, grad_accum=1, warmup_steps=0, learning_rate=1e-5,
                                          eval_fraction=0, save_steps=10_000, report_to=["none"], seed=seed))
    return {"tokens": metrics["trained_tokens"], "seconds": round(metrics["trained_tokens"] / metrics["tokens_per_second"], 2),
            "tokens_per_second": metrics["tokens_per_second"], "plan": metrics["plan"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-model", default="embedded:smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    os.environ.setdefault("COOKIEBAKER_PROGRESS", "off")
    args.workdir.mkdir(parents=True, exist_ok=True)
    from cookiebaker.models import resolve_base_model

    base = resolve_base_model(args.base_model)
    data = sample_table(args.workdir, args.samples)
    ours = cookiebaker_trainer(data, base, args.samples, args.batch_size, args.seed, args.workdir / "bench_adapter")
    plain = plain_recipe(data, base, args.samples, args.seed)
    result = {"base_model": args.base_model, "samples": args.samples, "batch_size": args.batch_size,
              "cookiebaker": ours, "plain": plain,
              "speedup": round(ours["tokens_per_second"] / plain["tokens_per_second"], 2),
              "seconds_per_1000_samples": {
                  "cookiebaker": round(ours["seconds"] / args.samples * 1000, 1),
                  "plain": round(plain["seconds"] / args.samples * 1000, 1)}}
    (args.workdir / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
