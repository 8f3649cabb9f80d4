"""The reference rewards with every quirk of REFERENCE.md, the corrected variants, and user rewards."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aharl.errors import ConfigError, RewardError
from aharl.launch.main import main
from aharl.rewards import corrected, reference
from aharl.rewards.registry import REWARD_SETS, resolve_reward_functions
from aharl.rewards.scoring import score_completions

GOOD = "<reasoning>\nHalf of 36 is 18.\n</reasoning>\n<answer>\n18\n</answer>\n"


def one(fn, text, gold="18"):
    return fn([text], [gold])[0]


# --- extract -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, "18"),
        ("no tags at all 42 ", "no tags at all 42"),  # no tag: the whole text, stripped
        ("<answer>1</answer> then <answer> 2 </answer>", "2"),  # after the LAST <answer>
        ("<answer>7", "7"),  # no closing tag: to the end
        ("<answer>3</answer>4</answer>", "3"),  # cut at the FIRST </answer> after it
    ],
)
def test_extract_answer(text, expected):
    assert reference.extract_answer(text) == expected


# --- xmlcount ----------------------------------------------------------------


def test_xmlcount_perfect_layout_with_trailing_newline():
    # All four tags once. Text after the last "\n</answer>\n" is "" (0 chars),
    # text after the last "\n</answer>" is "\n" (1 char): penalties 0 and 0.
    assert one(reference.xmlcount, GOOD) == pytest.approx(0.5)


def test_xmlcount_without_final_newline_gets_a_bonus():
    # "\n</answer>\n" never occurs, so its "after" is the whole text; the
    # "\n</answer>" penalty is (0 - 1) * 0.001 = -0.001, i.e. +0.001.
    text = GOOD[:-1]
    expected = 0.5 - 0.001 * len(text) + 0.001
    assert one(reference.xmlcount, text) == pytest.approx(expected)


def test_xmlcount_penalises_text_after_the_answer_and_can_go_negative():
    tail = "x" * 1000
    text = GOOD + tail
    expected = 0.5 - 0.001 * len(tail) - 0.001 * (len(tail) + 1 - 1)
    assert one(reference.xmlcount, text) == pytest.approx(expected)
    assert expected < 0


def test_xmlcount_counts_only_tags_that_occur_exactly_once():
    twice = "<reasoning>\n<reasoning>\nx\n</reasoning>\n<answer>\n1\n</answer>\n"
    assert one(reference.xmlcount, twice) == pytest.approx(0.375)
    assert one(reference.xmlcount, "plain text") == 0.0


# --- format rewards ----------------------------------------------------------


def test_soft_format_single_line_body_matches():
    assert one(reference.soft_format, "<reasoning>a</reasoning> <answer>1</answer> tail") == 0.5


def test_soft_format_quirk_multiline_reasoning_never_matches():
    # No re.DOTALL: `.` does not cross the newline inside the reasoning.
    assert one(reference.soft_format, "<reasoning>line one\nline two</reasoning><answer>1</answer>") == 0.0
    # The reference's own layout has newlines inside the tags, so even GOOD fails soft_format.
    assert one(reference.soft_format, GOOD) == 0.0


def test_soft_format_quirk_match_anchors_at_the_start():
    assert one(reference.soft_format, "Sure! <reasoning>a</reasoning><answer>1</answer>") == 0.0


def test_strict_format_exact_layout():
    assert one(reference.strict_format, GOOD) == 0.5
    assert one(reference.strict_format, GOOD[:-1]) == 0.0  # must end with a newline
    assert one(reference.strict_format, GOOD + "more") == 0.0


def test_strict_format_quirk_multiline_reasoning_never_matches():
    text = "<reasoning>\nstep one\nstep two\n</reasoning>\n<answer>\n18\n</answer>\n"
    assert one(reference.strict_format, text) == 0.0
    assert one(corrected.strict_format_multiline, text) == 0.5
    assert one(corrected.soft_format_multiline, "<reasoning>a\nb</reasoning><answer>1</answer>") == 0.5


# --- int and correctness -----------------------------------------------------


@pytest.mark.parametrize(
    "answer, score", [("18", 0.5), ("-3", 0.0), ("1,080", 0.0), ("18.0", 0.0), ("", 0.0), ("12a", 0.0)]
)
def test_int_reward_is_str_isdigit(answer, score):
    assert one(reference.int_answer, f"<answer>\n{answer}\n</answer>") == score


@pytest.mark.parametrize(
    "answer, gold, reference_score, numeric_score",
    [
        ("18", "18", 2.0, 2.0),
        ("18.0", "18", 0.0, 2.0),  # quirk: exact string compare
        ("$18", "18", 0.0, 2.0),
        ("1080", "1,080", 0.0, 2.0),
        ("1,080", "1,080", 2.0, 2.0),
        ("-10", "-10", 2.0, 2.0),
        ("17", "18", 0.0, 0.0),
        ("18 apples", "18", 0.0, 0.0),  # words are not a number
    ],
)
def test_correctness_reference_vs_numeric(answer, gold, reference_score, numeric_score):
    text = f"<reasoning>\nx\n</reasoning>\n<answer>\n{answer}\n</answer>\n"
    assert one(reference.correctness, text, gold) == reference_score
    assert one(corrected.correctness_numeric, text, gold) == numeric_score


def gsm8k_style_numbers():
    """Gold answers as GSM8K writes them: integers, negatives, thousands commas, a few decimals."""
    ints = st.integers(min_value=-10_000, max_value=10_000_000)
    return st.one_of(
        ints.map(str),
        ints.filter(lambda v: abs(v) >= 1000).map(lambda v: f"{v:,}"),
        st.decimals(min_value=0, max_value=1000, places=2).map(str),
    )


@given(gold=gsm8k_style_numbers(), layout=st.sampled_from(["plain", "dollar", "decimal", "grouped"]))
def test_property_numeric_correctness_accepts_equal_numbers_reference_only_the_string(gold, layout):
    value = corrected.parse_number(gold)
    assert value is not None
    written = {
        "plain": format(value, "f"),
        "dollar": "$" + format(value, "f") if value >= 0 else "-$" + format(-value, "f"),
        "decimal": format(value, "f") + ("" if "." in format(value, "f") else ".0"),
        "grouped": f"{value:,}",
    }[layout]
    text = f"<reasoning>\nwork\n</reasoning>\n<answer>\n{written}\n</answer>\n"
    assert one(corrected.correctness_numeric, text, gold) == 2.0
    assert one(reference.correctness, text, gold) == (2.0 if written == gold else 0.0)
    assert one(corrected.correctness_numeric, f"<answer>{written}1</answer>", gold) == 0.0


@given(gold=st.integers(min_value=0, max_value=10**9).map(str))
def test_property_well_formatted_correct_answer_earns_every_reference_reward(gold):
    text = f"<reasoning>\nreasoning on one line\n</reasoning>\n<answer>\n{gold}\n</answer>\n"
    scores = score_completions([text], [gold], resolve_reward_functions(["reference"]))
    assert scores.per_function["correctness"] == [2.0]
    assert scores.per_function["int"] == [0.5]
    assert scores.per_function["strict_format"] == [0.5]
    assert scores.per_function["soft_format"] == [0.0]  # the newline quirk, always
    assert scores.total[0] == pytest.approx(0.5 + 0.0 + 0.5 + 0.5 + 2.0)


def test_real_gsm8k_golds_that_are_not_plain_digits_fail_reference_int():
    # 82 train golds are not plain digits, e.g. "1,080" and "-10": the int reward never pays them.
    for gold in ["1,080", "-10", "0.5"]:
        assert one(reference.int_answer, f"<answer>\n{gold}\n</answer>", gold) == 0.0
        assert one(corrected.number, f"<answer>\n{gold}\n</answer>", gold) == 0.5


# --- registry, weights, user functions ----------------------------------------


def test_sets_expand_in_order_and_weights_multiply():
    names = [n for n, _ in resolve_reward_functions(["reference"])]
    assert names == REWARD_SETS["reference"]
    fns = resolve_reward_functions(["correctness", "int"])
    scores = score_completions([GOOD], ["18"], fns, {"correctness": 0.5})
    assert scores.total == [pytest.approx(0.5 * 2.0 + 0.5)]


def test_user_reward_from_file_and_module(tmp_path, monkeypatch):
    path = tmp_path / "my_rewards.py"
    path.write_text("def short(completions, answers):\n    return [1.0 if len(c) < 10 else 0.0 for c in completions]\n")
    ((name, fn),) = resolve_reward_functions([f"{path}:short"])
    assert fn(["tiny", "far too long text"], ["", ""]) == [1.0, 0.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    ((_, fn2),) = resolve_reward_functions(["my_rewards:short"])
    assert fn2(["tiny"], [""]) == [1.0]


@pytest.mark.parametrize(
    "source, spec_attr, words",
    [
        ("def f(c, a):\n    return []\n", "g", "has no function 'g'"),
        ("def f(c, a) return\n", "f", "failed to import: SyntaxError"),
        ("import not_a_module_xyz\n", "f", "failed to import: ModuleNotFoundError"),
    ],
)
def test_broken_user_reward_code_is_one_config_line(tmp_path, source, spec_attr, words):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(ConfigError, match=words) as info:
        resolve_reward_functions([f"{path}:{spec_attr}"])
    assert "\n" not in str(info.value)


def test_reward_that_raises_or_returns_wrong_length_names_the_function():
    def boom(completions, answers):
        raise ZeroDivisionError("bad math")

    def short(completions, answers):
        return [1.0]

    with pytest.raises(RewardError, match="`boom` raised ZeroDivisionError: bad math"):
        score_completions(["a", "b"], ["1", "2"], [("boom", boom)])
    with pytest.raises(RewardError, match="`short` returned 1 values for 2 completions"):
        score_completions(["a", "b"], ["1", "2"], [("short", short)])
    tolerant = score_completions(
        ["a", "b"], ["1", "2"], [("boom", boom), ("int", reference.int_answer)], tolerate_errors=True
    )
    assert tolerant.per_function["boom"] == [0.0, 0.0] and "boom" in tolerant.errors


# --- CLI ---------------------------------------------------------------------


def test_cli_rewards_score_writes_one_line_per_row_and_reports_bad_rows(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"completion": GOOD, "answer": "18"})
        + "\n"
        + "{not json\n"
        + json.dumps({"completion": "<answer>1,080</answer>", "answer": "1,080"})
        + "\n"
        + json.dumps({"answer": "3"})
        + "\n"
    )
    out = tmp_path / "scores.jsonl"
    assert main(["rewards", "score", "--input", str(rows), "--output", str(out)]) == 1
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored) == 2
    assert scored[0]["correctness"] == 2.0 and scored[0]["total"] == pytest.approx(0.5 + 0.5 + 0.5 + 2.0)
    assert scored[1]["int"] == 0.0 and scored[1]["correctness"] == 2.0
    err = capsys.readouterr().err
    assert f"{rows}:2: not valid JSON" in err and f'{rows}:4: missing string field "completion"' in err

    assert main(["rewards", "score", "--input", str(rows), "--rewards", "corrected", "--output", str(out)]) == 1
    assert [json.loads(line)["number"] for line in out.read_text().splitlines()] == [0.5, 0.5]


def test_cli_rewards_score_missing_input_is_one_line(tmp_path, capsys):
    assert main(["rewards", "score", "--input", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- arithmetic (quickstart) set -----------------------------------------------


def test_arithmetic_rewards():
    from aharl.rewards import arithmetic

    assert arithmetic.stated_answer("3 + 4 = 7 apples") == "7"
    assert arithmetic.stated_answer("<answer>12</answer> and 99") == "12"  # tags win over the last number
    # An operand is not an answer: a completion cut off mid-sum states what it said before.
    assert arithmetic.stated_answer("The answer is 3.\n\nJack has 2 + 1 = ") == "3"
    assert arithmetic.stated_answer("6 x 2 = 12. Emma has 12 cards.") == "12"
    assert arithmetic.stated_answer("1,080 - 10 = 1,070.") == "1,070"
    assert arithmetic.stated_answer("She has 5 xylophones.") == "5"  # "x" in a word is no operator
    assert arithmetic.stated_answer("So 4 * 2 =") is None
    assert one(arithmetic.answer_number, "Jack has 2 + 1 =", "1") == 0.0
    assert one(arithmetic.answer_number, "So he has 3 + 4 = 7.", "7") == 1.0
    assert one(arithmetic.answer_number, "So he has 7 apples, not 8.", "7") == 0.0
    assert one(arithmetic.answer_tags, "<answer>7</answer>") == 0.5
    assert one(arithmetic.brevity, "7") == 0.25
    assert one(arithmetic.brevity, "Ben has 3 + 4 = 7 apples.") == 0.25  # no gain from cutting the working
    assert one(arithmetic.brevity, "x" * 148 + " 7") == pytest.approx(0.125)  # 150 chars: half way to 200
    assert one(arithmetic.brevity, "x" * 300 + " 7") == 0.0


def test_arithmetic_brevity_cannot_be_earned_by_saying_nothing():
    from aharl.rewards import arithmetic

    assert one(arithmetic.brevity, "") == 0.0
    assert one(arithmetic.brevity, "ok") == 0.0
