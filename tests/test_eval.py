"""The eval stage: held-out identities from train, loss and replies through the serving backends."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import run_cli

from cookiebaker import eval as evaluation
from cookiebaker.chat import sample_digest, sample_keys, samples_to_messages
from cookiebaker.errors import DatasetError
from cookiebaker.quality import MEASURES
from cookiebaker.train import split_indices

MODEL_MEASURES = {m.name for m in MEASURES}
REAL_MEASURES = {m.name for m in MEASURES if m.of_real}


@pytest.fixture(scope="module")
def gguf_dir(tiny_gguf: Path) -> Path:
    return tiny_gguf


def test_split_keeps_identical_texts_on_one_side() -> None:
    groups = ["a", "b", "a", "c", "a", "d", "b", "e", "f", "g"]
    for seed in range(20):
        train_ids, eval_ids = split_indices(len(groups), 0.3, 100, seed, groups=groups)
        assert sorted(train_ids + eval_ids) == list(range(len(groups))) and train_ids
        assert not {groups[i] for i in train_ids} & {groups[i] for i in eval_ids}
        assert eval_ids  # something is held out


def test_heldout_identities_round_trip(tiny_merged: Path, demo_pairs: Path) -> None:
    record = json.loads((tiny_merged.parent / "adapter" / "heldout.json").read_text())
    frame = pl.read_parquet(demo_pairs)
    conversations = samples_to_messages(frame)
    digests, keys = [sample_digest(m) for m in conversations], sample_keys(frame)
    held_rows = [sample["row"] for sample in record["heldout"]]
    assert held_rows and record["trained"] + len(held_rows) == frame.height == record["rows"]
    assert [keys[row] for row in held_rows] == [sample["key"] for sample in record["heldout"]]
    assert [digests[row] for row in held_rows] == [sample["digest"] for sample in record["heldout"]]
    trained = {digests[row] for row in range(frame.height) if row not in set(held_rows)}
    assert not trained & {digests[row] for row in held_rows}  # no text is both trained on and evaluated
    held = evaluation.load_heldout(evaluation.EvalConfig(model=str(tiny_merged), data=str(demo_pairs)))
    assert held.leaked == 0 and held.conversations == [conversations[row] for row in held_rows]


def test_eval_merged_folder_against_its_base(tiny_merged: Path, tiny_gemma: Path, demo_pairs: Path,
                                             tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    report = evaluation.run(evaluation.EvalConfig(model=str(tiny_merged), data=str(demo_pairs), output=str(output),
                                                  base_model=str(tiny_gemma), max_samples=4, max_new_tokens=8))
    assert report["generated"] == 4 and report["leaked"] == 0
    assert set(report) == set(evaluation.EvalReport.__annotations__)
    assert MODEL_MEASURES <= set(report["tuned"]) and MODEL_MEASURES <= set(report["base"])
    assert REAL_MEASURES - {"loss"} <= set(report["real"]) and not {"style_auc", "stop_rate"} & set(report["real"])
    assert report["hit_chance"] == 0.125
    for name in ("tuned", "base"):
        assert 0 <= report[name]["context_hit"] <= 1 and 0 <= report[name]["judge_hit"] <= 1
    assert report["real"]["judge_hit"] == report["base"]["context_hit"]  # the same scores: base, real replies
    assert report["tuned"]["loss"] < report["base"]["loss"]  # trained on the chat's style
    assert report["sampling"]["seed"] == 0 and report["sampling"]["max_tokens"] == 8
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    markdown = output.with_suffix(".md").read_text()
    assert "holds chat text" in markdown and markdown.count("\n| ") >= 4 + 8
    assert (tmp_path / "eval.json.config.yaml").is_file()
    again = evaluation.run(evaluation.EvalConfig(model=str(tiny_merged), data=str(demo_pairs),
                                                 output=str(tmp_path / "again.json"), base_model="none",
                                                 max_samples=4, max_new_tokens=8))
    assert again["tuned"]["judge_hit"] is None and again["real"]["judge_hit"] is None  # no base, no judge
    del again["tuned"]["judge_hit"], report["tuned"]["judge_hit"]
    assert again["tuned"] == report["tuned"] and "base" not in again  # a fixed seed: the same replies


def test_gguf_loss_equals_transformers_loss(tiny_merged: Path, gguf_dir: Path, demo_pairs: Path,
                                            tmp_path: Path) -> None:
    """Oracle: the f16 GGUF scored in llama.cpp with its own template gives the merged model's loss."""
    common = {"data": str(demo_pairs), "base_model": "none", "max_samples": 2, "max_new_tokens": 4}
    merged = evaluation.run(evaluation.EvalConfig(model=str(tiny_merged), output=str(tmp_path / "m.json"), **common))
    served = evaluation.run(evaluation.EvalConfig(model=str(gguf_dir), output=str(tmp_path / "g.json"), **common))
    assert served["tuned"]["loss_tokens"] == merged["tuned"]["loss_tokens"] > 0
    assert served["tuned"]["loss"] == pytest.approx(merged["tuned"]["loss"], rel=2e-3)


def test_eval_gguf_through_the_cli_keeps_chat_text_out_of_the_json(gguf_dir: Path, demo_pairs: Path,
                                                                    tmp_path: Path) -> None:
    output = tmp_path / "reports" / "eval.json"
    result = run_cli("eval", "--model", str(gguf_dir / "cb-tiny.f16.gguf"), "--data", str(demo_pairs), "--output",
                     str(output), "--base-model", "none", "--max-samples", "3", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert "tuned" in result.stdout and "real" in result.stdout
    report = json.loads(output.read_text())
    assert report["generated"] == 3 and report["tuned"]["loss"] > 0
    held = evaluation.load_heldout(evaluation.EvalConfig(model=str(gguf_dir), data=str(demo_pairs)))
    text = output.read_text()
    assert not any(sample[-1]["content"] in text or sample[-2]["content"] in text for sample in held.conversations)
    assert held.conversations[0][-2]["content"].replace("|", "\\|") in output.with_suffix(".md").read_text()
    for line in result.stderr.splitlines():  # logs never hold chat text
        assert not any(sample[-2]["content"] in line for sample in held.conversations)


def test_data_that_no_longer_matches_is_one_line(tiny_merged: Path, demo_pairs: Path, tmp_path: Path) -> None:
    record = json.loads((tiny_merged.parent / "adapter" / "heldout.json").read_text())
    frame = pl.read_parquet(demo_pairs)
    changed = tmp_path / "qa.parquet"
    first = record["heldout"][0]["row"]
    frame.with_columns(pl.when(pl.int_range(pl.len()) == first).then(pl.lit("edited")).otherwise(pl.col("response"))
                       .alias("response")).write_parquet(changed)
    with pytest.raises(DatasetError, match="1 of .* held-out samples are missing or changed"):
        evaluation.load_heldout(evaluation.EvalConfig(model=str(tiny_merged), data=str(changed)))
    result = run_cli("eval", "--model", str(tiny_merged), "--data", str(changed), "--output", str(tmp_path / "e.json"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cookiebaker eval: error:")
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    result = run_cli("eval", "--model", str(orphan / "x.gguf"), "--data", str(demo_pairs))
    assert result.returncode == 1 and "--split" in result.stderr
