"""The reference recipe's five rewards written as a TRL user writes them, for TRL's GRPOTrainer.

Chat completions arrive as ``[{"role": "assistant", "content": text}]``, the
gold answer as the ``answer`` column keyword, everything else in
``**kwargs``. Nothing here imports aharl: aharl must run these unchanged.
"""

import re


def _answer_of(text):
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def _texts(completions):
    return [completion[0]["content"] for completion in completions]


def correctness_reward_func(prompts, completions, answer, **kwargs):
    assert prompts[0][-1]["role"] == "user"  # the chat prompt reaches the function
    return [2.0 if _answer_of(text) == gold else 0.0 for text, gold in zip(_texts(completions), answer)]


def int_reward_func(completions, **kwargs):
    return [0.5 if _answer_of(text).isdigit() else 0.0 for text in _texts(completions)]


def strict_format_reward_func(completions, **kwargs):
    pattern = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
    return [0.5 if re.match(pattern, text) else 0.0 for text in _texts(completions)]


def soft_format_reward_func(completions, **kwargs):
    pattern = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
    return [0.5 if re.match(pattern, text) else 0.0 for text in _texts(completions)]


def _xml_count(text):
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def xmlcount_reward_func(completions, **kwargs):
    return [_xml_count(text) for text in _texts(completions)]


# The built-in each one must equal, bit for bit.
BUILT_IN = {
    "xmlcount_reward_func": "xmlcount",
    "soft_format_reward_func": "soft_format",
    "strict_format_reward_func": "strict_format",
    "int_reward_func": "int",
    "correctness_reward_func": "correctness",
}
