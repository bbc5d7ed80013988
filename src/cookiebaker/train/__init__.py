"""Stage ``train``: training samples → a LoRA (QLoRA on CUDA) responder adapter, with held-out evaluation."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import polars as pl
from pydantic import Field, model_validator

from cookiebaker.chat import HELDOUT_FILE
from cookiebaker.config import StageConfig, save_resolved_config
from cookiebaker.errors import DatasetError, ModelError
from cookiebaker.io import write_json

__all__ = ["TrainConfig", "run", "DEFAULT_TARGET_MODULES", "HELDOUT_FILE"]

log = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(StageConfig):
    data: str = "data/qa.parquet"
    """Samples written by ``cookiebaker pairs`` (reply pairs or conversations)."""
    output_dir: str = "models/adapter"
    """Checkpoints (``checkpoint-N``), the final adapter, metrics.json, the loss curve and logs go here."""
    report: str | None = None
    """Also write metrics.json here, and the loss curve beside it as ``<stem>_loss.json`` (DVC metric and plot,
    which must live outside output_dir)."""
    base_model: str = "IlyaGusev/gemma-2-2b-it-abliterated"
    """Hub id, local model folder, or ``embedded:smollm2-135m`` (the small model shipped on PyPI)."""
    max_steps: int = Field(150, ge=1)
    """Optimizer steps."""
    learning_rate: float = Field(1e-5, gt=0)
    """Peak learning rate (after warm-up)."""
    warmup_steps: int = Field(15, ge=0)
    """Linear warm-up steps."""
    lr_scheduler: str = "linear"
    """Learning-rate schedule after warm-up (a transformers scheduler name)."""
    batch_size: int = Field(1, ge=1)
    """Samples per device per micro-batch (flattened into one padding-free row)."""
    grad_accum: int = Field(16, ge=1)
    """Micro-batches per optimizer step."""
    lora_r: int = Field(8, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(16, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    """Linear layers that get LoRA adapters."""
    max_length: int = Field(1024, ge=16)
    """Longest sample in tokens; longer ones keep their first token and their end (counted as truncated)."""
    turn_tokens: int | None = Field(200, ge=16)
    """Longest an earlier turn of a sample is trained with, in tokens (its end kept), as the service sends a chat's
    earlier turns (``serve.turn_tokens``); null: whole."""
    context_turns: int | None = Field(None, ge=0)
    """Earlier messages a sample is trained with, at most (before its last user turn: a pair's context, a
    conversation's earlier turns); null: all the samples have. Eval still gives them all, as serving does."""
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of samples held out for evaluation (deterministic for a seed)."""
    max_eval_samples: int = Field(256, ge=1)
    """Cap on held-out samples."""
    seed: int = 42
    """Seed for the split, LoRA initialisation, data order and dropout."""
    save_steps: int = Field(50, ge=1)
    """Write ``checkpoint-N`` every N optimizer steps (and at the end)."""
    system_prompt: str | None = None
    """Optional system text for every sample (folded into the first user turn for Gemma)."""
    quantization: Literal["auto", "nf4", "none"] = "auto"
    """auto: 4-bit NF4 with double quantization on CUDA, full precision on CPU."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Mixed precision; auto: bf16 (fp16 on GPUs without bf16; on CPU bf16 where native, else fp32)."""
    optimizer: str = "auto"
    """auto: paged AdamW 8-bit with 4-bit bases on CUDA, AdamW otherwise; or any transformers optimizer name."""
    gradient_checkpointing: Literal["auto", True, False] = "auto"
    """auto: on for CUDA, off on CPU."""
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    """auto: eager for Gemma-2 (soft-capped attention), sdpa otherwise."""
    torch_compile: bool = False
    """Compile the model with torch.compile (pays off on long runs)."""
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard", "wandb"])
    """Metric loggers; W&B runs offline unless WANDB_API_KEY is set (also read from .env). Never chat text."""
    logging_steps: int = Field(1, ge=1)
    """Log the training loss every N optimizer steps."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir."""
    eval_loss: bool = True
    """Measure the held-out loss before and after training (metrics.json); the eval stage measures it again through
    the served model, so a short run may leave it to eval."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        problems = []
        if self.warmup_steps > self.max_steps:
            problems.append(f"'warmup_steps' ({self.warmup_steps}) is longer than 'max_steps' ({self.max_steps})")
        if not self.target_modules:
            problems.append("'target_modules' is empty: LoRA needs at least one layer")
        unknown = sorted(set(self.report_to) - {"tensorboard", "wandb", "none"})
        if unknown:
            problems.append(f"'report_to' has unknown logger(s) {', '.join(unknown)} (tensorboard, wandb, none)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def split_indices(n: int, eval_fraction: float, cap: int, seed: int,
                  groups: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Deterministic held-out split; at least one training sample.

    With ``groups`` (one label per sample, e.g. a digest of its text), samples of one group always land on the
    same side: a text that occurs several times is never both trained on and evaluated.
    """
    n_eval = min(cap, round(n * eval_fraction)) if eval_fraction > 0 else 0
    n_eval = max(1 if eval_fraction > 0 and n >= 2 else 0, min(n_eval, n - 1))
    if groups is None:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return sorted(order[n_eval:]), sorted(order[:n_eval])
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = list(members)
    random.Random(seed).shuffle(order)
    held: list[int] = []
    for group in order:
        if len(held) >= n_eval:
            break
        if n - len(held) - len(members[group]) >= 1:  # keep at least one training sample
            held += members[group]
    chosen = set(held)
    return [i for i in range(n) if i not in chosen], sorted(held)


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def heldout_record(config: TrainConfig, frame: pl.DataFrame, keys: list[str], digests: list[str],
                   train_ids: list[int], eval_ids: list[int]) -> dict:
    """What ``eval`` needs to evaluate exactly the held-out samples: their identities (row, key, text digest),
    the data they came from, and how training rendered them."""
    return {
        "data": str(config.data),
        "data_sha256": _file_digest(config.data),
        "rows": frame.height,
        "trained": len(train_ids),
        "base_model": config.base_model,
        "system_prompt": config.system_prompt,
        "max_length": config.max_length,
        "turn_tokens": config.turn_tokens,
        "seed": config.seed,
        "heldout": [{"row": i, "key": keys[i], "digest": digests[i]} for i in eval_ids],
    }


@contextlib.contextmanager
def _logging_environment(config: TrainConfig, output: Path) -> Iterator[list[str]]:
    """The loggers that can run here, with their environment (W&B offline unless a key is configured) set for
    this run only: whatever the variables were before comes back afterwards."""
    try:
        from dotenv import load_dotenv

        load_dotenv(override=False)
    except ImportError:
        pass
    loggers = [name for name in config.report_to if name != "none"]
    settings: dict[str, str] = {}
    if "wandb" in loggers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            log.info("wandb is not installed: logging to TensorBoard only")
            loggers.remove("wandb")
        else:
            settings = {"WANDB_DIR": str(output), "WANDB_LOG_MODEL": "false",
                        "WANDB_PROJECT": os.environ.get("WANDB_PROJECT") or "cookiebaker"}
            if not os.environ.get("WANDB_API_KEY"):
                settings["WANDB_MODE"] = os.environ.get("WANDB_MODE") or "offline"
    if "tensorboard" in loggers:
        settings["TENSORBOARD_LOGGING_DIR"] = str(output / "runs")
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield loggers
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _checkpointing_arguments(arguments_class: type, enabled: bool) -> dict:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing; use what this version has."""
    name = "activation_checkpointing" if "activation_checkpointing" in arguments_class.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def _latest_checkpoint(output: Path) -> Path | None:
    """The newest complete ``checkpoint-N``; incomplete ones (a run killed while writing one, before checkpoints
    were written aside) are reported and passed over."""
    from cookiebaker.train.trainer import CHECKPOINT_FILES

    checkpoints = [p for p in output.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for checkpoint in sorted(checkpoints, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
        if not missing:
            log.info("--resume: continuing from %s", checkpoint)
            return checkpoint
        log.warning("--resume: %s is incomplete (no %s): ignored", checkpoint, ", ".join(missing))
    return None


class TrainMetrics(TypedDict):
    """What ``train`` measured (metrics.json, also the report, a DVC metric)."""

    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss: float
    trained_tokens: int
    tokens_per_second: float | None
    train_seconds: float
    samples: int
    eval_samples: int
    truncated: int
    steps: int
    resumed_from: str | None
    base_model: str
    plan: dict


@dataclass
class Prepared:
    """The samples as the model sees them, split for training and evaluation."""

    tokenizer: Any
    train_rows: list[dict]
    eval_rows: list[dict]
    truncated: int
    heldout: dict


def run(config: TrainConfig) -> TrainMetrics:
    """Train the adapter; write checkpoints, the final adapter, metrics.json, heldout.json and the loss curve."""
    from transformers import set_seed

    output = Path(config.output_dir)
    base = resolve_base(config)
    data = prepare(config, base)
    plan = plan_for(config, base)
    set_seed(config.seed)
    model = build_model(config, base, plan)
    with _logging_environment(config, output) as loggers:
        trainer, throughput = build_trainer(config, model, data, plan, loggers)
        metrics = fit(config, trainer, throughput, data, plan)
    if trainer.is_world_process_zero():
        write_outputs(config, trainer, metrics, data.heldout)
    log.info("train: eval loss %s → %s, %d tokens at %s tokens/s", metrics["eval_loss_before"],
             metrics["eval_loss_after"], metrics["trained_tokens"], metrics["tokens_per_second"])
    return metrics


def resolve_base(config: TrainConfig) -> str:
    from cookiebaker.models import resolve_base_model

    return resolve_base_model(config.base_model)


def _read_samples(config: TrainConfig) -> tuple[pl.DataFrame, list]:
    from cookiebaker.chat import samples_to_messages

    try:
        frame = pl.read_parquet(config.data)
    except FileNotFoundError:
        raise DatasetError(f"{config.data}: no such file (run `cookiebaker pairs` first)") from None
    conversations = samples_to_messages(frame)
    if not conversations:
        raise DatasetError(f"{config.data}: the dataset is empty: nothing to train on")
    return frame, conversations


def _load_tokenizer(config: TrainConfig, base: str) -> Any:
    from transformers import AutoTokenizer

    from cookiebaker.models import load_failure

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise load_failure(base, exc) from None
    if tokenizer.chat_template is None:
        raise ModelError(f"{config.base_model} has no chat template: use an instruction-tuned (chat) model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _encode_all(config: TrainConfig, tokenizer: Any, conversations: list) -> list:
    from cookiebaker.chat import IGNORE, cap_sample, encode, normalize, supports_system_role

    system_role = supports_system_role(tokenizer)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    encoded = []
    for index, messages in enumerate(conversations):
        if config.context_turns is not None:
            messages = messages[-(config.context_turns + 2):]
            while len(messages) > 2 and messages[0]["role"] == "assistant":  # a sample starts with the user
                messages = messages[1:]
        messages = cap_sample(messages, count, config.turn_tokens)
        if config.system_prompt:
            messages = [{"role": "system", "content": config.system_prompt}, *messages]
        sample = encode(tokenizer, normalize(messages, system_role), config.max_length)
        if all(label == IGNORE for label in sample.labels):
            raise DatasetError(f"{config.data}: sample {index} has no trainable token (no assistant answer)")
        encoded.append(sample)
    return encoded


def prepare(config: TrainConfig, base: str) -> Prepared:
    """Read, render and tokenise the samples; hold out a share of them, split by the text of their last exchange
    (the same query and answer are never on both sides, whatever context or speakers came with them; and samples
    built with or without context from the same messages are split alike)."""
    from cookiebaker.chat import sample_digest, sample_keys

    frame, conversations = _read_samples(config)
    tokenizer = _load_tokenizer(config, base)
    encoded = _encode_all(config, tokenizer, conversations)
    digests = [sample_digest(messages) for messages in conversations]
    exchanges = [sample_digest([{"role": m["role"], "content": m["content"]} for m in messages[-2:]])
                 for messages in conversations]
    train_ids, eval_ids = split_indices(len(encoded), config.eval_fraction, config.max_eval_samples, config.seed,
                                        groups=exchanges)
    rows = [{"input_ids": s.input_ids, "labels": s.labels} for s in encoded]
    truncated = sum(sample.truncated for sample in encoded)
    log.info("train: %d samples (%d held out, %d truncated to %d tokens)", len(encoded), len(eval_ids), truncated,
             config.max_length)
    return Prepared(tokenizer, [rows[i] for i in train_ids], [rows[i] for i in eval_ids], truncated,
                    heldout_record(config, frame, sample_keys(frame), digests, train_ids, eval_ids))


def plan_for(config: TrainConfig, base: str):  # noqa: ANN201
    """What this hardware runs of the recipe (said in log lines and recorded in metrics.json)."""
    from transformers import AutoConfig

    from cookiebaker.models import load_failure
    from cookiebaker.train.plan import make_plan

    try:
        model_type = AutoConfig.from_pretrained(base).model_type
    except (OSError, ValueError) as exc:
        raise load_failure(base, exc) from None
    return make_plan(quantization=config.quantization, precision=config.precision, optimizer=config.optimizer,
                     gradient_checkpointing=config.gradient_checkpointing,
                     attn_implementation=config.attn_implementation, model_type=model_type)


def _load_base(base: str, plan) -> Any:  # noqa: ANN001
    import torch
    from transformers import AutoModelForCausalLM

    from cookiebaker.models import load_failure

    load_kwargs: dict = {"attn_implementation": plan.attn_implementation}
    if plan.quantize_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.compute_dtype)
        load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    else:
        load_kwargs["dtype"] = torch.float32 if plan.device == "cpu" else plan.compute_dtype
    try:
        return AutoModelForCausalLM.from_pretrained(base, **load_kwargs)
    except (OSError, ValueError) as exc:
        raise load_failure(base, exc) from None


def build_model(config: TrainConfig, base: str, plan) -> Any:  # noqa: ANN001
    """The base (4-bit on CUDA) with LoRA adapters on the target modules it has."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = _load_base(base, plan)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in config.target_modules if m in present]
    missing = sorted(set(config.target_modules) - set(targets))
    if not targets:
        raise ModelError(f"none of target_modules ({', '.join(config.target_modules)}) exists in {config.base_model}")
    if missing:
        log.warning("LoRA target modules not in this model, skipped: %s", ", ".join(missing))
    if plan.quantize_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.gradient_checkpointing)
    elif plan.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                            lora_dropout=config.lora_dropout, target_modules=targets,
                                            task_type="CAUSAL_LM"))


def _training_arguments(config: TrainConfig, plan, loggers: list[str]) -> Any:  # noqa: ANN001
    from transformers import TrainingArguments

    output = Path(config.output_dir)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(output),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        eval_strategy="no",
        bf16=plan.mixed_precision == "bf16",
        fp16=plan.mixed_precision == "fp16",
        optim=plan.optimizer,
        **_checkpointing_arguments(TrainingArguments, plan.gradient_checkpointing),
        torch_compile=config.torch_compile,
        report_to=loggers or "none",
        run_name=output.name,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=plan.device == "cpu",
        ddp_backend="gloo" if distributed and plan.device == "cpu" else None,
        ddp_find_unused_parameters=False if distributed else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=os.environ.get("COOKIEBAKER_PROGRESS") == "off",
    )


def build_trainer(config: TrainConfig, model: Any, data: Prepared, plan, loggers: list[str]):  # noqa: ANN001, ANN201
    from cookiebaker.train.trainer import ResponseOnlyTrainer, ThroughputCallback, flattening_collator

    throughput = ThroughputCallback()
    trainer = ResponseOnlyTrainer(model=model, args=_training_arguments(config, plan, loggers),
                                  train_dataset=data.train_rows, eval_dataset=data.eval_rows or None,
                                  data_collator=flattening_collator(), processing_class=data.tokenizer,
                                  callbacks=[throughput])
    return trainer, throughput


def fit(config: TrainConfig, trainer: Any, throughput: Any, data: Prepared, plan) -> TrainMetrics:  # noqa: ANN001
    """Evaluate, train (resuming where asked), evaluate again: the metrics."""
    measure = bool(data.eval_rows) and config.eval_loss
    eval_before = trainer.evaluate()["eval_loss"] if measure else None
    resume_from = _latest_checkpoint(Path(config.output_dir)) if config.resume else None
    if config.resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s yet, starting from the beginning", config.output_dir)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    wall = time.perf_counter() - started
    eval_after = trainer.evaluate()["eval_loss"] if measure else None
    return {
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "train_loss": result.training_loss,
        "trained_tokens": trainer.tokens_seen,
        "tokens_per_second": round(trainer.tokens_seen / throughput.seconds, 2) if throughput.seconds else None,
        "train_seconds": round(wall, 2),
        "samples": len(data.train_rows),
        "eval_samples": len(data.eval_rows),
        "truncated": data.truncated,
        "steps": trainer.state.global_step,
        "resumed_from": resume_from.name if resume_from else None,
        "base_model": config.base_model,
        "plan": plan.describe(),
    }


def write_outputs(config: TrainConfig, trainer: Any, metrics: TrainMetrics, heldout: dict) -> None:
    """The final adapter at the top of output_dir, metrics.json, heldout.json, the loss curve, the report."""
    from cookiebaker.train.trainer import write_loss_curve

    output = Path(config.output_dir)
    trainer.save_model(str(output))
    write_json(metrics, output / "metrics.json")
    write_json(heldout, output / HELDOUT_FILE)
    write_loss_curve(trainer.state.log_history, metrics["eval_loss_before"], metrics["eval_loss_after"],
                     output / "loss_curve")
    if config.report:
        report = Path(config.report)
        write_json(metrics, report)
        shutil.copy(output / "loss_curve.json", report.with_name(f"{report.stem}_loss.json"))
    save_resolved_config(config, output / "train_config.yaml")
