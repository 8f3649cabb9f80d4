"""An offline task: multi-step arithmetic word problems with integer answers.

It exists so that the quickstart and the tests never need a network. Each
problem starts with a quantity and applies ``difficulty`` operations (gain,
loss, multiply); every intermediate value stays a non-negative integer, so the
gold answer is a plain integer that the reference ``int`` and ``correctness``
rewards can judge.
"""

from __future__ import annotations

import random

_NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Emma",
    "Finn",
    "Gia",
    "Hugo",
    "Iris",
    "Jack",
    "Kira",
    "Leo",
    "Maya",
    "Noah",
    "Omar",
    "Pia",
]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells", "cards", "stamps"]
_GAIN = ["buys {k} more", "finds {k} more", "is given {k} more", "wins {k} more"]
_LOSS = ["gives away {k}", "loses {k}", "sells {k}", "uses {k}"]
_SHE = {"Ava", "Chloe", "Emma", "Gia", "Iris", "Kira", "Maya", "Pia"}
_TIMES = {2: "doubles the number of {item}", 3: "triples the number of {item}"}


def make_problem(rng: random.Random, difficulty: int, max_operand: int) -> dict[str, str]:
    """One ``{"question", "answer"}`` row; the same rng state gives the same problem."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    pronoun = "she" if name in _SHE else "he"
    value = rng.randint(2, max_operand)
    steps = [f"{name} has {value} {item}."]
    for _ in range(difficulty):
        kind = rng.choice(["gain", "loss", "times"] if value <= 4 * max_operand else ["gain", "loss"])
        if kind == "loss" and value >= 2:
            k = rng.randint(1, min(value - 1, max_operand))
            steps.append(f"Then {pronoun} {rng.choice(_LOSS).format(k=k)}.")
            value -= k
        elif kind == "times":
            k = rng.choice(sorted(_TIMES))
            steps.append(f"Then {pronoun} {_TIMES[k].format(item=item)}.")
            value *= k
        else:
            k = rng.randint(1, max_operand)
            steps.append(f"Then {pronoun} {rng.choice(_GAIN).format(k=k)}.")
            value += k
    steps.append(f"How many {item} does {name} have now?")
    return {"question": " ".join(steps), "answer": str(value)}


def make_dataset(num_examples: int, difficulty: int, max_operand: int, seed: int) -> list[dict[str, str]]:
    """``num_examples`` problems, identical for identical arguments."""
    rng = random.Random(seed)
    return [make_problem(rng, difficulty, max_operand) for _ in range(num_examples)]
