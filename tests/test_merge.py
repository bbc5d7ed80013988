from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cookiebaker import merge, train
from cookiebaker.errors import ModelError
from cookiebaker.merge import MergeConfig
from cookiebaker.train import TrainConfig


@pytest.fixture(scope="module")
def adapter(tiny_gemma: Path, demo_pairs: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter")
    # A high learning rate so the adapter really changes the model.
    train.run(TrainConfig(data=str(demo_pairs), output_dir=str(out), base_model=str(tiny_gemma), max_steps=4,
                          save_steps=4, warmup_steps=0, learning_rate=5e-2, grad_accum=1, batch_size=4,
                          report_to=["none"]))
    return out / "checkpoint-4"


def test_merged_logits_equal_base_plus_adapter(tiny_gemma: Path, adapter: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    report = merge.run(MergeConfig(adapter=str(adapter), output=str(tmp_path / "merged")))
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= set(report["tokenizer_files"])
    ids = torch.tensor([[2, 4, 30, 31, 32, 33, 5, 40, 41]])
    base = AutoModelForCausalLM.from_pretrained(tiny_gemma, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, adapter)(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
    assert not torch.allclose(base_logits, peft_logits, atol=1e-3)  # the adapter does something
    assert torch.allclose(merged_logits, peft_logits, atol=1e-4)
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_merge_again_replaces_the_output(adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    merge.run(MergeConfig(adapter=str(adapter), output=str(out)))
    (out / "stale.txt").write_text("left over")
    merge.run(MergeConfig(adapter=str(adapter), output=str(out)))
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".merged*"))


def test_merge_from_the_train_folder_and_errors(adapter: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # The train folder's top level holds the final adapter: the last checkpoint's weights, merged alike.
    report = merge.run(MergeConfig(adapter=str(adapter.parent), output=str(tmp_path / "m")))
    assert report["adapter"] == str(adapter.parent) and set(report) == set(merge.MergeReport.__annotations__)
    merge.run(MergeConfig(adapter=str(adapter), output=str(tmp_path / "c")))
    from_folder, from_checkpoint = load_file(tmp_path / "m" / "model.safetensors"), \
        load_file(tmp_path / "c" / "model.safetensors")
    assert from_folder.keys() == from_checkpoint.keys()
    assert all(torch.equal(from_folder[name], from_checkpoint[name]) for name in from_folder)
    with pytest.raises(ModelError, match="no LoRA adapter"):
        merge.run(MergeConfig(adapter=str(tmp_path), output=str(tmp_path / "x")))
