"""Evaluation: the judgements, the summary, the before/after report, and `aharl eval` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aharl.errors import DataError
from aharl.evaluation.metrics import judge, summarise
from aharl.evaluation.report import html_report, markdown_report
from aharl.evaluation.run import GREEDY, EvalMode, EvalResult, evaluate, holdout_split, local_scorer
from aharl.rewards.registry import resolve_reward_functions
from aharl.tracking.evals import read_eval_file
from aharl.types import Completion, Prompt, RolloutGroup
from tests.helpers.paths import REPO, SHARED_GSM8K

STRICT = "<reasoning>\nadd them\n</reasoning>\n<answer>\n1080\n</answer>\n"


@pytest.mark.parametrize(
    "text, gold, exact, numeric, strict, soft",
    [
        (STRICT, "1080", True, True, True, True),
        (STRICT.replace("1080", "1,080"), "1080", False, True, True, True),  # the reference's string compare
        (
            "<reasoning>\nstep one\nstep two\n</reasoning>\n<answer>\n7\n</answer>\n",
            "7",
            True,
            True,
            True,
            True,
        ),  # multi-line reasoning counts
        ("So the answer is 42.", "42", False, True, False, False),  # the last number, no tags
        ("<reasoning>x</reasoning> <answer>5</answer>", "6", False, False, False, True),
        ("I do not know.", "3", False, False, False, False),
        ("The answer is 3.\nJack has 2 + 1 = ", "1", False, False, False, False),  # cut off mid-sum: 1 is an operand
    ],
)
def test_judge_separates_the_reference_exact_match_from_numeric_equality(text, gold, exact, numeric, strict, soft):
    j = judge(text, gold, tokens=10, truncated=False)
    assert (j.exact, j.numeric, j.format_strict, j.format_soft) == (exact, numeric, strict, soft)


def test_summary_averages_completions_and_counts_pass_at_n():
    right, wrong = judge("4", "4", 3, False), judge("5", "4", 5, True)
    summary = summarise([[right, wrong], [wrong, wrong]])
    assert summary["accuracy_numeric"] == 0.25
    assert summary["pass@2_numeric"] == 0.5
    assert summary["mean_length"] == 4.5
    assert summary["truncated"] == 0.75
    assert "pass@1_numeric" not in summarise([[right], [wrong]])


def prompt(i: int, answer: str) -> Prompt:
    return Prompt(i, f"question {i}", answer, f"q{i}", [1, 2, 3])


def test_evaluate_scores_what_the_engine_answered_with_the_configured_rewards():
    answers = {0: "The answer is 4", 1: "<answer>9</answer>"}
    seen = []

    def generate(prompts, settings):
        seen.append(settings)
        return [
            RolloutGroup(p, [Completion([5] * 3, answers[p.index], "stop", [0.0] * 3)] * settings.n) for p in prompts
        ]

    score = local_scorer(resolve_reward_functions(["arithmetic"]), {})
    result = evaluate(generate, score, [prompt(0, "4"), prompt(1, "8")], GREEDY, max_tokens=16)
    assert seen[0].temperature == 0 and seen[0].n == 1 and seen[0].max_tokens == 16
    assert result.summary["accuracy_numeric"] == 0.5
    assert [r["answers"][0]["numeric"] for r in result.records] == [True, False]
    assert result.records[0]["answers"][0]["rewards"]["answer_number"] == 1.0
    sampled = evaluate(generate, score, [prompt(0, "4")], EvalMode("sampled", n=3, temperature=0.9), max_tokens=16)
    assert seen[1].n == 3 and sampled.summary["completions"] == 3


def test_holdout_takes_the_last_prompts_and_refuses_to_take_them_all():
    prompts = [prompt(i, "1") for i in range(10)]
    train, held = holdout_split(prompts, 3)
    assert [p.index for p in held] == [7, 8, 9] and len(train) == 7
    assert holdout_split(prompts, 0) == (prompts, [])
    with pytest.raises(DataError, match="eval.num_questions"):
        holdout_split(prompts, 10)


def record(index: int, question: str, text: str, numeric: bool) -> dict:
    answer = {
        "text": text,
        "numeric": numeric,
        "exact": numeric,
        "tokens": 7,
        "reward": 1.0 if numeric else 0.0,
        "rewards": {"answer_number": float(numeric)},
    }
    return {"index": index, "question": question, "gold": "4", "answers": [answer]}


def test_report_pairs_the_same_questions_and_escapes_model_output():
    summary = {"questions": 2.0, "accuracy_numeric": 0.0, "accuracy_exact": 0.0, "mean_length": 7.0}
    before = EvalResult(
        "greedy", summary, [record(1, "2 + 2?", "<script>x</script> 5", False), record(2, "1 + 3?", "3", False)]
    )
    after = EvalResult(
        "greedy", {**summary, "accuracy_numeric": 1.0}, [record(2, "1 + 3?", "4", True), record(1, "2 + 2?", "4", True)]
    )
    md = markdown_report("t", before, after, limit=10)
    assert "| accuracy_numeric | 0.000 | 1.000 |" in md
    first = md.index("## 1. 2 + 2?")
    assert md.index("**Before** (wrong", first) < md.index("**After** (right", first) < md.index("## 2. 1 + 3?")
    page = html_report("t", before, after, limit=1)
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    assert "1 + 3?" not in page  # limit=1
    assert "<link" not in page and "src=" not in page  # self-contained


def aharl_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aharl.launch.main", "eval", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


@pytest.mark.slow
def test_aharl_eval_on_the_gsm8k_test_file_with_hf_generate(tmp_path, smollm2_tokenizer):
    from tests.helpers.toy import build_tiny_model

    model = build_tiny_model(tmp_path / "model", smollm2_tokenizer)
    out = tmp_path / "eval.json"
    done = aharl_eval(
        "--model",
        str(model),
        "--data",
        str(SHARED_GSM8K / "test.jsonl"),
        "--limit",
        "3",
        "--backend",
        "hf",
        "--samples",
        "2",
        "--max-tokens",
        "5",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["questions"] == 3 and summary["backend"] == "hf"
    assert summary["greedy"]["completions"] == 3 and summary["sampled"]["completions"] == 6
    assert "pass@2_numeric" in summary["sampled"]
    saved = read_eval_file(out)
    assert saved["greedy"].records[0]["question"][:20] == "Janet’s ducks lay 16"
    assert saved["sampled"].summary["completions"] == 6
    report = subprocess.run(
        [sys.executable, "-m", "aharl.launch.main", "report", str(out), str(out), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "rep" / "report.html").read_text().count("Janet") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nowhere/model", "--data", "x.jsonl"], "model path /nowhere/model does not exist"),
        (["--model", "smollm2-135m-instruct", "--data", "/nowhere/q.jsonl"], "/nowhere/q.jsonl"),
        (["--model", "smollm2-135m-instruct", "--data", "x.jsonl", "--limit", "0"], "--limit 0 must be at least 1"),
        (["--model", "smollm2-135m-instruct", "--data", "x.jsonl", "--modes", "beam"], "unknown mode 'beam'"),
    ],
)
def test_aharl_eval_reports_bad_input_in_one_line(args, message):
    done = aharl_eval(*args)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("aharl")]
    assert len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
