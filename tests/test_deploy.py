"""Deployment files: the compose file validates, the n8n workflow has the product's shape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import yaml
from conftest import REPO, missing


def test_compose_file_validates() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        missing("docker-compose", "`make test` installs Debian's docker-compose package (tools/system-packages.sh)")
    env = {**os.environ, "COOKIEBAKER_API_KEY": "test-key"}
    result = subprocess.run([compose, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True,
                            text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"ollama", "models", "postgres", "cookiebaker", "n8n", "n8n-import"} <= set(services)
    assert services["n8n"]["profiles"] == services["n8n-import"]["profiles"] == ["n8n"]
    # n8n starts only after the workflow and its credential are imported and published (n8n/import.sh).
    assert services["n8n"]["depends_on"]["n8n-import"]["condition"] == "service_completed_successfully"
    importer = services["n8n-import"]
    assert importer["entrypoint"] == ["/bin/sh", "/workflows/import.sh"]
    assert importer["environment"]["COOKIEBAKER_URL"] == "http://cookiebaker:8000"
    assert importer["environment"]["COOKIEBAKER_API_KEY"] == "test-key"
    assert importer["image"] == services["n8n"]["image"] == "n8nio/n8n:2.41.1"  # the version the live test runs
    command = services["cookiebaker"]["command"]
    assert "ollama:cookiebaker-sfw" in command and "ollama:cookiebaker-nsfw" in command
    assert "postgresql+psycopg://" in services["cookiebaker"]["environment"]["COOKIEBAKER_DATABASE_URL"]
    # Profile "gpu": vLLM with both responders as LoRA modules on one base, cookiebaker in front of it.
    engine, front = services["vllm"], services["cookiebaker-gpu"]
    assert engine["profiles"] == front["profiles"] == ["gpu"]
    assert engine["image"] == "vllm/vllm-openai:v0.11.0"  # pinned
    flags = engine["command"]
    assert flags[0] == "IlyaGusev/gemma-2-2b-it-abliterated" and "--enable-lora" in flags
    modules = flags[flags.index("--lora-modules") + 1:flags.index("--lora-modules") + 3]
    assert modules == ["cookiebaker-sfw=/models/SFW_lora", "cookiebaker-nsfw=/models/NSFW_lora"]
    assert int(flags[flags.index("--max-lora-rank") + 1]) >= 8  # train.lora_r
    assert engine["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    command = front["command"]
    for label in ("sfw", "nsfw"):
        assert command[command.index(f"--{label}-model") + 1] == f"openai:http://vllm:8000/v1#cookiebaker-{label}"
        assert command[command.index(f"--{label}-modelfile") + 1] == f"/models/{label.upper()}_lora/Modelfile"
    assert front["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert str(front["ports"][0]).startswith("127.0.0.1:8001:8000")  # loopback only
    # Profile "bot": the Telegram bot in front of the service, its options from params.yaml's bot section.
    bot = services["bot"]
    assert bot["profiles"] == ["bot"] and bot["depends_on"]["cookiebaker"]["condition"] == "service_healthy"
    assert bot["command"][:3] == ["bot", "--params", "/app/params.yaml"]
    assert bot["command"][bot["command"].index("--service-url") + 1] == "http://cookiebaker:8000"
    assert "TELEGRAM_BOT_TOKEN" in bot["environment"]
    from cookiebaker.bot import BotConfig
    from cookiebaker.config import build_config, read_params
    from cookiebaker.pairs import PairsConfig
    from cookiebaker.serve import ServeConfig

    params = read_params(REPO / "params.yaml")
    params["pairs"]["privacy"]["opt_out_sender_ids"].append(12345)  # the anchor: the bot reads the same list
    assert build_config(BotConfig, "bot", params).opt_out_sender_ids == \
        build_config(PairsConfig, "pairs", params).privacy.opt_out_sender_ids == ["user12345"]

    options = {"sfw_model": command[2], "nsfw_model": command[4]}  # the flags are options serve has
    assert build_config(ServeConfig, "serve", {}, options).sfw_model.endswith("#cookiebaker-sfw")
    without_key = subprocess.run([compose, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True,
                                 text=True, env={k: v for k, v in os.environ.items() if k != "COOKIEBAKER_API_KEY"},
                                 cwd=REPO)
    assert without_key.returncode != 0 and "COOKIEBAKER_API_KEY" in without_key.stderr


def test_n8n_workflow_structure() -> None:
    workflow = json.loads((REPO / "n8n" / "cookiebaker.json").read_text())
    nodes = {node["name"]: node for node in workflow["nodes"]}
    webhook = nodes["Webhook"]
    assert webhook["type"] == "n8n-nodes-base.webhook" and webhook["parameters"]["httpMethod"] == "POST"
    assert webhook["parameters"]["path"] == "response" and webhook["parameters"]["responseMode"] == "responseNode"
    condition = nodes["IF sfw"]["parameters"]["conditions"]["conditions"][0]
    assert "body.sfw" in condition["leftValue"] and condition["operator"]["operation"] == "notEquals"
    for label, model in (("SFW", "cookiebaker-sfw"), ("NSFW", "cookiebaker-nsfw")):
        assert nodes[f"{label} chat model"]["type"] == "@n8n/n8n-nodes-langchain.lmChatOllama"
        assert nodes[f"{label} chat model"]["parameters"]["model"] == model
        assert nodes[f"{label} chat model"]["credentials"]["ollamaApi"]["id"] == "cookiebakerOllama"
        assert nodes[f"{label} responder"]["type"] == "@n8n/n8n-nodes-langchain.agent"
        memory = nodes[f"{label} chat memory"]["parameters"]
        assert "client_name" in memory["sessionKey"] and "chat_id" in memory["sessionKey"]
        body = nodes[f"Respond {label}"]["parameters"]["responseBody"]
        assert "response:" in body and "command: ''" in body and model in body
    connections = workflow["connections"]
    for source, outputs in connections.items():
        assert source in nodes
        for branch in next(iter(outputs.values())):
            assert all(target["node"] in nodes for target in branch)
    assert [b[0]["node"] for b in connections["IF sfw"]["main"]] == ["SFW responder", "NSFW responder"]
    assert len({node["id"] for node in workflow["nodes"]}) == len(workflow["nodes"])
    assert workflow["id"] == "cookiebakerResponder"  # n8n's import:workflow needs an id
    credential = json.loads((REPO / "n8n" / "credentials.json").read_text())[0]
    assert credential["id"] == "cookiebakerOllama" and credential["type"] == "ollamaApi"
    assert credential["data"] == {"baseUrl": "@COOKIEBAKER_URL@", "apiKey": "@COOKIEBAKER_API_KEY@"}


def test_import_script_refuses_values_that_would_break_the_credential(tmp_path) -> None:  # noqa: ANN001
    env = {**os.environ, "N8N": "false", "COOKIEBAKER_URL": 'http://x"y'}
    result = subprocess.run(["sh", str(REPO / "n8n" / "import.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "must not contain" in result.stderr
