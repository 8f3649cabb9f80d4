"""Read question/answer rows from the hub, a local file, or the synthetic task.

Everything goes through ``datasets`` (hub ids, jsonl/json/parquet/csv files);
this module only decides which loader a ``data.source`` means and turns a
failure into one line that says what to pass instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aharl.config import DataConfig
from aharl.data.synthetic import make_dataset
from aharl.errors import DataError

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
    return dataset.to_list()


def _load_dataset(config: DataConfig):
    import datasets

    datasets.disable_progress_bars()
    path = Path(config.source).expanduser()
    loader = _FILE_LOADERS.get(path.suffix.lower())
    try:
        if loader is not None:
            if not path.is_file():
                raise DataError(f"data file {config.source} does not exist; pass an existing .jsonl/.json/.parquet/.csv file or a hub id")
            return datasets.load_dataset(loader, data_files=str(path), split="train")
        if path.is_dir():
            return datasets.load_dataset(str(path), split=config.split)
        if config.source.startswith((".", "/", "~")):
            raise DataError(f"data source {config.source} does not exist; pass an existing file or directory, a hub id, or `synthetic`")
        return datasets.load_dataset(config.source, config.subset, split=config.split)
    except DataError:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"cannot load data source {config.source!r} ({type(exc).__name__}: {first_line}); "
            "without network pass a local file (data.source=path/to/train.jsonl) or data.source=synthetic"
        ) from None
