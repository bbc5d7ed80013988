from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import msg, run_cli, write_chat

T0 = 1_700_000_000


@pytest.mark.parametrize("command", [[], ["ingest"], ["pairs"], ["demo"]])
def test_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: cookiebaker" in result.stdout


def test_ingest_and_pairs_end_to_end(tmp_path: Path, telegram_dir: Path) -> None:
    write_chat(tmp_path / "exports" / "chat.json", [
        msg(1, "where is the party?", sender="Ann", sender_id="user10", date=T0),
        msg(2, "at mine, call +44 20 7946 0958", sender="Ben", sender_id="user11", date=T0 + 30,
            reply_to_message_id=1),
    ])
    result = run_cli("ingest", str(tmp_path / "exports"), str(telegram_dir / "tg2md"), "-o", str(tmp_path / "m.parquet"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "21 rows from 2 chats in 2 files" in result.stdout
    assert (tmp_path / "m_ingest.json").is_file() and (tmp_path / "m.parquet.config.yaml").is_file()
    result = run_cli("pairs", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "qa.parquet"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    qa = pl.read_parquet(tmp_path / "qa.parquet")
    assert qa.select("query", "response").rows() == [("where is the party?", "at mine, call [PHONE]")]
    report = json.loads((tmp_path / "qa_report.json").read_text())
    assert report["pairs"] == 1 and report["scrubbed"]["phone"] == 1
    assert "party" not in result.stderr + result.stdout  # no chat text in logs


def test_params_file_and_flags(tmp_path: Path) -> None:
    write_chat(tmp_path / "chat.json", [msg(1, "q", sender="Ann", sender_id="user10", date=T0),
                                        msg(2, "a", sender="Ben", sender_id="user11", date=T0 + 30, reply_to_message_id=1),
                                        msg(3, "b", sender="Ben", sender_id="user11", date=T0 + 400)])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pairs": {"burst_window_minutes": 10}}))
    assert run_cli("ingest", "chat.json", "-o", "m.parquet", cwd=tmp_path).returncode == 0
    assert run_cli("pairs", "m.parquet", "-o", "qa.parquet", cwd=tmp_path).returncode == 0
    assert pl.read_parquet(tmp_path / "qa.parquet")["response"].to_list() == ["a\nb"]
    resolved = yaml.safe_load((tmp_path / "qa.parquet.config.yaml").read_text())
    assert resolved["burst_window_minutes"] == 10 and resolved["privacy"]["scrub_emails"] is True
    assert run_cli("pairs", "m.parquet", "-o", "qa.parquet", "--burst-window-minutes", "1", cwd=tmp_path).returncode == 0
    assert pl.read_parquet(tmp_path / "qa.parquet")["response"].to_list() == ["a"]
    assert run_cli("pairs", "m.parquet", "-o", "qa.parquet", "--privacy.opt-out-sender-ids", "user11",
                   cwd=tmp_path).returncode == 0
    assert pl.read_parquet(tmp_path / "qa.parquet").height == 0


@pytest.mark.parametrize(("args", "expected"), [
    (["ingest", "missing.json", "-o", "out.parquet"], "missing.json: no such file or folder"),
    (["ingest", "page.html", "-o", "out.parquet"], "Machine-readable JSON"),
    (["ingest", "cut.json", "-o", "out.parquet"], "truncated"),
    (["pairs", "missing.parquet", "-o", "out.parquet"], "run `cookiebaker ingest` first"),
    (["pairs", "chat.json", "-o", "out.parquet", "--max-turns", "3"], "'max_turns' must be even"),
    (["ingest", "chat.json", "-o", "out.parquet", "--params", "bad.yaml"], "unknown option 'colour'"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path: Path, args: list[str], expected: str) -> None:
    write_chat(tmp_path / "chat.json", [msg(1, "hello")])
    (tmp_path / "page.html").write_text("<!DOCTYPE html><html></html>")
    (tmp_path / "cut.json").write_text((tmp_path / "chat.json").read_text()[:-20])
    (tmp_path / "bad.yaml").write_text("ingest:\n  colour: red\n")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.parquet")]


def test_demo_quick_runs_the_whole_chain(tmp_path: Path, embedded_cache: Path) -> None:
    result = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--quick")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"ingest", "pairs", "train", "merge", "export", "eval", "serve", "charts"}
    assert "seconds by stage (both labels): ingest" in result.stdout
    for label in ("SFW", "NSFW"):
        entry = summary[label]
        assert set(entry) >= {"eval_loss_before", "eval_loss_after", "gguf", "reply", "pairs", "train_seconds"}
        assert entry["pairs"] > 30 and Path(entry["gguf"]).is_file() and entry["gguf"].endswith(".q8_0.gguf")
        assert isinstance(entry["reply"], str) and entry["reply"].strip()
        assert entry["eval_loss_after"] < entry["eval_loss_before"]
        measured = {"loss", "echo_rate", "loop_rate", "empty_rate", "stop_rate", "distinct_2", "mean_reply_words",
                    "context_hit", "judge_hit", "style_auc", "top5_share", "unique_rate", "length_w1"}
        assert measured <= set(entry["eval"]["tuned"]) and measured <= set(entry["eval"]["base"])
        assert {"mean_reply_words", "distinct_2"} <= set(entry["eval"]["real"])
        assert entry["eval"]["tuned"]["generated"] == 8
        assert "holds chat text" in Path(entry["eval_report"]).read_text()
        assert f"side by side (holds chat text): {entry['eval_report']}" in result.stdout
        assert len(entry["side_by_side"]) == 3 and {"query", "real", "tuned", "base"} <= set(entry["side_by_side"][0])
    assert result.stdout.count("echoes the query") == 2
    assert "cookiebaker serve --sfw-model" in result.stdout and "ollama create" in result.stdout
    charts = {Path(p).name for p in summary["charts"]}
    assert {f"{label}_{kind}.png" for label in ("SFW", "NSFW")
            for kind in ("messages", "pairs", "sample_lengths", "training")} == charts
    for chart in summary["charts"]:
        assert Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(chart).stat().st_size > 5000
    result = run_cli("report", "--workdir", str(tmp_path / "demo"))
    assert result.returncode == 0 and result.stdout.count(".png") == 8
    # A second run reuses every finished stage.
    before = (tmp_path / "demo" / "models" / "SFW" / "metrics.json").stat().st_mtime
    again = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--quick")
    assert again.returncode == 0
    assert (tmp_path / "demo" / "models" / "SFW" / "metrics.json").stat().st_mtime == before


@pytest.mark.slow
def test_full_demo(tmp_path: Path, embedded_cache: Path) -> None:
    """The README's main job, end to end, as a user runs it (the integration test of the whole chain)."""
    result = run_cli("demo", "--workdir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["total_seconds"] < 15 * 60
    for label in ("SFW", "NSFW"):
        assert summary[label]["eval_loss_after"] < summary[label]["eval_loss_before"]
        assert summary[label]["reply"].strip()
        # The product's bar, measured on the served GGUF's replies to held-out queries.
        tuned, base, real = (summary[label]["eval"][name] for name in ("tuned", "base", "real"))
        assert tuned["generated"] == 64
        # At most one sampled reply of 64 loops (issue 19's target is none; on some CPU kinds the NSFW responder's
        # sampled replies hold one loop, which repeat_penalty, not yet in the Modelfile, would stop), and fewer
        # than the base's.
        assert tuned["loop_rate"] <= 1 / 64 and tuned["loop_rate"] < base["loop_rate"], (tuned, base)
        assert tuned["echo_rate"] <= 0.05 and tuned["empty_rate"] == 0, tuned
        assert tuned["stop_rate"] >= 0.95 and tuned["template_leak_rate"] == 0, tuned
        assert tuned["loss"] < base["loss"]
        assert abs(tuned["mean_reply_words"] - real["mean_reply_words"]) < \
            abs(base["mean_reply_words"] - real["mean_reply_words"])


#: Options params.yaml leaves to dvc.yaml's command lines (paths), the command line (serve's models, host and port)
#: or the environment; every other option of every stage is in params.yaml, so that a new one is not forgotten.
GIVEN_ELSEWHERE = {
    "ingest": {"inputs", "output", "report"}, "pairs": {"input", "output", "report"},
    "train": {"data", "output_dir", "report", "resume"}, "merge": {"adapter", "output", "base_model"},
    "export": {"format", "model", "output_dir", "name", "report"},
    "eval": {"model", "data", "output", "markdown", "split"},
    "serve": {"sfw_model", "nsfw_model", "sfw_modelfile", "nsfw_modelfile", "host", "port"}, "bot": set(),
}


def test_params_yaml_names_every_option() -> None:
    from conftest import REPO

    from cookiebaker.cli import COMMANDS
    from cookiebaker.config import read_params

    params = read_params(REPO / "params.yaml")
    for section, elsewhere in GIVEN_ELSEWHERE.items():
        fields = set(COMMANDS[section].config_class().model_fields)
        assert elsewhere <= fields, section
        missing = fields - elsewhere - set(params[section])
        assert not missing, f"params.yaml's {section} section lacks {sorted(missing)}"


def test_params_yaml_is_valid_for_every_stage() -> None:
    from conftest import REPO

    from cookiebaker.config import build_config, read_params
    from cookiebaker.export import ExportConfig
    from cookiebaker.ingest import IngestConfig
    from cookiebaker.merge import MergeConfig
    from cookiebaker.pairs import PairsConfig
    from cookiebaker.serve import ServeConfig
    from cookiebaker.train import DEFAULT_TARGET_MODULES, TrainConfig

    params = read_params(REPO / "params.yaml")
    for cls, section in ((IngestConfig, "ingest"), (PairsConfig, "pairs"), (TrainConfig, "train"),
                         (MergeConfig, "merge"), (ExportConfig, "export")):
        build_config(cls, section, params)
    build_config(ServeConfig, "serve", params, {"sfw_model": "x"})
    from cookiebaker.bot import BotConfig
    from cookiebaker.eval import EvalConfig

    assert build_config(BotConfig, "bot", params).reply_probability == 0

    assert build_config(EvalConfig, "eval", params).max_samples == 64
    recipe = build_config(TrainConfig, "train", params)
    assert (recipe.lora_r, recipe.batch_size, recipe.grad_accum, recipe.learning_rate, recipe.warmup_steps,
            recipe.max_steps) == (8, 1, 16, 1e-5, 15, 150)
    assert recipe.target_modules == DEFAULT_TARGET_MODULES
    assert recipe.base_model == "IlyaGusev/gemma-2-2b-it-abliterated"
    exported = build_config(ExportConfig, "export", params)
    assert (exported.temperature, exported.top_p) == (0.7, 0.7)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@pytest.mark.parametrize("command", ["ingest", "pairs", "train", "merge", "export", "push", "eval", "serve", "report",
                                     "demo"])
def test_every_config_field_is_a_documented_flag(command: str, capsys) -> None:
    """The command line is derived from the typed configs: every field (nested ones too) is a flag whose help is
    the field's docstring, with its default; and every command reads the same --params file."""
    from cookiebaker.cli import COMMANDS, _build_parser
    from cookiebaker.config import StageConfig

    parser, _ = _build_parser(command)
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--params FILE" in text

    def check(cls: type, prefix: str) -> None:
        for name, info in cls.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, StageConfig):
                check(annotation, f"{prefix}{name}.")
                continue
            assert f"{_flag(prefix + name)[:2]}{prefix}{name.replace('_', '-')}" in text, (command, name)
            assert info.description, f"{cls.__name__}.{name} has no docstring"
            assert " ".join(info.description.split())[:40] in text, (command, name)

    check(COMMANDS[command].config_class(), "")
    assert "(default:" in text or "(default factory:" in text


def test_one_message_names_every_bad_flag(tmp_path: Path) -> None:
    result = run_cli("pairs", "m.parquet", "--max-turns", "3", "--burst-window-minutes", "-1", "--mode", "nope",
                     "--session-gap-minutes", "soon", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cookiebaker pairs: error: invalid pairs config:")
    for option in ("'max_turns'", "'burst_window_minutes'", "'mode'", "'session_gap_minutes'"):
        assert option in lines[0], lines[0]


def test_a_nested_flag_keeps_the_params_files_other_options(tmp_path: Path) -> None:
    write_chat(tmp_path / "chat.json", [msg(1, "mail me at ann@example.com", sender="Ann", sender_id="user10", date=T0),
                                        msg(2, "ok", sender="Ben", sender_id="user11", date=T0 + 30, reply_to_message_id=1),
                                        msg(3, "q2", sender="Cy", sender_id="user12", date=T0 + 60),
                                        msg(4, "a2", sender="Ann", sender_id="user10", date=T0 + 90, reply_to_message_id=3)])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pairs": {"privacy": {"opt_out_sender_ids": ["user12"]}}}))
    assert run_cli("ingest", "chat.json", "-o", "m.parquet", cwd=tmp_path).returncode == 0
    result = run_cli("pairs", "m.parquet", "-o", "qa.parquet", "--no-privacy.scrub-emails", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load((tmp_path / "qa.parquet.config.yaml").read_text())["privacy"]
    assert resolved["opt_out_sender_ids"] == ["user12"] and resolved["scrub_emails"] is False
    assert pl.read_parquet(tmp_path / "qa.parquet")["query"].to_list() == ["mail me at ann@example.com"]


def test_report_and_serve_read_the_params_file(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"report": {"colour": "red"}, "serve": {"port": "x"}}))
    report = run_cli("report", "--workdir", str(tmp_path), cwd=tmp_path)
    assert report.returncode == 1 and "unknown option 'colour'" in report.stderr
    serve = run_cli("serve", "--sfw-model", "x.gguf", "--params", str(tmp_path / "params.yaml"), cwd=tmp_path)
    assert serve.returncode == 1 and "'port'" in serve.stderr and "Traceback" not in serve.stderr
