"""Read question/answer rows from the hub, a local file, or the synthetic task.

Everything goes through ``datasets`` (hub ids, jsonl/json/parquet/csv files);
this module only decides which loader a ``data.source`` means and turns a
failure into one line that says what to pass instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from aharl.config import DataConfig
from aharl.data.synthetic import make_dataset
from aharl.errors import DataError, describe

SYNTHETIC = "synthetic"
_FILE_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(config: DataConfig) -> list[dict[str, Any]]:
    """All rows of the configured split as plain dicts (columns unchanged)."""
    if config.source == SYNTHETIC:
        s = config.synthetic
        return make_dataset(s.num_examples, s.difficulty, s.max_operand, config.seed)
    dataset = _load_dataset(config)
    missing = [c for c in (config.question_column, config.answer_column) if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"data source {config.source} has no column {missing[0]!r} (it has: {', '.join(dataset.column_names)}); "
            "set data.question_column / data.answer_column"
        )
    try:
        return dataset.to_list()
    except Exception as exc:  # the file's values decode only here (e.g. bytes a format check did not cover)
        cause = _root_cause(exc)
        raise DataError(
            f"cannot read the rows of data source {config.source} ({describe(cause)}); check the file's encoding (UTF-8) and values"
        ) from None


@contextlib.contextmanager
def _datasets_logs_quiet() -> Iterator[None]:
    """``datasets`` logs a file it cannot read at ERROR on stderr; aharl reports it as its own one line instead."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_dataset(config: DataConfig):
    import datasets

    datasets.disable_progress_bars()
    path = Path(config.source).expanduser()
    loader = _FILE_LOADERS.get(path.suffix.lower())
    with _datasets_logs_quiet():
        return _load(datasets, config, path, loader)


def _load(datasets, config: DataConfig, path: Path, loader: str | None):
    try:
        if loader is not None:
            if not path.is_file():
                state = "is a directory" if path.is_dir() else "does not exist"
                raise DataError(
                    f"data file {config.source} {state}; pass an existing .jsonl/.json/.parquet/.csv file or a hub id"
                )
            if loader != "parquet":
                check_text_file(path, json_lines=path.suffix.lower() == ".jsonl")
            return datasets.load_dataset(loader, data_files=str(path), split="train")
        if path.is_dir():
            return datasets.load_dataset(str(path), split=config.split)
        if config.source.startswith((".", "/", "~")):
            raise DataError(
                f"data source {config.source} does not exist; pass an existing file or directory, a hub id, or `synthetic`"
            )
        return datasets.load_dataset(config.source, config.subset, split=config.split)
    except DataError:
        raise
    except Exception as exc:
        cause = _root_cause(exc)
        if loader is not None or path.is_dir():
            # A local file: the network advice below would mislead; the parser's own words say what is wrong.
            raise DataError(
                f"cannot read data file {config.source} ({describe(cause)}); "
                f"check that it is a valid {path.suffix.lstrip('.') or 'dataset'} file with a {config.question_column!r} and an {config.answer_column!r} column"
            ) from None
        raise DataError(
            f"cannot load data source {config.source!r} ({describe(exc)}); "
            "without network pass a local file (data.source=path/to/train.jsonl) or data.source=synthetic"
        ) from None


def check_text_file(path: Path, json_lines: bool) -> None:
    """One line naming the first line of ``path`` that is not UTF-8 (or, for JSON lines, not a JSON object).

    ``datasets`` reports these as a generic generation error, or (bad bytes
    inside a string) not at all until the rows are read back; a line number
    lets the user fix the file.
    """
    seen_row = False
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"data file {path} line {number} is not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                    "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            if not line.strip():
                continue
            seen_row = True
            if json_lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"data file {path} line {number} is not valid JSON (column {exc.colno}: {exc.msg}); fix or remove that line"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(
                        f'data file {path} line {number} is a JSON {type(row).__name__}, not an object; write one {{"question": ..., "answer": ...}} object per line'
                    )
    if not seen_row:
        raise DataError(f"data file {path} is empty; pass a file with question/answer rows")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception: ``datasets`` wraps the parser's error (which names the problem) in its own."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if inner is None or id(inner) in seen:  # a chain may loop back on itself
            return exc
        seen.add(id(inner))
        exc = inner
