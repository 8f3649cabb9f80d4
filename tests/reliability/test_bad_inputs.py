"""Bad inputs: each one ends the command in one line naming the problem and its fix, never a traceback.

Every case in :data:`CASES` runs the ``aharl`` command in this process
(``aharl.launch.main.main``) on a small input written under ``tmp_path`` and
checks the exit code, that stderr is exactly one ``aharl: error:`` line
naming the problem (the key, the file, the column), and that no traceback
was printed anywhere. The commands fail before any Ray actor starts (config,
paths, model directory, data and reward functions are all checked first), so
the module runs in about a minute on two cores without a cluster.

Two kinds of cases do not fail:

- ``rows``: a data file where some rows are bad and enough are good. Those
  rows are skipped and counted, never silently: the case loads the file
  with :func:`aharl.data.sources.load_rows` and
  :func:`aharl.data.prompts.build_prompts` (what ``aharl train`` and
  ``aharl eval`` run before printing ``data: <summary>``) and checks the counts.
- ``aharl rewards score`` on a file with malformed lines: those lines are
  skipped, named and counted, the rest scored, and the exit code is 1.

docs/reliability.md holds one row per case; :func:`test_doc_table_lists_every_case`
keeps the two in step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import socket
import threading
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import pytest

from aharl.config import Config, load_config
from aharl.launch.main import main
from tests.helpers.paths import EMPTY_CONFIG, REPO

DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
TEST_NAME = "tests/reliability/test_bad_inputs.py::test_bad_input"


# ---------------------------------------------------------------------------
# The case type


@dataclass
class Setup:
    """What a case's setup function may use and add to: placeholder values, cleanups, patches."""

    tmp: Path
    values: dict[str, str]
    stack: contextlib.ExitStack
    monkeypatch: pytest.MonkeyPatch


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, the command that meets it, and what the user must see.

    Strings in ``argv``, ``env``, ``words`` and ``files`` keys may hold
    placeholders: ``{tmp}`` (the test's directory), ``{model}`` (a tiny HF
    model directory), ``{empty}`` (a config with nothing set), and whatever
    ``setup`` adds; the argument ``{toy}`` stands for the overrides of a toy
    training run that would start Ray if nothing failed first.
    """

    id: str
    what: str  # the bad input, for the table in docs/reliability.md
    does: str  # what aharl does about it, for the same table
    argv: tuple[str, ...]
    words: tuple[str, ...]  # each must appear in the error line (or, for `rows`, the summary)
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    kind: Literal["cli", "rows"] = "cli"
    # For `rows` cases: PromptReport fields and their expected counts.
    counts: dict[str, int] = field(default_factory=dict)
    setup: Callable[[Setup], None] | None = None
    deadline_s: float = 30.0


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def gsm8k_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Well-formed GSM8K-style rows (question, worked answer ending in ``#### N``)."""
    return [
        {
            "question": f"Ann has {i} pens and buys 2 more. How many pens does she have?",
            "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}",
        }
        for i in range(start, start + count)
    ]


GOOD = jsonl(gsm8k_rows(8))
SCORE_ROWS = jsonl([{"completion": f"<answer>\n{i}\n</answer>", "answer": str(i)} for i in range(3)])

# Arguments of a toy training run: the tiny model, synthetic data, built-in rewards.
TOY = (
    "model.path={model}",
    "data.source=synthetic",
    "data.answer_extractor=plain",
    "data.system_prompt=''",
    "data.max_prompt_tokens=96",
    "data.synthetic.num_examples=40",
    "rollout.n=2",
    "rollout.max_tokens=4",
    "rewards.functions=[arithmetic]",
    "rewards.num_workers=1",
    "learner.prompts_per_step=4",
    "learner.max_steps=1",
    "logging.output_dir={tmp}/runs",
    "logging.run_name=case",
    "logging.plots=false",
    "eval.num_questions=0",
)
TRAIN = ("train", "{empty}", "{toy}")
SHOW = ("config", "show")
SCORE = ("rewards", "score", "--input", "{tmp}/rows.jsonl", "--rewards")
GSM8K_FILE = ("data.source={tmp}/data.jsonl", "data.answer_extractor=gsm8k")


def config_case(id: str, what: str, does: str, yaml_text: str, words: tuple[str, ...]) -> Case:
    """A config file holding ``yaml_text``, shown with ``aharl config show``."""
    return Case(id, what, does, (*SHOW, "{tmp}/config.yaml"), words, files={"config.yaml": yaml_text})


def override_case(id: str, what: str, does: str, overrides: tuple[str, ...], words: tuple[str, ...]) -> Case:
    return Case(id, what, does, (*SHOW, "{empty}", *overrides), words)


def reward_case(id: str, what: str, does: str, source: str, words: tuple[str, ...]) -> Case:
    """``aharl rewards score`` with the user function ``f`` defined by ``source``."""
    return Case(
        id,
        what,
        does,
        (*SCORE, "{tmp}/user_reward.py:f"),
        words,
        files={"rows.jsonl": SCORE_ROWS, "user_reward.py": source},
    )


# ---------------------------------------------------------------------------
# Setups that need more than files


def _copy_model(ctx: Setup, keep: Callable[[Path], bool]) -> Path:
    """A copy of the tiny model with only the files ``keep`` accepts, at ``{tmp}/model``."""
    target = ctx.tmp / "model"
    target.mkdir()
    for path in Path(ctx.values["model"]).iterdir():
        if keep(path):
            shutil.copy(path, target / path.name)
    return target


def model_without_weights(ctx: Setup) -> None:
    _copy_model(ctx, lambda p: not p.name.endswith(".safetensors"))


def model_without_tokenizer(ctx: Setup) -> None:
    _copy_model(ctx, lambda p: p.name in ("config.json", "model.safetensors"))


def model_with_cut_config(ctx: Setup) -> None:
    target = _copy_model(ctx, lambda p: True)
    text = (target / "config.json").read_text()
    (target / "config.json").write_text(text[: len(text) // 2])


def hub_offline(ctx: Setup) -> None:
    """HF_HUB_OFFLINE=1 as a user sets it; huggingface_hub reads the variable at import, so the flag is set too."""
    import huggingface_hub.constants

    ctx.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def make_checkpoint(run_dir: Path, step: int, num_prompts: int = 40) -> Path:
    """A checkpoint laid out as a training run writes one: learner/, hf/, rng.pt, trainer_state.json."""
    import torch
    from safetensors.torch import save_file

    from aharl.tracking.checkpoints import TrainerState, write_checkpoint

    def fill(staging: Path) -> None:
        (staging / "learner" / "state").mkdir(parents=True)
        torch.save({"module": {"w": torch.zeros(4)}}, staging / "learner" / "state" / "mp_rank_00_model_states.pt")
        (staging / "learner" / "zero_to_fp32.py").write_text("# DeepSpeed's helper script, copied beside its states\n")
        (staging / "hf").mkdir()
        (staging / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
        save_file({"w": torch.zeros(64)}, str(staging / "hf" / "model.safetensors"))

    state = TrainerState(
        step=step, total_steps=10, sampler={"epoch": 0, "position": step, "num_prompts": num_prompts, "seed": 42}
    )
    return write_checkpoint(run_dir / "checkpoints", step, fill, state, keep_last=5)


def checkpoint_case_setup(damage: Callable[[Path], None], num_prompts: int = 40) -> Callable[[Setup], None]:
    """A setup that writes ``{tmp}/old`` with checkpoints at steps 1 and 2, damages step 2, and names it ``{ckpt}``."""

    def setup(ctx: Setup) -> None:
        make_checkpoint(ctx.tmp / "old", 1, num_prompts)
        latest = make_checkpoint(ctx.tmp / "old", 2, num_prompts)
        damage(latest)
        ctx.values["ckpt"] = str(latest)
        ctx.values["earlier"] = str(latest.parent / "step-000001")

    return setup


def cut(path: Path, keep: float = 0.5) -> None:
    """Truncate ``path`` to ``keep`` of its size, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_state(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        state_file = checkpoint / "trainer_state.json"
        state = json.loads(state_file.read_text())
        change(state)
        state_file.write_text(json.dumps(state))

    return damage


def refused_port(ctx: Setup) -> None:
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ctx.values["port"] = str(s.getsockname()[1])


def http_server(ctx: Setup) -> None:
    """A port that answers every connection as a plain HTTP server would (e.g. the dashboard's), not as Ray's GCS."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                with contextlib.suppress(OSError):
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()

    def stop() -> None:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()

    ctx.stack.callback(stop)
    ctx.values["port"] = str(server.getsockname()[1])


def gcs_refusing_tokens(ctx: Setup) -> None:
    """A gRPC server that answers every call as a Ray GCS does to a wrong token (no Ray cluster is started)."""
    from concurrent import futures

    import grpc

    class Refuse(grpc.GenericRpcHandler):
        def service(self, handler_call_details: Any) -> Any:
            def refuse(request: bytes, context: grpc.ServicerContext) -> None:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken: Authentication token is missing or incorrect"
                )

            return grpc.unary_unary_rpc_method_handler(refuse)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((Refuse(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ctx.stack.callback(server.stop, None)
    ctx.values["port"] = str(port)


RAY_FIX = "unset RAY_ADDRESS"

# ---------------------------------------------------------------------------
# The cases

CASES: list[Case] = [
    # -- config: unknown keys, wrong types, ranges --------------------------------
    config_case(
        "config-unknown-key",
        "a misspelt key in a section (`rollout.nn`)",
        "names the key and the file, suggests `rollout.n`",
        "rollout:\n  nn: 4\n",
        ("`rollout.nn`", "is not a known key", "did you mean `rollout.n`", "{tmp}/config.yaml"),
    ),
    config_case(
        "config-unknown-section",
        "a misspelt section (`rolout:`)",
        "names the section, suggests `rollout`",
        "rolout:\n  n: 4\n",
        ("`rolout`", "did you mean `rollout`"),
    ),
    override_case(
        "config-unknown-override",
        "an override of a key that does not exist (`learner.nope=3`)",
        "names the key and the command line as its source",
        ("learner.nope=3",),
        ("`learner.nope`", "command-line override", "not a known key"),
    ),
    config_case(
        "config-wrong-type-int",
        "a word where a whole number goes (`rollout.n: many`)",
        "names the key and the type (every key's wrong type: test_every_config_key_rejects_a_wrong_type)",
        "rollout:\n  n: many\n",
        ("`rollout.n`", "must be a whole number", "'many'"),
    ),
    override_case(
        "config-fraction-for-int",
        "a fraction where a whole number goes (`rollout.n=2.5`)",
        "names the key and the type",
        ("rollout.n=2.5",),
        ("`rollout.n`", "whole number", "2.5"),
    ),
    config_case(
        "config-wrong-type-float",
        "a word where a number goes (`learner.lr: fast`)",
        "names the key and the type",
        "learner:\n  lr: fast\n",
        ("`learner.lr`", "must be a number"),
    ),
    config_case(
        "config-wrong-type-bool",
        "`data.shuffle: maybe`",
        "asks for true or false",
        "data:\n  shuffle: maybe\n",
        ("`data.shuffle`", "true or false"),
    ),
    config_case(
        "config-wrong-type-string",
        "a list where a path goes (`model.path: [a, b]`)",
        "names the key, says to quote the value",
        "model:\n  path: [a, b]\n",
        ("`model.path`", "must be a string"),
    ),
    config_case(
        "config-wrong-type-list",
        "a mapping where a list goes (`rewards.functions: {a: 1}`)",
        "names the key, shows a YAML list",
        "rewards:\n  functions: {a: 1}\n",
        ("`rewards.functions`", "must be a list"),
    ),
    config_case(
        "config-wrong-type-mapping",
        "a number where a mapping goes (`rewards.weights: 5`)",
        "names the key, shows a mapping",
        "rewards:\n  weights: 5\n",
        ("`rewards.weights`", "must be a mapping"),
    ),
    config_case(
        "config-section-not-mapping",
        "a value where a section goes (`rollout: 5`)",
        "names the section",
        "rollout: 5\n",
        ("`rollout`", "must be a mapping of keys"),
    ),
    config_case(
        "config-bad-choice",
        "a choice that does not exist (`rollout.backend: tgi`)",
        "lists the valid choices",
        "rollout:\n  backend: tgi\n",
        ("`rollout.backend`", "not a valid choice", "vllm, hf"),
    ),
    config_case(
        "config-below-range",
        "`rollout.n: 1` (GRPO needs a group)",
        "names the key and the smallest value (every key's range: test_every_numeric_config_key_rejects_out_of_range)",
        "rollout:\n  n: 1\n",
        ("`rollout.n`", "2 or more"),
    ),
    config_case(
        "config-above-range",
        "`rollout.top_p: 1.5`",
        "names the key and the range",
        "rollout:\n  top_p: 1.5\n",
        ("`rollout.top_p`", "(0, 1]"),
    ),
    config_case(
        "config-negative",
        "a negative learning rate",
        "names the key, gives a value",
        "learner:\n  lr: -1.0e-6\n",
        ("`learner.lr`", "must be positive"),
    ),
    override_case(
        "config-nan",
        "a NaN reward weight (`rewards.weights.correctness=.nan`)",
        "refuses non-finite numbers (NaN passes no range check)",
        ("rewards.functions=[correctness]", "rewards.weights.correctness=.nan"),
        ("`rewards.weights.correctness`", "finite number"),
    ),
    override_case(
        "config-infinite",
        "an infinite learning rate (`learner.lr=.inf`)",
        "refuses non-finite numbers",
        ("learner.lr=.inf",),
        ("`learner.lr`", "finite number", "inf"),
    ),
    config_case(
        "config-inconsistent",
        "`micro_batch_prompts: 3` with `prompts_per_step: 4`",
        "names the key and what it must divide",
        "learner:\n  prompts_per_step: 4\n  micro_batch_prompts: 3\n",
        ("`learner.micro_batch_prompts`", "does not divide"),
    ),
    override_case(
        "config-weight-for-unknown-reward",
        "a weight for a reward that is not configured",
        "names the weight, lists the configured rewards",
        ("rewards.weights.foo=2.0",),
        ("`rewards.weights.foo`", "names no configured reward"),
    ),
    override_case(
        "config-reserved-resource",
        "`placement.learner_resources={CPU: 1}` (a built-in resource)",
        "asks for a custom resource name",
        ("placement.learner_resources={CPU: 1}",),
        ("`placement.learner_resources`", "custom resource"),
    ),
    # -- config: the file itself -------------------------------------------------
    config_case(
        "config-yaml-syntax",
        "an unclosed brace",
        "names the file and the line",
        "rollout: {n: 4\n",
        ("not valid YAML at line", "{tmp}/config.yaml"),
    ),
    config_case(
        "config-yaml-tab",
        "a tab indent",
        "names the line and YAML's reason",
        "rollout:\n\tn: 4\n",
        ("not valid YAML at line 2", "cannot start any token"),
    ),
    config_case(
        "config-duplicate-key",
        "the same section twice (YAML would keep the last silently)",
        "names the key and the line of the repeat",
        "rollout:\n  n: 4\nrollout:\n  n: 8\n",
        ("`rollout` is given twice", "line 3"),
    ),
    config_case(
        "config-not-mapping",
        "a YAML list instead of sections",
        "says a config is `section:` blocks",
        "- a\n- b\n",
        ("mapping of sections",),
    ),
    Case(
        "config-missing-file",
        "a config path that does not exist",
        "names the path, lists the shipped configs",
        (*SHOW, "{tmp}/nope.yaml"),
        ("{tmp}/nope.yaml does not exist", "quickstart"),
    ),
    Case(
        "config-is-directory",
        "a directory as the config",
        "says it is a directory",
        (*SHOW, "{tmp}"),
        ("{tmp} is a directory",),
    ),
    Case(
        "config-not-utf8",
        "a config file with Latin-1 bytes",
        "names the byte and the line",
        (*SHOW, "{tmp}/config.yaml"),
        ("not UTF-8", "0xe9", "line 2"),
        files={"config.yaml": b"# notes\nrollout: # caf\xe9\n  n: 4\n"},
    ),
    override_case(
        "override-malformed",
        "an override without `=` (`rollout.n`)",
        "shows the override syntax",
        ("rollout.n",),
        ("`rollout.n`", "section.key=value"),
    ),
    override_case(
        "override-wrong-type",
        "`resume=[1, 2]`",
        "names the key and the type",
        ("resume=[1, 2]",),
        ("`resume`", "must be a string"),
    ),
    # -- command line --------------------------------------------------------------
    Case(
        "cli-unknown-command",
        "`aharl trian`",
        "one usage line, no usage block",
        ("trian",),
        ("invalid choice: 'trian'", "aharl --help"),
    ),
    Case(
        "cli-missing-argument",
        "`aharl eval` without --model",
        "names the missing option",
        ("eval", "--data", "{tmp}/d.jsonl"),
        ("aharl eval", "--model", "required"),
    ),
    Case(
        "cli-bad-option-value",
        "`--limit many`",
        "names the option and the value",
        ("eval", "--model", "{model}", "--data", "{tmp}/d.jsonl", "--limit", "many"),
        ("--limit", "invalid int value: 'many'"),
    ),
    # -- model -----------------------------------------------------------------------
    Case(
        "model-path-missing",
        "model.path names a directory that does not exist",
        "names the path before anything starts",
        (*TRAIN, "model.path={tmp}/no-model"),
        ("model path {tmp}/no-model does not exist",),
    ),
    Case(
        "model-no-config",
        "a model directory without config.json",
        "names the directory and the file",
        (*TRAIN, "model.path={tmp}/empty-model"),
        ("{tmp}/empty-model has no config.json",),
        files={"empty-model/README": "x"},
    ),
    Case(
        "model-config-cut",
        "a model directory whose config.json is cut off",
        "says config.json is damaged",
        (*TRAIN, "model.path={tmp}/model"),
        ("{tmp}/model", "config.json is damaged"),
        setup=model_with_cut_config,
    ),
    Case(
        "model-no-weights",
        "a model directory without weight files",
        "names the directory before Ray starts (it used to fail in the actor)",
        (*TRAIN, "model.path={tmp}/model"),
        ("{tmp}/model has no weights", "*.safetensors"),
        setup=model_without_weights,
    ),
    Case(
        "model-no-tokenizer",
        "a model directory without tokenizer files",
        "names the files it looked for",
        (*TRAIN, "model.path={tmp}/model"),
        ("{tmp}/model", "tokenizer.json", "tokenizer.save_pretrained"),
        setup=model_without_tokenizer,
    ),
    Case(
        "model-hub-offline",
        "a hub id with HF_HUB_OFFLINE=1 (no network)",
        "names the model and the offline alternatives",
        (*TRAIN, "model.path=nobody-xyz/no-such-model"),
        ("'nobody-xyz/no-such-model'", "without network"),
        setup=hub_offline,
    ),
    Case(
        "model-lora-target-missing",
        "model.lora.target_modules names no layer of the model (`[qkv]` on a Llama)",
        "names the key and PEFT's reason before any actor starts",
        (*TRAIN, "model.lora.r=4", "model.lora.target_modules=[qkv]"),
        ("`model.lora.target_modules`", "qkv", "not found in the base model", "all-linear"),
    ),
    # -- data: files that cannot be used -----------------------------------------------
    Case(
        "data-file-missing",
        "data.source names a .jsonl that does not exist",
        "names the file",
        (*TRAIN, "data.source={tmp}/none.jsonl"),
        ("data file {tmp}/none.jsonl does not exist",),
    ),
    Case(
        "data-source-missing",
        "data.source is a path that does not exist",
        "names the path, lists what a source may be",
        (*TRAIN, "data.source={tmp}/nowhere"),
        ("{tmp}/nowhere does not exist", "synthetic"),
    ),
    Case(
        "data-missing-column",
        "rows without a `question` column",
        "names the column, lists the file's columns",
        (*TRAIN, *GSM8K_FILE),
        ("no column 'question'", "it has: q, answer", "data.question_column"),
        files={"data.jsonl": jsonl([{"q": r["question"], "answer": r["answer"]} for r in gsm8k_rows(8)])},
    ),
    Case(
        "data-torn-json-line",
        "a .jsonl with a line cut in half",
        "names the file and the line",
        (*TRAIN, *GSM8K_FILE),
        ("{tmp}/data.jsonl line 3 is not valid JSON",),
        files={"data.jsonl": jsonl(gsm8k_rows(2)) + '{"question": "Ann has\n' + jsonl(gsm8k_rows(6, 2))},
    ),
    Case(
        "data-not-utf8",
        "a .jsonl row with Latin-1 bytes",
        "names the line and the byte; says how to re-encode",
        (*TRAIN, *GSM8K_FILE),
        ("{tmp}/data.jsonl line 9 is not UTF-8", "0xe9", "iconv"),
        files={"data.jsonl": GOOD.encode() + b'{"question": "Caf\xe9 bill: 3 + 4?", "answer": "#### 7"}\n'},
    ),
    Case(
        "data-empty-file",
        "an empty .jsonl",
        "says the file is empty",
        (*TRAIN, *GSM8K_FILE),
        ("{tmp}/data.jsonl is empty",),
        files={"data.jsonl": ""},
    ),
    Case(
        "data-csv-malformed",
        "a .csv with an unclosed quote",
        "names the file and the parser's reason",
        (*TRAIN, "data.source={tmp}/data.csv", "data.answer_extractor=plain"),
        ("cannot read data file {tmp}/data.csv", "ParserError"),
        files={"data.csv": 'question,answer\n"What is 1 + 1?,2\n'},
    ),
    Case(
        "data-parquet-damaged",
        "a .parquet that is not Parquet",
        "names the file and the reader's reason",
        (*TRAIN, "data.source={tmp}/data.parquet"),
        ("cannot read data file {tmp}/data.parquet", "parquet"),
        files={"data.parquet": b"not parquet at all"},
    ),
    Case(
        "data-all-questions-empty",
        "every question empty",
        "counts them as malformed; no usable prompt is an error",
        (*TRAIN, *GSM8K_FILE),
        ("gave no usable prompts", "5 malformed"),
        files={"data.jsonl": jsonl([{"question": "  ", "answer": "#### 1"}] * 5)},
    ),
    Case(
        "data-all-gold-missing",
        "no row has a gold answer (no `####`)",
        "counts them; no usable prompt is an error",
        (*TRAIN, *GSM8K_FILE),
        ("gave no usable prompts", "5 without a gold answer"),
        files={"data.jsonl": jsonl([{"question": "Why?", "answer": "because"}] * 5)},
    ),
    Case(
        "data-all-prompts-too-long",
        "every prompt longer than data.max_prompt_tokens",
        "counts them, names the setting",
        (*TRAIN, *GSM8K_FILE, "data.max_prompt_tokens=8"),
        ("8 over the prompt-token limit", "data.max_prompt_tokens"),
        files={"data.jsonl": GOOD},
    ),
    Case(
        "data-too-few-prompts",
        "fewer usable prompts than one step takes",
        "names learner.prompts_per_step",
        (*TRAIN, *GSM8K_FILE),
        ("2 prompts cannot fill one step", "learner.prompts_per_step=4"),
        files={"data.jsonl": jsonl(gsm8k_rows(2))},
    ),
    # -- data: some rows bad, enough good: skipped and counted ---------------------------
    Case(
        "rows-some-malformed",
        "rows with an empty question, a null question and a missing answer among good ones",
        "skips and counts each kind in the `data:` line; the run goes on",
        GSM8K_FILE,
        ("8 prompts kept of 11 rows", "1 without a gold answer", "2 malformed"),
        kind="rows",
        counts={"kept": 8, "malformed": 2, "no_answer": 1},
        files={
            "data.jsonl": GOOD
            + jsonl(
                [{"question": "", "answer": "#### 1"}, {"question": None, "answer": "#### 1"}, {"question": "Where?"}]
            )
        },
    ),
    Case(
        "rows-non-numeric-gold",
        "gold answers `#### twelve` and `#### n/a` among numeric ones",
        "skips and counts them (GSM8K golds are numbers); the run goes on",
        GSM8K_FILE,
        ("8 prompts kept of 10 rows", "2 with a non-numeric gold answer"),
        kind="rows",
        counts={"kept": 8, "non_numeric": 2},
        files={
            "data.jsonl": GOOD
            + jsonl(
                [{"question": "How many?", "answer": "#### twelve"}, {"question": "And now?", "answer": "#### n/a"}]
            )
        },
    ),
    Case(
        "rows-duplicate-ids",
        "two rows repeating an earlier row's `id`",
        "keeps the first, skips and counts the repeats; the run goes on",
        GSM8K_FILE,
        ("8 prompts kept of 10 rows", "2 with a duplicate id"),
        kind="rows",
        counts={"kept": 8, "duplicate": 2},
        files={
            "data.jsonl": jsonl(
                [{"id": f"q{i}", **r} for i, r in enumerate(gsm8k_rows(8))]
                + [{"id": "q0", **gsm8k_rows(1)[0]}, {"id": "q3", **gsm8k_rows(1, 40)[0]}]
            )
        },
    ),
    Case(
        "rows-some-too-long",
        "two prompts longer than data.max_prompt_tokens among short ones",
        "skips and counts them (never truncated); the run goes on",
        (*GSM8K_FILE, "data.max_prompt_tokens=160"),
        ("8 prompts kept of 10 rows", "2 over the prompt-token limit"),
        kind="rows",
        counts={"kept": 8, "too_long": 2},
        files={"data.jsonl": GOOD + jsonl([{"question": "long " * 300, "answer": "#### 1"}] * 2)},
    ),
    # -- reward functions ------------------------------------------------------------------
    reward_case(
        "reward-returns-none",
        "a reward function without a return statement",
        "names the function; asks for one float per completion",
        "def f(completions, answers):\n    [len(c) for c in completions]\n",
        ("user_reward.py:f", "returned None"),
    ),
    reward_case(
        "reward-returns-nan",
        "a reward function returning NaN",
        "names the function and the position",
        "def f(completions, answers):\n    return [float('nan')] * len(completions)\n",
        ("user_reward.py:f", "NaN or infinity", "position 0"),
    ),
    reward_case(
        "reward-returns-string",
        "a reward function returning the string '0.5'",
        "says it returned a str, not a list",
        "def f(completions, answers):\n    return '0.5'\n",
        ("user_reward.py:f", "returned a str", "not a list"),
    ),
    reward_case(
        "reward-returns-words",
        "a reward function returning ['high', ...]",
        "names the first non-number and its position",
        "def f(completions, answers):\n    return ['high' for _ in completions]\n",
        ("non-number at position 0", "'high'"),
    ),
    reward_case(
        "reward-returns-dict",
        "a reward function returning {index: score}",
        "refuses it (iterating a dict gives its keys)",
        "def f(completions, answers):\n    return {i: 1.0 for i in range(len(completions))}\n",
        ("returned a dict", "not a list"),
    ),
    reward_case(
        "reward-wrong-length",
        "a reward function returning 1 value for 3 completions",
        "names the function and both counts",
        "def f(completions, answers):\n    return [1.0]\n",
        ("user_reward.py:f", "returned 1 values for 3 completions"),
    ),
    reward_case(
        "reward-wrong-arguments",
        "a reward function taking three positional arguments, none of them `completions`",
        "fails at load: names its signature and the forms it could have",
        "def f(text, gold, extra):\n    return [1.0 for _ in text]\n",
        ("takes neither (completions, answers) nor a `completions` keyword", "(text, gold, extra)"),
    ),
    reward_case(
        "reward-raises-multiline",
        "a reward function raising an error whose message spans lines",
        "names the function and the error's first line",
        "def f(completions, answers):\n    raise ValueError('bad score\\nsecond line')\n",
        ("user_reward.py:f", "raised ValueError: bad score"),
    ),
    reward_case(
        "reward-module-syntax-error",
        "a reward file with a syntax error",
        "names the entry, the error and the line",
        "def f(completions, answers) return []\n",
        ("failed to import: SyntaxError", "line 1", "--rewards"),
    ),
    reward_case(
        "reward-module-import-fails",
        "a reward file importing a module that is not installed",
        "names the missing module",
        "import not_a_module_xyz\n\ndef f(completions, answers):\n    return []\n",
        ("failed to import: ModuleNotFoundError", "not_a_module_xyz"),
    ),
    reward_case(
        "reward-function-missing",
        "a reward entry naming a function the file lacks",
        "names the file and the function",
        "def g(completions, answers):\n    return []\n",
        ("has no function 'f'",),
    ),
    Case(
        "reward-file-missing",
        "a reward entry naming a file that does not exist",
        "names the file",
        (*SCORE, "{tmp}/gone.py:f"),
        ("file {tmp}/gone.py does not exist",),
        files={"rows.jsonl": SCORE_ROWS},
    ),
    Case(
        "reward-unknown-name",
        "a misspelt built-in reward (`correctnes`)",
        "lists the registered names and sets",
        (*SCORE, "correctnes"),
        ("'correctnes' is not a known reward", "correctness"),
        files={"rows.jsonl": SCORE_ROWS},
    ),
    Case(
        "train-reward-import-fails",
        "`aharl train` with a reward file that fails to import",
        "fails at config load, before the model or Ray",
        (*TRAIN, "rewards.functions=[{tmp}/user_reward.py:f]"),
        ("`rewards.functions`", "failed to import: ZeroDivisionError"),
        files={"user_reward.py": "1 / 0\n"},
    ),
    Case(
        "score-input-missing",
        "`aharl rewards score --input` naming no file",
        "names the file",
        (*SCORE, "reference"),
        ("{tmp}/rows.jsonl does not exist",),
    ),
    Case(
        "score-output-unwritable",
        "--output in a directory that does not exist",
        "names the output before scoring",
        (*SCORE, "reference", "--output", "{tmp}/no/dir/out.jsonl"),
        ("cannot write --output {tmp}/no/dir/out.jsonl",),
        files={"rows.jsonl": SCORE_ROWS},
    ),
    Case(
        "score-rows-malformed",
        "rows that are not JSON or lack `completion`, among good ones",
        "skips, names (the first 5) and counts them; scores the rest; exit 1",
        (*SCORE, "reference"),
        ("2 malformed row(s) skipped",),
        code=1,
        files={"rows.jsonl": SCORE_ROWS + "{oops\n" + json.dumps({"answer": "1"}) + "\n"},
    ),
    Case(
        "score-rows-not-utf8",
        "a row with Latin-1 bytes among good ones",
        "skips, names and counts it; scores the rest; exit 1",
        (*SCORE, "reference"),
        ("1 malformed row(s) skipped", "rows.jsonl:4: not UTF-8"),
        code=1,
        files={"rows.jsonl": SCORE_ROWS.encode() + b'{"completion": "caf\xe9", "answer": "1"}\n'},
    ),
    # -- checkpoints (resume=) ------------------------------------------------------------------
    Case(
        "resume-path-missing",
        "resume= names a path with no checkpoint",
        "names the path, lists what resume= takes",
        (*TRAIN, "resume={tmp}/gone"),
        ("resume={tmp}/gone: no checkpoint there", "resume=auto"),
    ),
    Case(
        "checkpoint-state-cut",
        "trainer_state.json cut off mid-write",
        "names the file; points at the checkpoint before it",
        (*TRAIN, "resume={ckpt}"),
        ("{ckpt}/trainer_state.json is damaged", "resume={earlier}"),
        setup=checkpoint_case_setup(lambda c: cut(c / "trainer_state.json")),
    ),
    Case(
        "checkpoint-no-learner",
        "a checkpoint copied without learner/",
        "names the checkpoint and the missing part",
        (*TRAIN, "resume={ckpt}"),
        ("checkpoint {ckpt} is incomplete", "learner/", "resume={earlier}"),
        setup=checkpoint_case_setup(lambda c: shutil.rmtree(c / "learner")),
    ),
    Case(
        "checkpoint-no-hf",
        "a checkpoint copied without hf/",
        "names the checkpoint and the missing part",
        (*TRAIN, "resume={ckpt}"),
        ("checkpoint {ckpt} is incomplete", "hf/"),
        setup=checkpoint_case_setup(lambda c: shutil.rmtree(c / "hf")),
    ),
    Case(
        "checkpoint-weights-cut",
        "hf/model.safetensors cut short",
        "names the file and its size",
        (*TRAIN, "resume={ckpt}"),
        ("checkpoint {ckpt} is incomplete", "hf/model.safetensors is cut short"),
        setup=checkpoint_case_setup(lambda c: cut(c / "hf" / "model.safetensors")),
    ),
    Case(
        "checkpoint-learner-file-cut",
        "a learner/ state file cut short",
        "names the file",
        (*TRAIN, "resume={ckpt}"),
        ("learner/state/mp_rank_00_model_states.pt is cut short",),
        setup=checkpoint_case_setup(lambda c: cut(c / "learner" / "state" / "mp_rank_00_model_states.pt")),
    ),
    Case(
        "checkpoint-learner-states-missing",
        "learner/ copied with its helper scripts but without the state files (*.pt)",
        "names the checkpoint and the missing states",
        (*TRAIN, "resume={ckpt}"),
        ("checkpoint {ckpt} is incomplete", "learner/ is missing or has no state files"),
        setup=checkpoint_case_setup(lambda c: shutil.rmtree(c / "learner" / "state")),
    ),
    Case(
        "checkpoint-rng-cut",
        "rng.pt cut short",
        "names the file",
        (*TRAIN, "resume={ckpt}"),
        ("rng.pt is cut short",),
        setup=checkpoint_case_setup(lambda c: cut(c / "rng.pt")),
    ),
    Case(
        "checkpoint-old-version",
        "trainer_state.json without `sampler` (an older aharl)",
        "names the missing field; says to use that version or start from hf/",
        (*TRAIN, "resume={ckpt}"),
        ("written by another aharl version", "lacks sampler", "model.path={ckpt}/hf"),
        setup=checkpoint_case_setup(edit_state(lambda s: s.pop("sampler"))),
    ),
    Case(
        "checkpoint-unknown-field",
        "trainer_state.json with a field this aharl does not know",
        "names the field; says to use the version that wrote it",
        (*TRAIN, "resume={ckpt}"),
        ("written by another aharl version", "ema_decay"),
        setup=checkpoint_case_setup(edit_state(lambda s: s.update(ema_decay=0.99))),
    ),
    Case(
        "checkpoint-field-wrong-type",
        'trainer_state.json with `step: "2"`',
        "names the field and the type",
        (*TRAIN, "resume={ckpt}"),
        ("is damaged: step = '2' is not of type int",),
        setup=checkpoint_case_setup(edit_state(lambda s: s.update(step="2"))),
    ),
    Case(
        "checkpoint-sampler-incomplete",
        "a data position (sampler) without `seed`",
        "names the missing key",
        (*TRAIN, "resume={ckpt}"),
        ("sampler) lacks seed",),
        setup=checkpoint_case_setup(edit_state(lambda s: s["sampler"].pop("seed"))),
    ),
    Case(
        "checkpoint-auto-latest-damaged",
        "resume=auto where the latest checkpoint is damaged",
        "names it and the one before it",
        (*TRAIN, "logging.output_dir={tmp}", "logging.run_name=old", "resume=auto"),
        ("{ckpt}/trainer_state.json is damaged", "resume={earlier}"),
        setup=checkpoint_case_setup(lambda c: (c / "trainer_state.json").write_text("")),
    ),
    Case(
        "checkpoint-other-data",
        "a checkpoint of a run on other data",
        "names the checkpoint; says to resume with the run's data settings",
        (*TRAIN, "resume={ckpt}"),
        ("cannot resume from {ckpt}", "different prompt set"),
        setup=checkpoint_case_setup(lambda c: None, num_prompts=999),
    ),
    # -- eval, report, plot --------------------------------------------------------------------
    Case(
        "eval-bad-mode",
        "`aharl eval --modes beam`",
        "lists the modes",
        ("eval", "--model", "{model}", "--data", "{tmp}/d.jsonl", "--modes", "beam"),
        ("unknown mode 'beam'",),
    ),
    Case(
        "eval-output-is-directory",
        "`aharl eval --output` naming a directory",
        "fails before generating (the results would be lost)",
        ("eval", "--model", "{model}", "--data", "{tmp}/d.jsonl", "--output", "{tmp}"),
        ("--output {tmp} is a directory",),
    ),
    Case(
        "report-missing-file",
        "`aharl report` with a file that does not exist",
        "names the file and how to write it",
        ("report", "{tmp}/before.json", "{tmp}/after.json"),
        ("{tmp}/before.json does not exist", "--output"),
    ),
    Case(
        "report-not-eval-file",
        "a JSON file that is not an evaluation",
        "names the file",
        ("report", "{tmp}/before.json", "{tmp}/before.json"),
        ('{tmp}/before.json has no "modes"',),
        files={"before.json": json.dumps({"modes": [1, 2]})},
    ),
    Case(
        "report-not-utf8",
        "an evaluation file with Latin-1 bytes",
        "names the file",
        ("report", "{tmp}/before.json", "{tmp}/before.json"),
        ("{tmp}/before.json is not UTF-8",),
        files={"before.json": b'{"modes": "\xe9"}'},
    ),
    Case(
        "report-record-incomplete",
        "an evaluation whose records lack their answers",
        "names the file, mode and record",
        ("report", "--out", "{tmp}/report", "{tmp}/before.json", "{tmp}/before.json"),
        ("mode 'greedy' record 1 lacks",),
        files={
            "before.json": json.dumps({"modes": {"greedy": {"summary": {"questions": 1}, "records": [{"index": 0}]}}})
        },
    ),
    Case(
        "plot-missing-run",
        "`aharl plot` on a directory without metrics",
        "names the file it needs",
        ("plot", "{tmp}/no-run"),
        ("{tmp}/no-run/metrics.jsonl does not exist",),
    ),
    Case(
        "plot-metrics-not-utf8",
        "a metrics.jsonl with Latin-1 bytes",
        "names the file and the line",
        ("plot", "{tmp}/run"),
        ("{tmp}/run/metrics.jsonl line 2 is not UTF-8",),
        files={"run/metrics.jsonl": b'{"step": 1, "reward/total": 0.5}\n{"step": 2, "note": "\xe9"}\n'},
    ),
    Case(
        "plot-metrics-without-step",
        "a metrics.jsonl whose records have no step",
        "names the file and the line",
        ("plot", "{tmp}/run"),
        ('{tmp}/run/metrics.jsonl line 1 has no numeric "step"',),
        files={"run/metrics.jsonl": jsonl([{"reward/total": 0.5}])},
    ),
    # -- the Ray cluster -------------------------------------------------------------------------
    Case(
        "ray-address-unreachable",
        "RAY_ADDRESS at a port where nothing listens",
        "one line naming RAY_ADDRESS and the fix within seconds (ray.init would retry for minutes)",
        TRAIN,
        ("no Ray cluster at RAY_ADDRESS=127.0.0.1:{port}", "ray start --head", RAY_FIX),
        env={"RAY_ADDRESS": "127.0.0.1:{port}"},
        setup=refused_port,
        deadline_s=20.0,
    ),
    Case(
        "ray-address-not-ray",
        "RAY_ADDRESS at a port that answers, but not as Ray (an HTTP server)",
        "one line: not a Ray cluster's GCS, which port to use",
        TRAIN,
        ("RAY_ADDRESS=127.0.0.1:{port} accepts connections but is not a Ray cluster", "6379"),
        env={"RAY_ADDRESS": "127.0.0.1:{port}"},
        setup=http_server,
        deadline_s=20.0,
    ),
    Case(
        "ray-wrong-token",
        "RAY_ADDRESS at a cluster that refuses this process's token",
        "one line naming the cluster and RAY_AUTH_TOKEN at once (ray.init retries for ~20 s)",
        TRAIN,
        ("RAY_ADDRESS=127.0.0.1:{port} refused this process's token", "InvalidAuthToken", "RAY_AUTH_TOKEN"),
        env={"RAY_ADDRESS": "127.0.0.1:{port}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
        setup=gcs_refusing_tokens,
        deadline_s=20.0,
    ),
    Case(
        "ray-address-dashboard-url",
        "RAY_ADDRESS=http://...:8265 (the address `ray job submit` takes)",
        "explains the two addresses",
        TRAIN,
        ("RAY_ADDRESS=http://127.0.0.1:8265 is a http address", "HEAD_IP:6379"),
        env={"RAY_ADDRESS": "http://127.0.0.1:8265"},
        deadline_s=20.0,
    ),
    Case(
        "ray-address-malformed",
        "RAY_ADDRESS=localhost:port",
        "says it is not HOST:PORT",
        TRAIN,
        ("RAY_ADDRESS=localhost:port is not HOST:PORT",),
        env={"RAY_ADDRESS": "localhost:port"},
        deadline_s=20.0,
    ),
]


# ---------------------------------------------------------------------------
# Running a case


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``{name}`` of ``values`` replaced (other braces, e.g. JSON's, left alone)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def expand_argv(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        out.extend(fill(a, values) for a in (TOY if arg == "{toy}" else (arg,)))
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A 2-layer model with SmolLM2's tokenizer: a real model directory that loads in a fraction of a second."""
    from tests.helpers.toy import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("bad-inputs") / "model", smollm2_tokenizer)


@pytest.fixture(autouse=True)
def restore_logging() -> Any:
    """`aharl train` adds console and log-file handlers in this process; later cases must not write into them."""
    import logging
    import warnings

    root, aharl = logging.getLogger(), logging.getLogger("aharl")
    saved = (list(root.handlers), root.level, list(aharl.handlers), warnings.showwarning)
    yield
    for logger, handlers in ((root, saved[0]), (aharl, saved[2])):
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
    root.setLevel(saved[1])
    warnings.showwarning = saved[3]


def write_files(root: Path, files: dict[str, str | bytes], values: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / fill(name, values)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    tiny_model: Path,
    smollm2_tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = {"tmp": str(tmp_path), "model": str(tiny_model), "empty": str(EMPTY_CONFIG)}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with contextlib.ExitStack() as stack:
        write_files(tmp_path, case.files, values)
        if case.setup is not None:
            case.setup(Setup(tmp_path, values, stack, monkeypatch))
        for name, value in case.env.items():
            monkeypatch.setenv(name, fill(value, values))
        if case.env.get("RAY_ADDRESS"):
            import ray

            if ray.is_initialized():
                pytest.skip("Ray is already initialized in this process: connect_ray would reuse it")
        words = [fill(w, values) for w in case.words]
        began = time.perf_counter()
        if case.kind == "rows":
            summary = run_rows_case(case, values, smollm2_tokenizer)
            for word in words:
                assert word in summary, f"{word!r} not in the data summary: {summary}"
            return
        code = main(expand_argv(case.argv, values))
        elapsed = time.perf_counter() - began
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err[-3000:]
    assert code == case.code, f"exit {code}, expected {case.code}; stderr: {err[-2000:]}"
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-3000:]}"
        assert lines[0].startswith("aharl: error: "), lines[0]
        shown = lines[0]
    else:
        assert lines and not any(line.startswith("aharl: error:") for line in lines), err
        shown = err
    for word in words:
        assert word in shown, f"{word!r} not in: {shown}"
    assert elapsed < case.deadline_s, f"took {elapsed:.1f}s, past the case's deadline of {case.deadline_s:.0f}s"


def run_rows_case(case: Case, values: dict[str, str], tokenizer: Any) -> str:
    """Load the case's data as a run does; check every row is counted once and the expected counts."""
    from aharl.data.prompts import build_prompts
    from aharl.data.sources import load_rows

    config = load_config(None, expand_argv(case.argv, values)).data
    rows = load_rows(config)
    prompts, report = build_prompts(rows, tokenizer, config)
    counted = dataclasses.asdict(report)
    assert counted.pop("rows") == len(rows) == sum(counted.values()), counted
    expected = {name: 0 for name in counted} | case.counts
    assert counted == expected
    assert len(prompts) == report.kept
    return report.summary()


# ---------------------------------------------------------------------------
# Every config key: a wrong type, and (where there is one) a value out of range


def leaf_keys(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every settable key of the config tree with its type hint (``rollout.n`` -> int)."""
    keys: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys.update(leaf_keys(hint, f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = hint
    return keys


def wrong_value(hint: Any) -> str:
    """An override value of the wrong type for ``hint`` (as written on the command line)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return wrong_value(args[0])
    if origin is Literal:
        return "not-a-choice"
    if origin is list:
        return "{a: 1}"
    if origin is dict:
        return "5"
    if origin is tuple:
        return "fast"
    return {bool: "maybe", int: "many", float: "fast", str: "[1, 2]"}[hint]


def one_error_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("aharl: error: config error"), err
    assert "Traceback" not in out + err
    return lines[0]


@pytest.mark.parametrize("key", sorted(leaf_keys()))
def test_every_config_key_rejects_a_wrong_type(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(capsys, main(["config", "show", str(EMPTY_CONFIG), f"{key}={wrong_value(leaf_keys()[key])}"]))
    assert f"`{key}" in line  # the key (a mapping's entry names its sub-key: `placement.learner_resources.x`)


# A value out of range for each numeric key, with any other override it needs.
OUT_OF_RANGE: dict[str, tuple[str, ...]] = {
    "model.lora.r": ("-1",),
    "model.lora.alpha": ("0",),
    "model.lora.dropout": ("1.0",),
    "rollout.n": ("1",),
    "rollout.temperature": ("0",),
    "rollout.top_p": ("0",),
    "rollout.max_tokens": ("0",),
    "rollout.gpu_memory_utilization": ("1.5",),
    "rollout.num_engines": ("0",),
    "rollout.timeout_s": ("0",),
    "rewards.num_workers": ("0",),
    "rewards.timeout_s": ("0",),
    "grpo.beta": ("-0.1",),
    "grpo.clip_eps_low": ("1.0",),
    "grpo.clip_eps_high": ("-0.1",),
    "grpo.updates_per_batch": ("0",),
    "grpo.advantage_eps": ("0",),
    "grpo.rollout_correction_cap": ("1.0",),
    "grpo.dynamic_sampling_max_rounds": ("-1",),
    "learner.lr": ("0",),
    "learner.weight_decay": ("-0.1",),
    "learner.warmup_ratio": ("1.0",),
    "learner.max_grad_norm": ("0",),
    "learner.prompts_per_step": ("0",),
    "learner.micro_batch_prompts": ("0",),
    "learner.epochs": ("0",),
    "learner.max_steps": ("0",),
    "learner.zero_stage": ("4",),
    "learner.logprob_chunk_rows": ("0",),
    "learner.max_skipped_in_a_row": ("0",),
    "learner.timeout_s": ("0",),
    "learner.max_tokens_per_micro_batch": ("8",),
    "data.max_prompt_tokens": ("0",),
    "data.synthetic.num_examples": ("0",),
    "data.synthetic.difficulty": ("9",),
    "data.synthetic.max_operand": ("1",),
    "placement.learner_gpus": ("0",),
    "placement.rollout_gpus": ("0", "placement.layout=separate"),
    "placement.gpu_memory_gib": ("0",),
    "placement.start_timeout_s": ("0",),
    "sync.interval_steps": ("0",),
    "sync.bucket_mb": ("0",),
    "sync.logp_diff_warn": ("0",),
    "sync.mismatch_steps": ("0",),
    "sync.timeout_s": ("0",),
    "logging.every_steps": ("0",),
    "logging.samples_per_step": ("-1",),
    "checkpoint.every_steps": ("0",),
    "checkpoint.keep_last": ("0",),
    "eval.every_steps": ("-1",),
    "eval.num_questions": ("-1",),
    "eval.report_questions": ("-1",),
}
# Numeric keys where every value is usable: seeds.
ANY_VALUE = {"rollout.seed", "learner.seed", "data.seed"}


def numeric_keys() -> set[str]:
    def numeric(hint: Any) -> bool:
        return hint in (int, float) or any(
            numeric(a) for a in typing.get_args(hint) if typing.get_origin(hint) is not dict
        )

    return {key for key, hint in leaf_keys().items() if numeric(hint) and typing.get_origin(hint) is not tuple}


def test_every_numeric_config_key_has_a_range_case() -> None:
    """A new numeric key needs a range check and a row above, or a place in ANY_VALUE."""
    assert numeric_keys() == set(OUT_OF_RANGE) | ANY_VALUE


@pytest.mark.parametrize("key", sorted(OUT_OF_RANGE))
def test_every_numeric_config_key_rejects_out_of_range(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    value, *others = OUT_OF_RANGE[key]
    line = one_error_line(capsys, main(["config", "show", str(EMPTY_CONFIG), *others, f"{key}={value}"]))
    assert f"`{key}`" in line


# ---------------------------------------------------------------------------
# The table in docs/reliability.md


def doc_table() -> str:
    """The rows between the bad-inputs markers, one per case (how docs/reliability.md was written)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| case | input | what aharl does | test |", "|---|---|---|---|"]
    for c in CASES:
        rows.append(f"| {c.id} | {cell(c.what)} | {cell(c.does)} | `{TEST_NAME}[{c.id}]` |")
    return "\n".join(rows)


def test_case_ids_are_unique_kebab_case_and_enough() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 45
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids), ids


def test_doc_table_lists_every_case() -> None:
    section = DOC.read_text().split(BEGIN)[1].split(END)[0]
    documented = re.findall(re.escape(TEST_NAME) + r"\[([^\]]+)\]", section)
    assert len(documented) == len(set(documented))
    assert set(documented) == {c.id for c in CASES}
