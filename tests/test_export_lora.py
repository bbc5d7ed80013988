"""export --format lora: the adapter as a LoRA module the engines load; checked against its base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cookiebaker import export
from cookiebaker.errors import ConfigError, ModelError
from cookiebaker.export import ExportConfig


@pytest.fixture(scope="module")
def adapter(tiny_merged: Path) -> Path:
    return tiny_merged.parent / "adapter"  # what train wrote before the merge


def lora(adapter: Path, target: Path, **options) -> dict:  # noqa: ANN003
    return export.run(ExportConfig(format="lora", model=str(adapter), output_dir=str(target), **options))


def test_the_module_is_the_merged_model(adapter: Path, tiny_merged: Path, tmp_path: Path) -> None:
    """Oracle: the base with the exported folder loaded as a LoRA module (as an engine reads it: adapter_config.json
    and the safetensors only) gives the merged model's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}
    report = lora(adapter, tmp_path / "sfw", name="cookiebaker-sfw", temperature=0.6)
    folder = tmp_path / "sfw"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer.model", "Modelfile",
            "export.json", "export_config.yaml"} <= {p.name for p in folder.iterdir()}
    settings = json.loads((folder / "adapter_config.json").read_text())
    base = settings["base_model_name_or_path"]
    assert base == report["base_model"] and Path(base).is_dir()  # a local base is served from its folder
    assert report["rank"] == settings["r"] == 8 and report["max_lora_rank"] == 8
    assert report["tensors"] == 2 * 7 * 2  # lora_A and lora_B of the seven projections in both layers
    assert report["vllm"][:3] == ["vllm", "serve", base] and "--enable-lora" in report["vllm"]
    assert report["vllm"][-1] == f"cookiebaker-sfw={folder.resolve()}"
    assert AutoTokenizer.from_pretrained(folder).chat_template  # vLLM renders the module's chats with it

    ids = torch.tensor([[2, 4, 30, 31, 32, 33, 5, 40, 41]])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        served = PeftModel.from_pretrained(model, folder)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tiny_merged, dtype=torch.float32)(ids).logits
    assert torch.allclose(served, merged, atol=1e-4)

    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM {base}\nADAPTER .\n") and "PARAMETER temperature 0.6" in modelfile
    assert {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()} == before  # the input is unchanged


def test_what_an_engine_refuses_is_named_at_once(adapter: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken, ignore=shutil.ignore_patterns("checkpoint-*"))
    settings = json.loads((broken / "adapter_config.json").read_text())
    settings.update(use_dora=True, modules_to_save=["lm_head"], target_modules=[*settings["target_modules"], "mlp"])
    (broken / "adapter_config.json").write_text(json.dumps(settings))
    tensors = load_file(broken / "adapter_model.safetensors")
    name = next(n for n in tensors if n.endswith("q_proj.lora_A.weight"))
    tensors[name] = torch.zeros(8, 3)  # no longer fits q_proj's input
    tensors["base_model.model.model.layers.0.nothing.lora_A.weight"] = torch.zeros(8, 64)
    save_file(tensors, broken / "adapter_model.safetensors")
    with pytest.raises(ModelError) as raised:
        lora(broken, tmp_path / "out")
    message = str(raised.value)
    for expected in ("DoRA", "modules_to_save", "['mlp']", f"tensor {name} has shape [8, 3]",
                     "the base has no linear layer model.layers.0.nothing"):
        assert expected in message, message
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_lora_export_errors(adapter: Path, tiny_merged: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="holds no LoRA adapter"):
        lora(tiny_merged, tmp_path / "x")  # a merged folder is no adapter
    with pytest.raises(ConfigError, match="output_dir is its model folder"):
        lora(adapter, adapter)


def test_serve_takes_the_system_prompt_and_sampling_from_a_modelfile(adapter: Path, tmp_path: Path) -> None:
    """An engine knows no Modelfile: serve applies the one the LoRA export wrote (--sfw-modelfile)."""
    from fastapi.testclient import TestClient

    from cookiebaker.backends import Backend
    from cookiebaker.serve import ServeConfig, build_app

    trained = tmp_path / "adapter"  # as if trained with a system prompt
    shutil.copytree(adapter, trained, ignore=shutil.ignore_patterns("checkpoint-*"))
    record = json.loads((trained / "heldout.json").read_text())
    (trained / "heldout.json").write_text(json.dumps({**record, "system_prompt": "Reply as the group."}))
    lora(trained, tmp_path / "sfw", temperature=0.55, top_p=0.8)
    modelfile = tmp_path / "sfw" / "Modelfile"
    seen = []

    class Recording(Backend):
        async def stream(self, messages, sampling):  # noqa: ANN001, ANN202
            seen.append(self.prepare(messages, sampling))
            seen.append(sampling)
            yield "ok"

    config = ServeConfig(sfw_model="openai:http://engine:8000/v1#cookiebaker-sfw", sfw_modelfile=str(modelfile),
                         history_db=str(tmp_path / "h.sqlite3"))
    client = TestClient(build_app(config, backends={"cookiebaker-sfw": Recording()}))
    assert client.post("/webhook/response", json={"prompt": "hi", "chat_id": 1}).json()["response"] == "ok"
    messages, sampling = seen
    assert (sampling.temperature, sampling.top_p) == (0.55, 0.8) and sampling.stop == ["<end_of_turn>", "<eos>"]
    assert sampling.system == "Reply as the group." and messages[0] == {"role": "system", "content": sampling.system}
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        ServeConfig(sfw_model="x.gguf", sfw_modelfile=str(tmp_path / "none"), nsfw_modelfile=str(modelfile))
    assert "not a file" in str(raised.value) and "'nsfw_modelfile' without 'nsfw_model'" in str(raised.value)
