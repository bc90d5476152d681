"""Results written as they come, which a rerun continues: CSV, JSON lines, or a folder of Parquet files.

A long batch job (``infer.py --engine ray``) must lose no finished result when it stops,
however it stops: `ResultLog` appends each batch of records as it arrives (CSV and JSON
lines flushed to disk, Parquet as one more complete file in its folder), and on a rerun
says which paths it holds already (`ResultLog.done`), so only the others are computed.
A line cut short by a crash is dropped on the rerun, and its file computed again.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from errors import UsageError
from files import atomic_path, file_problem, folder_problem

FORMATS = ("csv", "jsonl", "parquet")  # parquet: a folder of part-NNNNN.parquet files
PATH = "path"  # the column (or key) that names a record's file, what a rerun skips by
PART = "part-{:05d}.parquet"


class ResultLog:
    """The output ``path`` in ``output_format`` (`FORMATS`), opened to append records (dicts with a `PATH` key).

    ``columns``: the records' keys in order, which csv and parquet need (a header, a schema)
    and check against what ``path`` holds; JSON lines need only each line's `PATH`.

    Raises
    ------
    UsageError
        ``path`` cannot be written, or holds records of other columns (another model's
        labels, another ``--timeline``) or something else than this kind of output.
    """

    def __init__(self, path: str | os.PathLike, output_format: str, columns: list[str] | None = None) -> None:
        if output_format not in FORMATS:
            raise ValueError(f"output_format must be one of {FORMATS}, got {output_format!r}")
        if (columns is None) != (output_format == "jsonl"):
            raise ValueError("columns go with csv and parquet, and only with them")
        self.path, self.format, self.columns = Path(path), output_format, columns
        problem = folder_problem(self.path) if output_format == "parquet" else file_problem(self.path)
        if problem:
            raise UsageError(f"--output {path} {problem}")
        self._done: set[str] = set()
        self._parts = 0
        if output_format == "parquet":
            self._read_parts()
        elif self.path.exists():
            self._read_lines()

    def done(self) -> set[str]:
        """The paths of the records held already."""
        return set(self._done)

    def __contains__(self, path: str) -> bool:
        return path in self._done

    def append(self, records: list[dict[str, Any]]) -> None:
        """Add ``records`` (dicts with the log's columns), on disk when this returns."""
        if not records:
            return
        if self.format == "parquet":
            import pyarrow
            import pyarrow.parquet

            self.path.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path / PART.format(self._parts)) as partial:
                pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), partial)
            self._parts += 1
        else:
            new = not self.path.exists() or self.path.stat().st_size == 0
            with self.path.open("a", newline="") as stream:
                if self.format == "csv":
                    writer = csv.DictWriter(stream, self.columns, lineterminator="\n")
                    if new:
                        writer.writeheader()
                    writer.writerows(records)
                else:
                    stream.writelines(json.dumps(record) + "\n" for record in records)
                stream.flush()
                os.fsync(stream.fileno())
        self._done.update(record[PATH] for record in records)

    def _read_lines(self) -> None:
        text = self.path.read_text()
        if text and not text.endswith("\n"):  # a line cut short by a crash: its file is computed again
            text = text[: text.rfind("\n") + 1]
            with self.path.open("r+") as stream:
                stream.truncate(len(text.encode()))
        lines = text.splitlines()
        if not lines:
            return
        if self.format == "csv":
            header = next(csv.reader(lines[:1]))
            if header != self.columns:
                raise UsageError(f"--output {self.path} holds other columns ({', '.join(header[:6])}, ...): results of another "
                                 "model or other options; give a new --output to start afresh")
            self._done = {row[PATH] for row in csv.DictReader(lines)}
            return
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get(PATH), str):
                raise UsageError(f"--output {self.path}: line {number} is not a result (a JSON object with a {PATH}); "
                                 "give a new --output to start afresh")
            self._done.add(record[PATH])

    def _read_parts(self) -> None:
        if not self.path.exists():
            return
        import pyarrow.parquet

        numbers = []
        for part in sorted(self.path.glob(PART.replace("{:05d}", "*"))):
            schema = pyarrow.parquet.read_schema(part)
            if schema.names != self.columns:
                raise UsageError(f"--output {self.path}: {part.name} holds other columns: results of another model or other "
                                 "options; give a new --output to start afresh")
            self._done.update(pyarrow.parquet.read_table(part, columns=[PATH]).column(PATH).to_pylist())
            numbers.append(int(part.stem.split("-")[1]))
        self._parts = max(numbers, default=-1) + 1
