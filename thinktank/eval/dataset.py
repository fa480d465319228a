"""Evaluation datasets: reading JSONL and CSV files into items, and the shipped datasets.

A dataset is a file of items, one a line (JSONL) or a row (CSV). Each item has an
``id``, input fields that a prompt template may use, and a ``target``: the accepted
answer, or several. This module owns the file formats, the checks every file passes
before any model is called (each problem a :class:`~thinktank.errors.DatasetError`
naming the file, the line and the field) and the datasets that ship in
``thinktank/eval/data/``.

The target is kept apart from the inputs (:attr:`Item.targets`, never a key of
:attr:`Item.inputs`), so rendering the inputs into a prompt cannot leak the answer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from thinktank._safeload import LoadError, load_json
from thinktank.consensus.formats import AnswerFormat
from thinktank.errors import DatasetError

__all__ = ["MAX_BYTES", "SHIPPED", "Item", "load_dataset", "shipped"]

MAX_BYTES = 64 * 1024 * 1024
"""Largest dataset file read (64 MiB): datasets are thousands of short items, so a larger
file is a mistake (a log, a model file) and is refused before it is read into memory."""

SHIPPED = ("arithmetic", "capitals", "times-tables")
"""Names of the datasets shipped in ``thinktank/eval/data/`` (see its README.md)."""

ID = "id"
TARGET = "target"


@dataclass(frozen=True)
class Item:
    """One dataset item.

    Attributes:
        id: Unique within its dataset; made up as ``<file stem>-<line>`` when absent.
        inputs: Every field but ``id`` and ``target``: what a prompt may use.
        targets: The accepted answers, as text (``42`` is ``"42"``); at least one.
    """

    id: str
    inputs: dict[str, Any]
    targets: tuple[str, ...]


def shipped(name: str) -> Path:
    """The file of a shipped dataset: ``shipped("capitals")`` (``.jsonl`` optional).

    Raises:
        DatasetError: no shipped dataset has that name.
    """
    stem = name.removesuffix(".jsonl")
    if stem not in SHIPPED:
        raise DatasetError(
            f"no shipped dataset {name!r} (shipped: {', '.join(SHIPPED)})", file=name
        )
    # Package data of a regular (unzipped) install is a file on disk.
    return Path(str(resources.files("thinktank.eval").joinpath("data", f"{stem}.jsonl")))


def load_dataset(
    path: str | Path, *, max_bytes: int = MAX_BYTES, choices_field: str | None = None
) -> list[Item]:
    """Read a dataset file, checking every item; the format is chosen by the suffix.

    ``.jsonl``: one JSON object a line; blank lines are skipped. ``id`` (a string or an
    integer) is optional; ``target`` is a string, a number, or a non-empty list of them.
    Numbers become their text as Python writes them (``42`` -> ``"42"``, ``2.50`` ->
    ``"2.5"``, ``1e3`` -> ``"1000.0"``): write a number as a string to keep its spelling.

    ``.csv``: a header row naming the columns, then one item a row; every value is text.
    A ``target`` column is required and an ``id`` column optional. Several accepted
    answers are written as a JSON list in the cell (``["Washington, D.C.", "Washington"]``):
    a cell whose text starts with ``[`` must be a JSON list; any other cell is one
    answer. (An answer that itself starts with ``[`` is written as a one-element list.)

    Items without an id get ``<file stem>-<line>``, the line the item starts on: the same
    on every run of the same file, and it says where to find the item.

    With ``choices_field`` (an experiment asking ``choice`` with each item's own
    choices), every item's field of that name must be a list of two to 26 distinct
    strings (so such a dataset is JSONL: a CSV cell is text).

    Raises:
        DatasetError: the first problem found (unreadable, too large, not UTF-8, invalid
            JSON or CSV, a line that is not an object, a missing or empty target, a
            duplicate id, missing or bad choices, no items), naming the file, the line
            and the field.
    """
    path = Path(path)
    file = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DatasetError(
            f"unknown dataset format {path.suffix or '(no suffix)'!r} (use .jsonl or .csv)",
            file=file,
        )
    text = _read_text(path, max_bytes)
    rows = _jsonl_rows(text, file) if suffix == ".jsonl" else _csv_rows(text, file)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        item = _item(row, file, line, path.stem)
        if choices_field is not None:
            _check_choices(item.inputs, choices_field, file, line)
        if item.id in seen:
            raise DatasetError(
                f"duplicate id {item.id!r} (first on line {seen[item.id]})",
                file=file,
                line=line,
                field=ID,
            )
        seen[item.id] = line
        items.append(item)
    if not items:
        raise DatasetError("no items", file=file)
    return items


def _read_text(path: Path, max_bytes: int) -> str:
    file = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            # Checked before reading: the file is never loaded into memory.
            raise DatasetError(
                f"file is {size} bytes, more than the {max_bytes} a dataset may have",
                file=file,
            )
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read: {exc.strerror or exc}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(
            f"byte 0x{data[exc.start]:02X} is not valid UTF-8 (save the file as UTF-8)",
            file=file,
            line=line,
        ) from None
    # Spreadsheets often write a byte-order mark; left in, it would rename the first column.
    return text.removeprefix("\ufeff")


def _jsonl_rows(text: str, file: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Split on newlines only: str.splitlines also splits on U+2028, which JSON strings
    # may contain unescaped.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            data = load_json(line)
        except LoadError as exc:
            raise DatasetError(exc.message, file=file, line=number) from None
        if not isinstance(data, dict):
            raise DatasetError(
                f"expected a JSON object, found {_json_type(data)}", file=file, line=number
            )
        yield number, data


def _csv_rows(text: str, file: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError("empty file (expected a header row)", file=file, line=1)
        _check_header(header, file)
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise DatasetError(
                    f"{len(row)} values, but the header names {len(header)} columns",
                    file=file,
                    line=line,
                )
            yield (
                line,
                {
                    name: _csv_value(name, value, file, line)
                    for name, value in zip(header, row, strict=True)
                },
            )
    except csv.Error as exc:
        raise DatasetError(f"invalid CSV: {exc}", file=file, line=reader.line_num) from None


def _check_header(header: list[str], file: str) -> None:
    seen: set[str] = set()
    for column, name in enumerate(header, start=1):
        if not name.strip():
            raise DatasetError("empty column name", file=file, line=1, field=f"column {column}")
        if name in seen:
            raise DatasetError("column named twice", file=file, line=1, field=name)
        seen.add(name)
    if TARGET not in seen:
        raise DatasetError("no 'target' column", file=file, line=1, field=TARGET)


def _csv_value(name: str, value: str, file: str, line: int) -> Any:
    if name != TARGET or not value.lstrip().startswith("["):
        return value
    try:
        answers = load_json(value)
    except LoadError as exc:
        raise DatasetError(
            f"a cell starting with '[' must be a JSON list: {exc.message}",
            file=file,
            line=line,
            field=TARGET,
        ) from None
    if not isinstance(answers, list):
        raise DatasetError("expected a JSON list", file=file, line=line, field=TARGET)
    return answers


def _item(row: dict[str, Any], file: str, line: int, stem: str) -> Item:
    if TARGET not in row:
        raise DatasetError("missing", file=file, line=line, field=TARGET)
    targets = _targets(row[TARGET], file, line)
    inputs = {key: value for key, value in row.items() if key not in (ID, TARGET)}
    if ID not in row:
        return Item(id=f"{stem}-{line}", inputs=inputs, targets=targets)
    raw = row[ID]
    # bool is an int to Python, but `true` is no id.
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise DatasetError(
            f"expected a string or an integer, found {_json_type(raw)}",
            file=file,
            line=line,
            field=ID,
        )
    if not raw.strip():
        raise DatasetError("empty", file=file, line=line, field=ID)
    return Item(id=raw, inputs=inputs, targets=targets)


def _check_choices(inputs: dict[str, Any], field: str, file: str, line: int) -> None:
    """An item's own choices: a list of strings :class:`AnswerFormat` accepts."""
    if field not in inputs:
        raise DatasetError("missing (the item's choices)", file=file, line=line, field=field)
    value = inputs[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        found = "a list holding a non-string" if isinstance(value, list) else _json_type(value)
        raise DatasetError(
            f"expected a list of strings (the item's choices), found {found}",
            file=file,
            line=line,
            field=field,
        )
    try:
        AnswerFormat("choice", choices=value)  # it holds the rules: 2 to 26, distinct
    except ValueError as exc:
        raise DatasetError(str(exc), file=file, line=line, field=field) from None


def _targets(value: Any, file: str, line: int) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise DatasetError(
            "empty list (give at least one answer)", file=file, line=line, field=TARGET
        )
    answers: list[str] = []
    for index, answer in enumerate(values):
        field = f"{TARGET}[{index}]" if isinstance(value, list) else TARGET
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = repr(answer)
        if not isinstance(answer, str):
            raise DatasetError(
                f"expected a string or a number, found {_json_type(answer)}",
                file=file,
                line=line,
                field=field,
            )
        if not answer.strip():
            raise DatasetError("empty answer", file=file, line=line, field=field)
        answers.append(answer)
    return tuple(answers)


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
