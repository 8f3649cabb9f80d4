"""Prompts from local files, GSM8K and the synthetic task; drop counts; deterministic order."""

from __future__ import annotations

import json

import pytest

from aharl.config import DataConfig, Demonstration, SyntheticConfig
from aharl.data.prompts import build_prompts, chat_messages, extract_gold
from aharl.data.sampler import PromptSampler
from aharl.data.sources import load_rows
from aharl.data.synthetic import make_dataset
from aharl.errors import DataError
from aharl.system_prompts import REFERENCE_SYSTEM_PROMPT
from tests.helpers.paths import SHARED_GSM8K


@pytest.mark.parametrize(
    "raw, extractor, gold",
    [
        ("She pays 3*6=18.\n#### 18", "gsm8k", "18"),
        ("x\n#### 1,080", "gsm8k", "1,080"),
        ("a #### 5 #### 6", "gsm8k", "5 #### 6"),  # after the FIRST ####
        ("no marker", "gsm8k", None),
        ("#### ", "gsm8k", None),
        (" 42 ", "plain", "42"),
        (7, "plain", "7"),
        (None, "plain", None),
    ],
)
def test_extract_gold(raw, extractor, gold):
    assert extract_gold(raw, extractor) == gold


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompts_use_the_chat_template_and_count_what_is_dropped(tmp_path, smollm2_tokenizer):
    rows = [
        {"question": "What is 2 + 3?", "answer": "2+3=5\n#### 5"},
        {"question": "long " * 400, "answer": "#### 1"},  # over the token limit
        {"question": "No gold?", "answer": "just prose"},  # no ####
        {"question": None, "answer": "#### 2"},  # malformed
        {"question": "What is 10 - 4?", "answer": "#### 6"},
    ]
    config = DataConfig(source=str(_write_jsonl(tmp_path / "train.jsonl", rows)), max_prompt_tokens=128)
    prompts, report = build_prompts(load_rows(config), smollm2_tokenizer, config)
    assert (report.rows, report.kept, report.too_long, report.no_answer, report.malformed) == (5, 2, 1, 1, 1)
    assert [p.answer for p in prompts] == ["5", "6"]
    expected = smollm2_tokenizer.apply_chat_template(
        chat_messages("What is 2 + 3?", REFERENCE_SYSTEM_PROMPT), tokenize=False, add_generation_prompt=True
    )
    assert prompts[0].text == expected
    assert prompts[0].text.startswith("<|im_start|>system\n" + REFERENCE_SYSTEM_PROMPT)
    assert prompts[0].text.endswith("<|im_start|>assistant\n")
    assert smollm2_tokenizer.decode(prompts[0].token_ids) == prompts[0].text
    assert (
        "2 over the prompt-token limit" not in report.summary() and "1 over the prompt-token limit" in report.summary()
    )


def test_demonstrations_come_between_the_system_prompt_and_the_question_as_answered_turns(tmp_path, smollm2_tokenizer):
    demo = Demonstration("What is 1 + 1?", "<answer>\n2\n</answer>")
    rows = [{"question": "What is 2 + 3?", "answer": "#### 5"}]
    config = DataConfig(source=str(_write_jsonl(tmp_path / "train.jsonl", rows)), demonstrations=[demo])
    (prompt,), _ = build_prompts(load_rows(config), smollm2_tokenizer, config)
    assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user"]
    assert prompt.messages[2]["content"] == demo.response and prompt.messages[3]["content"] == "What is 2 + 3?"
    text = prompt.text
    # The model sees the worked answer before the question it must answer, and answers after it.
    assert (
        text.index(REFERENCE_SYSTEM_PROMPT)
        < text.index("What is 1 + 1?")
        < text.index("<answer>\n2\n</answer>")
        < text.index("What is 2 + 3?")
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_other_datasets_via_columns_and_parquet(tmp_path, smollm2_tokenizer):
    import datasets

    path = tmp_path / "qa.parquet"
    datasets.Dataset.from_list([{"problem": "1+1?", "solution": " 2 "}]).to_parquet(str(path))
    config = DataConfig(source=str(path), question_column="problem", answer_column="solution", answer_extractor="plain")
    prompts, _ = build_prompts(load_rows(config), smollm2_tokenizer, config)
    assert prompts[0].answer == "2" and prompts[0].question == "1+1?"


def test_missing_file_column_and_empty_set_are_one_line_errors(tmp_path, smollm2_tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(DataConfig(source=str(tmp_path / "missing.jsonl")))
    path = _write_jsonl(tmp_path / "q.jsonl", [{"q": "x", "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"no column 'question' \(it has: q, answer\)"):
        load_rows(DataConfig(source=str(path)))
    path = _write_jsonl(tmp_path / "none.jsonl", [{"question": "x", "answer": "no gold"}])
    config = DataConfig(source=str(path))
    with pytest.raises(DataError, match="no usable prompts"):
        build_prompts(load_rows(config), smollm2_tokenizer, config)


@pytest.mark.skipif(not SHARED_GSM8K.is_dir(), reason="../shared/data/gsm8k is not beside the checkout")
def test_real_gsm8k_file(smollm2_tokenizer):
    config = DataConfig(source=str(SHARED_GSM8K / "train.jsonl"))
    rows = load_rows(config)
    assert len(rows) == 7473
    golds = [extract_gold(r["answer"], "gsm8k") for r in rows]
    assert sum(not g.isdigit() for g in golds) == 82  # REFERENCE.md: 82 are not plain digits
    assert PromptSampler(len(rows), 4, seed=0).steps_per_epoch == 1868  # the reference's step count


def test_synthetic_task_is_deterministic_with_integer_answers(smollm2_tokenizer):
    a = make_dataset(50, 3, 20, seed=1)
    assert a == make_dataset(50, 3, 20, seed=1)
    assert a != make_dataset(50, 3, 20, seed=2)
    assert all(r["answer"].isdigit() for r in a)
    config = DataConfig(
        source="synthetic", answer_extractor="plain", synthetic=SyntheticConfig(num_examples=20, difficulty=1)
    )
    prompts, report = build_prompts(load_rows(config), smollm2_tokenizer, config)
    assert report.kept == 20
    # difficulty 1: "X has a. Then ... b ... How many": the answer follows from the two numbers.
    first = prompts[0]
    numbers = [int(t.strip(".")) for t in first.question.split() if t.strip(".").isdigit()]
    assert int(first.answer) in (numbers[0] + numbers[-1], numbers[0] - numbers[-1], numbers[0] * 2, numbers[0] * 3)


def test_sampler_order_is_seeded_and_resumable():
    a = PromptSampler(10, 3, seed=7)
    first_epoch = [a.next_batch() for _ in range(3)]
    assert a.steps_per_epoch == 3  # 10 // 3: the last incomplete batch is dropped
    assert len(set(sum(first_epoch, []))) == 9  # no repeats within an epoch
    second_epoch = a.next_batch()
    assert a.epoch == 1 and second_epoch != first_epoch[0]

    straight = PromptSampler(10, 3, seed=7)
    seen = [straight.next_batch() for _ in range(7)]
    resumed = PromptSampler(10, 3, seed=7)
    for _ in range(4):
        resumed.next_batch()
    restored = PromptSampler(10, 3, seed=7)
    restored.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    assert [restored.next_batch() for _ in range(3)] == seen[4:]
    assert PromptSampler(10, 3, seed=8).epoch_order(0).tolist() != straight.epoch_order(0).tolist()
    with pytest.raises(ValueError):
        restored.load_state_dict({**resumed.state_dict(), "seed": 99})


def test_unshuffled_sampler_keeps_file_order():
    s = PromptSampler(5, 2, seed=0, shuffle=False)
    assert [s.next_batch(), s.next_batch(), s.next_batch()] == [[0, 1], [2, 3], [0, 1]]


def test_peeking_the_next_batch_leaves_the_order_and_the_saved_position_as_they_were():
    """A one-step-off rollout samples the next batch early; the batches and a checkpoint's position must not move."""
    from aharl.data.sampler import PromptSampler

    plain, peeking = (PromptSampler(10, 3, seed=1) for _ in range(2))
    for _ in range(7):  # across an epoch boundary (3 batches an epoch)
        state = peeking.state_dict()
        ahead = peeking.peek_batch()
        assert peeking.state_dict() == state
        assert peeking.next_batch() == ahead == plain.next_batch()
