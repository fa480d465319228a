"""Evaluation datasets: JSONL and CSV read into items, bad files refused line by line."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinktank.errors import DatasetError, UsageError
from thinktank.eval.dataset import SHIPPED, Item, load_dataset, shipped


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def jsonl(*rows: Any) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def error(path: Path, **kwargs: Any) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


# --- reading -------------------------------------------------------------------------


def test_jsonl_items_with_ids_inputs_and_targets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonl",
        jsonl(
            {"id": "a", "question": "2+2?", "target": 4},
            {"id": 7, "question": "capital of US?", "target": ["Washington, D.C.", "Washington"]},
        ),
    )
    assert load_dataset(path) == [
        Item(id="a", inputs={"question": "2+2?"}, targets=("4",)),
        Item(
            id="7",
            inputs={"question": "capital of US?"},
            targets=("Washington, D.C.", "Washington"),
        ),
    ]


def test_numbers_become_their_text(tmp_path: Path) -> None:
    path = write(tmp_path, "n.jsonl", '{"target": [42, -3, 2.50, 1e3, "007"]}\n')
    assert load_dataset(path)[0].targets == ("42", "-3", "2.5", "1000.0", "007")


def test_inputs_keep_json_types(tmp_path: Path) -> None:
    path = write(
        tmp_path, "t.jsonl", jsonl({"n": 3, "xs": [1, 2], "o": {"k": None}, "target": "x"})
    )
    assert load_dataset(path)[0].inputs == {"n": 3, "xs": [1, 2], "o": {"k": None}}


def test_target_and_id_are_never_inputs(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"id": "a", "q": "?", "target": "secret"}))
    csv_path = write(tmp_path, "d.csv", 'id,q,target\na,?,"[""secret""]"\n')
    for item in load_dataset(path) + load_dataset(csv_path):
        assert set(item.inputs) == {"q"}
        assert "secret" not in json.dumps(item.inputs)
    for name in SHIPPED:
        for item in load_dataset(shipped(name)):
            assert "target" not in item.inputs and "id" not in item.inputs


def test_made_up_ids_are_stem_and_line_and_stable(tmp_path: Path) -> None:
    # Line 2 is blank and skipped: ids follow the lines, not the item count.
    text = '{"q": "a", "target": "1"}\n\n{"q": "b", "target": "2"}\r\n{"id": "x", "target": "3"}\n'
    path = write(tmp_path, "quiz.jsonl", text)
    first = load_dataset(path)
    assert [item.id for item in first] == ["quiz-1", "quiz-3", "x"]
    assert load_dataset(path) == first
    csv_path = write(tmp_path, "quiz.csv", 'q,target\na,1\n\n"multi\nline",2\nc,3\n')
    # A quoted cell spanning lines 4-5: the next item starts on line 6.
    assert [item.id for item in load_dataset(csv_path)] == ["quiz-2", "quiz-4", "quiz-6"]
    assert load_dataset(csv_path)[1].inputs == {"q": "multi\nline"}


def test_csv_target_is_one_answer_or_a_json_list(tmp_path: Path) -> None:
    text = (
        "id,target\n"
        "one,Paris\n"
        'comma,"Washington, D.C."\n'
        'list,"[""Washington, D.C."", ""Washington"", 42]"\n'
        'bracket,"[""[sic]""]"\n'
        "pipe,a|b\n"
    )
    items = load_dataset(write(tmp_path, "t.csv", text))
    assert [item.targets for item in items] == [
        ("Paris",),
        ("Washington, D.C.",),
        ("Washington, D.C.", "Washington", "42"),
        ("[sic]",),
        ("a|b",),  # the documented rule: `|` separates nothing
    ]


def test_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = write(tmp_path, "excel.csv", "\ufefftarget,q\nx,y\n".encode())
    assert load_dataset(path) == [Item(id="excel-2", inputs={"q": "y"}, targets=("x",))]


def test_unicode_line_separator_inside_a_json_string_is_not_a_line_break(tmp_path: Path) -> None:
    path = write(tmp_path, "u.jsonl", '{"q": "a\u2028b", "target": "x"}\n')
    assert load_dataset(path)[0].inputs == {"q": "a\u2028b"}


rows = st.lists(
    st.fixed_dictionaries(
        {
            "question": st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
            "target": st.one_of(
                st.text(min_size=1, max_size=10)
                .filter(str.strip)
                .filter(lambda s: not s.lstrip().startswith("[")),
                st.lists(
                    st.text(min_size=1, max_size=10).filter(str.strip), min_size=1, max_size=3
                ),
            ),
        }
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows)
def test_csv_and_jsonl_of_the_same_content_are_equal(
    tmp_path: Path, rows: list[dict[str, Any]]
) -> None:
    records = [{"id": f"i{n}", **row} for n, row in enumerate(rows)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "question", "target"])
    for r in records:
        target = r["target"]
        writer.writerow(
            [r["id"], r["question"], json.dumps(target) if isinstance(target, list) else target]
        )
    from_csv = load_dataset(write(tmp_path, "p.csv", out.getvalue()))
    from_jsonl = load_dataset(write(tmp_path, "p.jsonl", jsonl(*records)))
    assert from_csv == from_jsonl
    assert all(isinstance(item.targets, tuple) and item.targets for item in from_jsonl)


# --- errors: each names the file, the line and the field ---------------------------------


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        (jsonl({"q": 1}, {"q": 2}), 1, "target", "missing"),
        (jsonl({"target": "a"}, {"target": ""}), 2, "target", "empty answer"),
        (jsonl({"target": "  "}), 1, "target", "empty answer"),
        (jsonl({"target": []}), 1, "target", "empty list"),
        (jsonl({"target": ["a", ""]}), 1, "target[1]", "empty answer"),
        (jsonl({"target": None}), 1, "target", "found null"),
        (jsonl({"target": True}), 1, "target", "found a boolean"),
        (jsonl({"target": ["a", {"b": 1}]}), 1, "target[1]", "found an object"),
        (
            jsonl({"target": "a", "id": "x"}, {"target": "b", "id": "x"}),
            2,
            "id",
            "duplicate id 'x' (first on line 1)",
        ),
        (jsonl({"target": "a", "id": 1}, {"target": "b", "id": "1"}), 2, "id", "duplicate id '1'"),
        (jsonl({"target": "a", "id": 1.5}), 1, "id", "found a number"),
        (jsonl({"target": "a", "id": ""}), 1, "id", "empty"),
        ('{"target": "a"}\n\n[1, 2]\n', 3, None, "expected a JSON object, found a list"),
        ('{"target": "a"}\n"text"\n', 2, None, "found a string"),
        ('{"target": "a"}\n{"target": \n', 2, None, "not valid JSON"),
        ('{"target": "a", "target": "b"}\n', 1, None, "duplicate key 'target'"),
    ],
)
def test_jsonl_errors(tmp_path: Path, text: str, line: int, field: str | None, words: str) -> None:
    path = write(tmp_path, "bad.jsonl", text)
    err = error(path)
    assert (err.file, err.line, err.field) == (str(path), line, field)
    assert words in err.message
    where = f"{path}:{line}: {field}: " if field else f"{path}:{line}: "
    assert str(err).startswith(where)


def test_made_up_id_colliding_with_a_given_id_is_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"id": "d-2", "target": "a"}, {"target": "b"}))
    err = error(path)
    assert (err.line, err.field) == (2, "id")
    assert "duplicate id 'd-2'" in err.message


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("q,answer\na,b\n", 1, "target", "no 'target' column"),
        ("q,q,target\na,b,c\n", 1, "q", "column named twice"),
        ("q,,target\na,b,c\n", 1, "column 2", "empty column name"),
        ("q,target\na,b\nc\n", 3, None, "1 values, but the header names 2 columns"),
        ("q,target\na,\n", 2, "target", "empty answer"),
        ('q,target\na,"[1,"\n', 2, "target", "must be a JSON list"),
        ('q,target\na,"{""a"": 1}"\n', 2, None, None),  # an object is one answer: fine
        ('q,target\na,"[""x"", null]"\n', 2, "target[1]", "found null"),
        ("id,target\nx,a\nx,b\n", 3, "id", "duplicate id 'x'"),
        ("id,target\n,a\n", 2, "id", "empty"),
        ('q,target\n"a"b,c\n', 2, None, "invalid CSV"),
        ("", 1, None, "empty file"),
    ],
)
def test_csv_errors(
    tmp_path: Path, text: str, line: int, field: str | None, words: str | None
) -> None:
    path = write(tmp_path, "bad.csv", text)
    if words is None:
        assert load_dataset(path)[0].targets == ('{"a": 1}',)
        return
    err = error(path)
    assert (err.file, err.line, err.field) == (str(path), line, field)
    assert words in err.message


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.jsonl", b'{"target": "a"}\n{"target": "caf\xe9"}\n')
    err = error(path)
    assert (err.line, err.field) == (2, None)
    assert str(err) == f"{path}:2: byte 0xE9 is not valid UTF-8 (save the file as UTF-8)"


def test_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "big.jsonl", jsonl({"target": "a"}) * 10)  # 160 bytes
    assert len(load_dataset(path, max_bytes=160)) == 10  # exactly the limit is allowed
    err = error(path, max_bytes=159)
    assert str(err) == f"{path}: file is 160 bytes, more than the 159 a dataset may have"


@pytest.mark.parametrize("name", ["d.json", "d.txt", "d", "d.jsonl.gz"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, jsonl({"target": "a"}))
    err = error(path)
    assert err.line is None and "unknown dataset format" in err.message and str(path) in str(err)


def test_missing_file_and_empty_dataset(tmp_path: Path) -> None:
    missing = error(tmp_path / "nope.jsonl")
    assert str(missing).startswith(f"{tmp_path / 'nope.jsonl'}: cannot read")
    assert str(error(write(tmp_path, "e.jsonl", "\n  \n"))).endswith(": no items")
    assert str(error(write(tmp_path, "h.csv", "target\n"))).endswith(": no items")


def test_dataset_error_is_a_usage_error() -> None:
    err = DatasetError("empty answer", file="f.csv", line=3, field="target")
    assert isinstance(err, UsageError)
    assert str(err) == "f.csv:3: target: empty answer"
    assert str(DatasetError("no items", file="f.csv")) == "f.csv: no items"


# --- shipped datasets --------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_datasets_load_with_unique_ids(name: str) -> None:
    path = shipped(name)
    assert path == shipped(f"{name}.jsonl")
    assert path.is_file() and (path.parent / "README.md").is_file()
    items = load_dataset(path)
    assert 55 <= len(items) <= 70
    assert len({item.id for item in items}) == len(items)
    assert all(item.id.startswith(f"{name}-") for item in items)


def test_shipped_capitals_accept_variants() -> None:
    items = {item.inputs["country"]: item.targets for item in load_dataset(shipped("capitals"))}
    assert items["France"] == ("Paris",)
    assert items["United States"] == ("Washington, D.C.", "Washington")
    assert items["Bolivia"] == ("Sucre", "La Paz")


def test_shipped_arithmetic_targets_are_the_answers() -> None:
    items = load_dataset(shipped("arithmetic"))
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for item in items:
        match = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", item.inputs["question"])
        assert match, item
        a, op, b = int(match[1]), match[2], int(match[3])
        assert item.targets == (str(ops[op](a, b)),)
    assert items[0] == Item(
        id="arithmetic-01", inputs={"question": "What is 119 + 640?"}, targets=("759",)
    )


def test_shipped_times_tables_are_every_product_once() -> None:
    items = load_dataset(shipped("times-tables"))
    pairs = []
    for item in items:
        match = re.fullmatch(r"What is (\d+) x (\d+)\?", item.inputs["question"])
        assert match, item
        a, b = int(match[1]), int(match[2])
        assert item.id == f"times-tables-{a}x{b}" and item.targets == (str(a * b),)
        pairs.append((a, b))
    assert sorted(pairs) == [(a, b) for a in range(2, 13) for b in range(a, 13)]


def test_unknown_shipped_name() -> None:
    with pytest.raises(
        DatasetError,
        match=r"no shipped dataset 'nope' \(shipped: arithmetic, capitals, times-tables\)",
    ):
        shipped("nope")
