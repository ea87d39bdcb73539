"""The shipped YAMLs reproduce the authors' protocol, as tabulated in ``docs/paper_protocol.md``.

Each section of that document names a shipped YAML in its heading; each table row below it gives
a key path into that YAML (dots between mapping keys, integers index lists), the authors' value,
the shipped value and a note. The test checks, for every row:

- the shipped YAML holds the shipped value at that key (after resolving simple ``!ref``s), so
  editing a YAML without the table (or the table without the YAML) fails;
- the shipped value equals the authors' value, unless the note declares a **deviation** (so every
  difference from the paper is written down and explained).

The YAMLs are read as plain data (HyperPyYAML tags are kept as their raw values), so nothing is
instantiated and no model file is needed. The downstream YAMLs read ``d_model`` and
``num_hidden_states`` from the loaded encoder; they are evaluated here for the paper's encoder,
as the shipped pre-training YAML defines it (768, 13).
"""

from __future__ import annotations

import ast
import operator
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "paper_protocol.md"
PRETRAIN_YAML = "hparams/pretrain/summarymixing_w2v2.yaml"
SECTION = re.compile(r"^#+ .*`(hparams/[\w/.-]+\.yaml)`")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$")
REF = re.compile(r"<([\w\[\]]+)>")
MISSING = object()


class RawLoader(yaml.SafeLoader):
    """YAML loader that keeps HyperPyYAML's tagged nodes as plain mappings, lists and strings."""


def _untagged(loader: RawLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    return f"!ref {value}" if suffix == "ref" else value


RawLoader.add_multi_constructor("!", _untagged)

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv}


def _arithmetic(expression: str) -> Any:
    """Evaluate ``expression`` made of numbers and + - * / only."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not plain arithmetic: {expression!r}")

    return value(ast.parse(expression, mode="eval").body)


def lookup(document: dict, path: str) -> Any:
    """Value at ``path`` (``a.b.0.c``) in a raw YAML document, with ``!ref`` resolved."""
    node: Any = document
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return MISSING
        node = resolve(document, node)
    return resolve_deep(document, node)


def resolve_deep(document: dict, value: Any) -> Any:
    """``resolve`` applied inside lists and mappings too."""
    value = resolve(document, value)
    if isinstance(value, list):
        return [resolve_deep(document, item) for item in value]
    if isinstance(value, dict):
        return {key: resolve_deep(document, item) for key, item in value.items()}
    return value


def resolve(document: dict, value: Any) -> Any:
    """Resolve ``!ref <key>`` (and ``!ref <a> * 2`` arithmetic) against the document."""
    if not (isinstance(value, str) and value.startswith("!ref ")):
        return value
    expression = value[len("!ref ") :].strip()
    whole = REF.fullmatch(expression)
    if whole:
        return lookup(document, whole.group(1).replace("[", ".").replace("]", ""))
    text = REF.sub(lambda m: repr(lookup(document, m.group(1))), expression)
    try:
        return _arithmetic(text)
    except (ValueError, SyntaxError):
        return text  # a path or string built from references: compared as text


def parse_cell(text: str) -> Any:
    """A table cell as a YAML value: ``0.0002``, ``[3, 3]``, ``null``; backticks removed."""
    text = text.strip().strip("`").strip()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == pytest.approx(b, rel=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def read_yaml(name: str) -> dict:
    """A shipped YAML as raw data; encoder-derived sizes set to the paper encoder's."""
    document = yaml.load((ROOT / name).read_text(encoding="utf-8"), Loader=RawLoader)
    pretrain = yaml.load((ROOT / PRETRAIN_YAML).read_text(encoding="utf-8"), Loader=RawLoader)
    from_encoder = {
        "d_model": lookup(pretrain, "context.d_model"),
        "num_hidden_states": lookup(pretrain, "context.num_layers") + 1,
    }
    for key, value in from_encoder.items():
        if isinstance(document.get(key), list):  # !apply:getattr [<pretrained>, key]
            document[key] = value
    return document


def protocol_rows() -> list[tuple[str, str, str, str, str]]:
    """``(yaml file, key path, authors' value, shipped value, note)`` for every table row."""
    rows, current = [], None
    for line in PROTOCOL.read_text(encoding="utf-8").splitlines():
        section = SECTION.match(line)
        if section:
            current = section.group(1)
            continue
        row = ROW.match(line)
        if row and current is not None:
            cells = [cell.strip() for cell in row.group(2).split("|")]
            if len(cells) != 3:
                raise ValueError(f"{PROTOCOL.name}: expected 4 columns in row {line!r}")
            rows.append((current, row.group(1), *cells))
    return rows


ROWS = protocol_rows()


def test_every_shipped_training_yaml_has_a_section():
    files = {row[0] for row in ROWS}
    shipped = {
        PRETRAIN_YAML, "hparams/asr_commonvoice/train.yaml",
        "hparams/slurp/train.yaml", "hparams/iemocap/train.yaml", "hparams/voxceleb/train.yaml",
    }
    assert shipped <= files
    for name in files:
        assert sum(row[0] == name for row in ROWS) >= 10, f"{name}: too few rows in the table"


@pytest.mark.parametrize(("yaml_file", "key", "authors", "shipped", "note"), ROWS,
                         ids=[f"{r[0].split('/')[1]}:{r[1]}" for r in ROWS])
def test_shipped_yaml_matches_protocol_table(yaml_file, key, authors, shipped, note):
    found = lookup(read_yaml(yaml_file), key)
    assert found is not MISSING, f"{yaml_file}: no key {key!r} (table row of {PROTOCOL.name})"
    assert same(found, parse_cell(shipped)), (
        f"{yaml_file}: {key} = {found!r}, but {PROTOCOL.name} says {shipped}"
    )
    if "deviation" not in note.lower():
        assert same(parse_cell(authors), parse_cell(shipped)), (
            f"{key}: the authors' value {authors} differs from the shipped {shipped}, and the "
            f"note of {PROTOCOL.name} declares no deviation"
        )


def test_lookup_resolves_references_and_arithmetic():
    document = yaml.load(
        "d: 768\nhead: !new:x.Y\n  size: !ref <d> * 2\n  dims: [!ref <d>, 3]\n", Loader=RawLoader
    )
    assert lookup(document, "head.size") == 1536
    assert lookup(document, "head.dims.0") == 768
    assert lookup(document, "head.missing") is MISSING
