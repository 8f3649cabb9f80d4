"""The before/after report: the same questions, the initial and the final policy's answers side by side.

This automates the reference's "before training / after training" comparison.
Two files: ``report.md`` (reads well on GitHub and in a terminal) and
``report.html`` (self-contained: inline CSS, no scripts or downloads, so it
can be mailed or attached to an experiment).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from aharl.types import EvalResult

SUMMARY_KEYS = ("accuracy_exact", "accuracy_numeric", "format_strict", "format_soft", "mean_length", "reward_total")


def summary_rows(before: EvalResult, after: EvalResult) -> list[tuple[str, float, float]]:
    return [
        (key, before.summary[key], after.summary[key])
        for key in SUMMARY_KEYS
        if key in before.summary and key in after.summary
    ]


def paired_records(before: EvalResult, after: EvalResult, limit: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Records of the questions both evaluations answered, matched by prompt index, in ``before``'s order."""
    after_by_index = {r["index"]: r for r in after.records}
    pairs = [(r, after_by_index[r["index"]]) for r in before.records if r["index"] in after_by_index]
    return pairs[:limit]


def _mark(answer: dict[str, Any]) -> str:
    return "right" if answer["numeric"] else "wrong"


def markdown_report(title: str, before: EvalResult, after: EvalResult, limit: int) -> str:
    lines = [
        f"# {title}",
        "",
        f"Greedy answers to {int(before.summary['questions'])} held-out questions, before and after training.",
        "",
    ]
    lines += ["| metric | before | after |", "|---|---:|---:|"]
    lines += [f"| {key} | {b:.3f} | {a:.3f} |" for key, b, a in summary_rows(before, after)]
    for number, (b, a) in enumerate(paired_records(before, after, limit), start=1):
        lines += ["", f"## {number}. {b['question']}", "", f"Gold answer: `{b['gold']}`", ""]
        for label, record in (("Before", b), ("After", a)):
            answer = record["answers"][0]
            rewards = ", ".join(f"{k} {_value(v)}" for k, v in answer["rewards"].items())
            lines += [
                f"**{label}** ({_mark(answer)}; reward {answer['reward']:.2f}: {rewards}; {answer['tokens']} tokens)",
                "",
                "```text",
                answer["text"].replace("```", "'''"),
                "```",
                "",
            ]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#222}
table.summary td,table.summary th{padding:.2rem .8rem;text-align:right}
table.summary td:first-child,table.summary th:first-child{text-align:left}
.q{border-top:1px solid #ccc;padding:1rem 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.6rem;margin:.3rem 0;font-size:.85rem}
.right{color:#176d2c}.wrong{color:#a61b1b}.meta{font-size:.85rem;color:#555}
"""


def html_report(title: str, before: EvalResult, after: EvalResult, limit: int) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{b:.3f}</td><td>{a:.3f}</td></tr>" for k, b, a in summary_rows(before, after)
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1><p>Greedy answers to {int(before.summary['questions'])} held-out questions, before and after training.</p>",
        f"<table class='summary'><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>",
    ]
    for number, (b, a) in enumerate(paired_records(before, after, limit), start=1):
        cells = []
        for label, record in (("Before", b), ("After", a)):
            answer = record["answers"][0]
            rewards = ", ".join(f"{esc(k)} {_value(v)}" for k, v in answer["rewards"].items())
            cells.append(
                f"<div><b>{label}</b> <span class='{_mark(answer)}'>{_mark(answer)}</span>"
                f"<div class='meta'>reward {answer['reward']:.2f} ({rewards}); {answer['tokens']} tokens</div>"
                f"<pre>{esc(answer['text'])}</pre></div>"
            )
        parts.append(
            f"<div class='q'><b>{number}. {esc(b['question'])}</b><div class='meta'>gold answer: {esc(b['gold'])}</div>"
            f"<div class='pair'>{''.join(cells)}</div></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: Path, title: str, before: EvalResult, after: EvalResult, limit: int) -> Sequence[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    md, page = directory / "report.md", directory / "report.html"
    md.write_text(markdown_report(title, before, after, limit))
    page.write_text(html_report(title, before, after, limit))
    return md, page


def _value(reward: float | None) -> str:
    """A reward as the report shows it; ``n/a`` where the function returned None (it did not apply)."""
    return "n/a" if reward is None else f"{reward:.2f}"
