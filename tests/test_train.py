from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import run_cli

from cookiebaker import train
from cookiebaker.chat import IGNORE, encode, normalize, supports_system_role
from cookiebaker.config import build_config
from cookiebaker.errors import ConfigError, DatasetError
from cookiebaker.train import TrainConfig, split_indices

FAST = {"warmup_steps": 1, "learning_rate": 3e-3, "grad_accum": 2, "batch_size": 4, "report_to": ["none"]}


def _labelled_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])


def test_gemma_formatting_and_label_mask(tiny_gemma: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma)
    assert not supports_system_role(tokenizer)
    messages = normalize([{"role": "system", "content": "be brief"}, {"role": "user", "content": "pizza tonight?"},
                          {"role": "user", "content": "or tea"}, {"role": "assistant", "content": "yes bring snacks"},
                          {"role": "assistant", "content": "and coffee"}], system_role=False)
    assert messages == [{"role": "user", "content": "be brief\n\npizza tonight?\nor tea"},
                        {"role": "assistant", "content": "yes bring snacks\nand coffee"}]
    encoded = encode(tokenizer, messages, max_length=1024)
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<end_of_turn>\n")
    assert not text.endswith("<start_of_turn>model\n")  # no generation prompt after the answer
    assert _labelled_text(tokenizer, encoded) == "yes bring snacks\nand coffee<end_of_turn>\n"
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE]


def test_truncation_keeps_the_answer_end(tiny_gemma: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma)
    messages = [{"role": "user", "content": "pizza " * 200}, {"role": "assistant", "content": "yes"}]
    encoded = encode(tokenizer, messages, max_length=32)
    assert encoded.truncated and len(encoded.input_ids) == 32
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    assert _labelled_text(tokenizer, encoded) == "yes<end_of_turn>\n"


def test_chatml_formatting_of_the_embedded_model(embedded_cache: Path) -> None:
    from transformers import AutoTokenizer

    from cookiebaker.models import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("embedded:smollm2-135m"))
    assert supports_system_role(tokenizer)
    messages = normalize([{"role": "system", "content": "You are Bob."}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello there"}], system_role=True)
    encoded = encode(tokenizer, messages, max_length=1024)
    assert tokenizer.decode(encoded.input_ids).startswith("<|im_start|>system\nYou are Bob.<|im_end|>")
    assert _labelled_text(tokenizer, encoded) == "hello there<|im_end|>\n"


def test_split_is_deterministic_and_capped() -> None:
    train_ids, eval_ids = split_indices(1000, 0.05, 30, seed=1)
    assert len(eval_ids) == 30 and len(train_ids) == 970 and not set(train_ids) & set(eval_ids)
    assert split_indices(1000, 0.05, 30, seed=1) == (train_ids, eval_ids)
    assert split_indices(1000, 0.05, 30, seed=2) != (train_ids, eval_ids)
    assert split_indices(1, 0.05, 30, seed=1) == ([0], [])


def test_flattened_batch_loss_equals_per_sample_losses(tiny_gemma: Path) -> None:
    """Padding-free packing must not let samples attend to each other."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from cookiebaker.train.trainer import ResponseOnlyTrainer, flattening_collator

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma, attn_implementation="eager")
    rows = [{"input_ids": [2, 10, 11, 12, 13, 14], "labels": [-100, -100, -100, 12, 13, 14]},
            {"input_ids": [2, 20, 21, 22], "labels": [-100, -100, 21, 22]}]
    trainer = ResponseOnlyTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", report_to="none",
                                                                      use_cpu=True))
    collate = flattening_collator()
    model.eval()
    with torch.no_grad():
        packed = trainer.compute_loss(model, collate(rows), num_items_in_batch=torch.tensor(5))
        separate = [trainer.compute_loss(model, collate([row]), num_items_in_batch=torch.tensor(5)) for row in rows]
    assert torch.allclose(packed, sum(separate), atol=1e-5)


def test_training_run_checkpoints_and_metrics(tiny_gemma: Path, demo_pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    metrics = train.run(TrainConfig(data=str(demo_pairs), output_dir=str(out), base_model=str(tiny_gemma),
                                    max_steps=16, save_steps=8, **FAST))
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.05
    assert metrics["samples"] + metrics["eval_samples"] == pl.read_parquet(demo_pairs).height
    assert set(metrics) == set(train.TrainMetrics.__annotations__)
    assert metrics["trained_tokens"] > 0 and metrics["tokens_per_second"] > 0 and metrics["truncated"] == 0
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-8", "checkpoint-16"}
    adapter = json.loads((out / "checkpoint-16" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == set(train.DEFAULT_TARGET_MODULES)
    assert adapter["base_model_name_or_path"] == str(tiny_gemma)
    for name in ("metrics.json", "loss_curve.png", "loss_curve.json", "train_config.yaml", "adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert metrics["plan"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU plan: this machine has CUDA")
def test_cpu_fallback_is_logged(tiny_gemma: Path, demo_pairs: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cookiebaker"):
        metrics = train.run(TrainConfig(data=str(demo_pairs), output_dir=str(tmp_path / "a"), base_model=str(tiny_gemma),
                                        max_steps=1, **FAST))
    text = caplog.text
    assert "instead of 4-bit NF4" in text and "paged AdamW 8-bit needs CUDA" in text
    assert metrics["plan"]["optimizer"] == "adamw_torch" and metrics["plan"]["attn_implementation"] == "eager"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train.run(TrainConfig(data=str(demo_pairs), output_dir=str(tmp_path / "b"), base_model=str(tiny_gemma),
                              quantization="nf4", **FAST))


def _adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_resume_after_an_interruption_is_deterministic(tiny_gemma: Path, demo_pairs: Path, tmp_path: Path,
                                                       monkeypatch, caplog) -> None:
    from cookiebaker.train import trainer as trainer_module

    common = {"data": str(demo_pairs), "base_model": str(tiny_gemma), "max_steps": 6, "save_steps": 2, **FAST}
    train.run(TrainConfig(output_dir=str(tmp_path / "straight"), **common))

    def stop_at_step_3(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.ThroughputCallback, "on_step_end", stop_at_step_3, raising=False)
    with pytest.raises(KeyboardInterrupt):
        train.run(TrainConfig(output_dir=str(tmp_path / "stopped"), **common))
    assert {p.name for p in (tmp_path / "stopped").glob("checkpoint-*")} == {"checkpoint-2"}
    assert not (tmp_path / "stopped" / ".partial").exists()  # written aside, then renamed
    half = tmp_path / "stopped" / "checkpoint-3"  # what a kill during the save used to leave behind
    half.mkdir()
    (half / "README.md").write_text("model card")
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="cookiebaker"):
        metrics = train.run(TrainConfig(output_dir=str(tmp_path / "stopped"), resume=True, **common))
    assert metrics["resumed_from"] == "checkpoint-2" and metrics["steps"] == 6
    assert "checkpoint-3 is incomplete" in caplog.text and "continuing from" in caplog.text
    straight, resumed = _adapter_weights(tmp_path / "straight"), _adapter_weights(tmp_path / "stopped")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_same_seed_same_adapter(tiny_gemma: Path, demo_pairs: Path, tmp_path: Path) -> None:
    common = {"data": str(demo_pairs), "base_model": str(tiny_gemma), "max_steps": 3, "save_steps": 3, **FAST}
    train.run(TrainConfig(output_dir=str(tmp_path / "a"), **common))
    train.run(TrainConfig(output_dir=str(tmp_path / "b"), **common))
    a, b = _adapter_weights(tmp_path / "a"), _adapter_weights(tmp_path / "b")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_dataset_errors(tiny_gemma: Path, tmp_path: Path) -> None:
    pl.DataFrame({"query": [], "response": []}, schema={"query": pl.String, "response": pl.String}).write_parquet(
        tmp_path / "empty.parquet")
    with pytest.raises(DatasetError, match="empty"):
        train.run(TrainConfig(data=str(tmp_path / "empty.parquet"), output_dir=str(tmp_path / "o"),
                              base_model=str(tiny_gemma), **FAST))
    pl.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}).write_parquet(tmp_path / "noanswer.parquet")
    with pytest.raises(DatasetError, match="no trainable token"):
        train.run(TrainConfig(data=str(tmp_path / "noanswer.parquet"), output_dir=str(tmp_path / "o"),
                              base_model=str(tiny_gemma), **FAST))
    with pytest.raises(ConfigError, match="warmup_steps"):
        build_config(TrainConfig, "train", {"train": {"max_steps": 5, "warmup_steps": 10, "report_to": ["mlflow"]}})


def test_cli_train_and_merge(tiny_gemma: Path, demo_pairs: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--data", str(demo_pairs), "--output-dir", str(tmp_path / "adapter"), "--base-model",
                     str(tiny_gemma), "--max-steps", "2", "--warmup-steps", "1", "--save-steps", "1",
                     "--report-to", "tensorboard", "--learning-rate", "1e-3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 2 steps" in result.stdout
    assert list((tmp_path / "adapter" / "runs").rglob("events.out.tfevents*"))
    result = run_cli("merge", "--adapter", str(tmp_path / "adapter" / "checkpoint-2"), "--output",
                     str(tmp_path / "merged"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "merged" / "tokenizer.model").is_file()
    result = run_cli("train", "--data", str(tmp_path / "nope.parquet"), "--base-model", str(tiny_gemma), cwd=tmp_path)
    assert result.returncode == 1 and "run `cookiebaker pairs` first" in result.stderr
    result = run_cli("train", "--data", str(demo_pairs), "--base-model", "nobody/nothing-here", "--output-dir",
                     str(tmp_path / "x"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "local folder" in result.stderr


@pytest.mark.slow
def test_two_processes_with_torchrun(tiny_gemma: Path, demo_pairs: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COOKIEBAKER_PROGRESS": "off"}
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "cookiebaker", "train",
         "--data", str(demo_pairs), "--output-dir", str(tmp_path / "ddp"), "--base-model", str(tiny_gemma),
         "--max-steps", "3", "--warmup-steps", "1", "--save-steps", "3", "--report-to", "none", "--batch-size", "2",
         "--grad-accum", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and (tmp_path / "ddp" / "checkpoint-3" / "adapter_model.safetensors").is_file()


def test_logging_environment_is_set_for_one_run_only(tmp_path: Path, monkeypatch) -> None:
    from cookiebaker.train import _logging_environment

    for name in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", "TENSORBOARD_LOGGING_DIR", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    for run in ("first", "second"):  # a second run in the same process gets its own folders
        config = TrainConfig(output_dir=str(tmp_path / run), report_to=["tensorboard", "wandb"])
        with _logging_environment(config, tmp_path / run) as loggers:
            assert loggers == ["tensorboard", "wandb"]
            assert os.environ["WANDB_DIR"] == str(tmp_path / run)
            assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / run / "runs")
            assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_PROJECT"] == "mine"
        assert "WANDB_DIR" not in os.environ and "TENSORBOARD_LOGGING_DIR" not in os.environ
        assert "WANDB_MODE" not in os.environ and os.environ["WANDB_PROJECT"] == "mine"


def test_the_gguf_reader_patch_leaves_transformers_as_it_was() -> None:
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from cookiebaker.models import _gguf_reader_of_the_converter

    names = ("is_gguf_available", "GGUFReader", "dequantize")
    before = {name: getattr(gguf_utils, name, None) for name in names}
    present = {name: hasattr(gguf_utils, name) for name in names}
    with _gguf_reader_of_the_converter():
        assert gguf_utils.is_gguf_available() and gguf_utils.GGUFReader is not None
    assert {name: getattr(gguf_utils, name, None) for name in names} == before
    assert {name: hasattr(gguf_utils, name) for name in names} == present
