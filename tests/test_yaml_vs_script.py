"""Each YAML a recipe runs with defines every hyperparameter the recipe reads, and nothing else.

SpeechBrain checks its recipes with ``check_yaml_vs_script`` (``tests/utils/check_yaml.py`` of
its repository; not in the installed package, so its text-search helpers ``get_yaml_var`` and
``detect_script_vars`` cannot be imported here). Both directions are checked:

- :func:`missing_keys`: a key the script reads that the YAML lacks is a ``KeyError`` (or
  ``AttributeError``) at run time, possibly hours in;
- :func:`unused_keys` (SpeechBrain's direction): a key nothing reads is an option that looks
  like it does something and does not.

The script is parsed (``ast``), not searched, so that optional reads are told apart:

- required: ``hparams["key"]``, ``<obj>.hparams.key``, ``getattr(<obj>.hparams, "key")``;
- optional (the YAML may leave the key out): ``hparams.get("key", ...)``,
  ``getattr(<obj>.hparams, "key", default)``, and any read inside an ``if`` whose test checks
  the key first (``"key" in hparams``, ``hasattr(<obj>.hparams, "key")``);
- keys the script itself writes (``hparams["key"] = ...``) are not required of the YAML;
- ``hparams[f"{split}_csv"]`` and ``hparams[key]`` are expanded over the enclosing ``for`` or
  comprehension when it iterates over literal values; an f-string that cannot be expanded must
  match at least one YAML key; a plain name that cannot be resolved is reported as a warning.

The reads of a recipe are those of its script and of the project's Brain classes it subclasses
or instantiates with ``hparams=`` (and their project base classes, followed through the
``from summarymixing... import`` lines of each module). The files are read when the tests run,
so the check follows the recipes and YAMLs as they are edited.
"""

from __future__ import annotations

import ast
import itertools
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from speechbrain.utils.run_opts import RunOptions

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("summarymixing", "recipes")
SCRIPT_NAMES = ("train.py", "run.py")  # run.py: the demo, which reads hparams/demo/*.yaml


def recipe_scripts() -> list[Path]:
    """``recipes/<task>/train.py`` (or ``run.py``) of every recipe folder."""
    scripts = []
    for folder in sorted(p for p in (ROOT / "recipes").iterdir() if p.is_dir()):
        scripts += [folder / name for name in SCRIPT_NAMES if (folder / name).is_file()][:1]
    return scripts


def recipe_yamls(script: Path) -> list[Path]:
    """The YAMLs a recipe runs with: ``hparams/<task>/*.yaml`` for ``recipes/<task>/``."""
    return sorted((ROOT / "hparams" / script.parent.name).glob("*.yaml"))


PAIRS = [(script, hp) for script in recipe_scripts() for hp in recipe_yamls(script)]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def yaml_entries(path: Path) -> dict[str, str]:
    """``key -> tag`` of the top-level entries of a HyperPyYAML file; its tags are composed,
    never constructed (nothing is built or imported)."""
    with open(path, encoding="utf-8") as stream:
        node = yaml.compose(stream, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(node).__name__}")
    return {key.value: value.tag for key, value in node.value}


def yaml_keys(path: Path) -> set[str]:
    """The top-level keys of a HyperPyYAML file."""
    return set(yaml_entries(path))


@dataclass(frozen=True)
class Read:
    """One hyperparameter read: ``key`` is a regular expression when ``pattern`` is set."""

    key: str
    where: str
    optional: bool
    pattern: bool = False


def _is_dict(node: ast.AST) -> bool:
    """``hparams``: the dict the recipe loaded (``hparams["key"]``, ``hparams.get("key")``)."""
    return isinstance(node, ast.Name) and node.id == "hparams"


def _is_namespace(node: ast.AST) -> bool:
    """``<obj>.hparams``: a Brain's namespace of the same dict (``self.hparams.key``)."""
    return isinstance(node, ast.Attribute) and node.attr == "hparams"


def _string(node: ast.AST) -> str | None:
    """The value of a string literal; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _loop_bindings(target: ast.AST, iterable: ast.AST) -> dict[str, set[str]]:
    """Names bound to string constants by ``for <target> in <literal tuple/list/set>``."""
    if not isinstance(iterable, ast.Tuple | ast.List | ast.Set):
        return {}
    if isinstance(target, ast.Name):
        values = [_string(item) for item in iterable.elts]
        return {target.id: set(values)} if None not in values else {}
    if isinstance(target, ast.Tuple):
        bound: dict[str, set[str]] = {}
        for position, name in enumerate(target.elts):
            if not isinstance(name, ast.Name):
                continue
            values = [
                _string(item.elts[position])
                if isinstance(item, ast.Tuple) and len(item.elts) == len(target.elts)
                else None
                for item in iterable.elts
            ]
            if None not in values:
                bound[name.id] = set(values)
        return bound
    return {}


def _probes(test: ast.AST) -> tuple[set[str], set[str]]:
    """Keys an ``if`` test checks: (present in its body, absent from its body)."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return set().union(*(_probes(value)[0] for value in test.values)), set()
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        present, absent = _probes(test.operand)
        return absent, present
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.In | ast.NotIn)
        and (_is_dict(test.comparators[0]) or _is_namespace(test.comparators[0]))
        and _string(test.left) is not None
    ):
        key = {test.left.value}
        return (key, set()) if isinstance(test.ops[0], ast.In) else (set(), key)
    if (
        isinstance(test, ast.Call)
        and isinstance(test.func, ast.Name)
        and test.func.id == "hasattr"
        and len(test.args) == 2
        and _is_namespace(test.args[0])
        and _string(test.args[1]) is not None
    ):
        return {test.args[1].value}, set()
    return set(), set()


class ReadCollector(ast.NodeVisitor):
    """Collects the hyperparameter reads and writes of one module or class body."""

    def __init__(self, source: str):
        self.source = source
        self.reads: list[Read] = []
        self.written: set[str] = set()
        self.unresolved: list[str] = []
        self._bindings: list[dict[str, set[str]]] = []
        self._guards: list[set[str]] = []

    def _bound(self, name: str) -> set[str] | None:
        for scope in reversed(self._bindings):
            if name in scope:
                return scope[name]
        return None

    def _keys(self, node: ast.AST) -> tuple[set[str], bool] | None:
        """The keys ``node`` can hold, and whether they are patterns; None if unknown."""
        if _string(node) is not None:
            return {node.value}, False
        if isinstance(node, ast.Name):
            values = self._bound(node.id)
            return (values, False) if values else None
        if isinstance(node, ast.JoinedStr):
            parts, exact = [], True
            for value in node.values:
                if isinstance(value, ast.Constant):
                    parts.append([re.escape(value.value)])
                    continue
                values = None
                if isinstance(value.value, ast.Name) and value.format_spec is None:
                    values = self._bound(value.value.id)
                if values:
                    parts.append([re.escape(v) for v in sorted(values)])
                else:
                    parts.append([".+"])
                    exact = False
            keys = {"".join(combo) for combo in itertools.product(*parts)}
            if exact:
                return {re.sub(r"\\(.)", r"\1", key) for key in keys}, False
            return keys, True
        return None

    def _record(self, key_node: ast.AST, node: ast.AST, optional: bool, store: bool) -> None:
        where = f"{self.source}:{node.lineno}"
        found = self._keys(key_node)
        if found is None:
            self.unresolved.append(f"{where}: {ast.unparse(node)}")
            return
        keys, pattern = found
        if store:
            self.written |= keys
            return
        guarded = any(keys <= guard for guard in self._guards)
        for key in keys:
            self.reads.append(Read(key, where, optional or guarded, pattern))

    def _visit_with(self, nodes: list[ast.AST], guard: set[str]) -> None:
        self._guards.append(guard)
        for node in nodes:
            self.visit(node)
        self._guards.pop()

    def visit_If(self, node: ast.If | ast.IfExp) -> None:
        present, absent = _probes(node.test)
        self._visit_with([node.test], present)
        body = node.body if isinstance(node.body, list) else [node.body]
        orelse = node.orelse if isinstance(node.orelse, list) else [node.orelse]
        self._visit_with(body, present)
        self._visit_with(orelse, absent)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit_If(node)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self._bindings.append(_loop_bindings(node.target, node.iter))
        for child in [*node.body, *node.orelse]:
            self.visit(child)
        self._bindings.pop()

    def _visit_comprehension(self, node: ast.AST, elements: list[ast.AST]) -> None:
        pushed = 0
        for generator in node.generators:
            self.visit(generator.iter)
            self._bindings.append(_loop_bindings(generator.target, generator.iter))
            pushed += 1
            for condition in generator.ifs:
                self.visit(condition)
        for element in elements:
            self.visit(element)
        del self._bindings[len(self._bindings) - pushed :]

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_SetComp(self, node: ast.SetComp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._visit_comprehension(node, [node.key, node.value])

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _is_dict(node.value):
            self._record(node.slice, node, False, isinstance(node.ctx, ast.Store | ast.Del))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_namespace(node.value):
            key = ast.Constant(node.attr)
            self._record(key, node, False, isinstance(node.ctx, ast.Store | ast.Del))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and _is_dict(func.value):
            if node.args:
                self._record(node.args[0], node, True, False)
        elif isinstance(func, ast.Name) and len(node.args) >= 2 and _is_namespace(node.args[0]):
            if func.id == "getattr":
                self._record(node.args[1], node, len(node.args) >= 3, False)
            elif func.id == "setattr":
                self._record(node.args[1], node, False, True)
        self.generic_visit(node)


def _module_file(module: str) -> Path | None:
    """The file of a project module (``summarymixing.x.y``), without importing it."""
    if not module.startswith(PROJECT_PACKAGES):
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """``name -> module`` of the module's absolute ``from <module> import name`` lines."""
    return {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        for alias in node.names
    }


def _class_definition(module: str, name: str) -> tuple[Path, ast.Module, ast.ClassDef] | None:
    """Where project class ``name`` imported from ``module`` is defined, following
    re-exports (``from summarymixing.downstream import X`` of a package ``__init__``)."""
    path = _module_file(module)
    if path is None:
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return path, tree, node
    origin = _imported_names(tree).get(name)
    return _class_definition(origin, name) if origin else None


def _brain_classes(tree: ast.Module) -> set[str]:
    """Names a module subclasses or calls with ``hparams=`` (a Brain is built that way)."""
    names = {
        base.id
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for base in node.bases
        if isinstance(base, ast.Name)
    }
    names |= {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and any(keyword.arg == "hparams" for keyword in node.keywords)
    }
    return names


def _resolve(name: str, tree: ast.Module) -> tuple[Path, ast.Module, ast.ClassDef] | None:
    """Where the class ``name`` that module ``tree`` imports is defined, if it is a project
    class (:func:`_class_definition`)."""
    imports = _imported_names(tree)
    if name in imports:
        return _class_definition(imports[name], name)
    return None


def _class_reads(
    path: Path, module: ast.Module, definition: ast.ClassDef, seen: set[tuple[Path, str]]
) -> Iterator[ReadCollector]:
    """The reads of class ``definition`` (of ``module`` at ``path``) and of its project bases."""
    if (path, definition.name) in seen:
        return
    seen.add((path, definition.name))
    collector = ReadCollector(rel(path))
    collector.visit(definition)
    yield collector
    local = {n.name: n for n in module.body if isinstance(n, ast.ClassDef)}
    for base in definition.bases:
        if not isinstance(base, ast.Name):
            continue
        if base.id in local:
            yield from _class_reads(path, module, local[base.id], seen)
        elif (found := _resolve(base.id, module)) is not None:
            yield from _class_reads(*found, seen)


def _library_classes(tree: ast.Module) -> Iterator[ReadCollector]:
    """The reads of the project classes that module ``tree`` subclasses or builds a Brain
    with (:func:`_brain_classes`), and of their project base classes; SpeechBrain's own
    classes (``sb.Brain``) are not followed."""
    seen: set[tuple[Path, str]] = set()
    for name in sorted(_brain_classes(tree)):
        found = _resolve(name, tree)
        if found is not None:
            yield from _class_reads(*found, seen)


def script_reads(script: Path) -> list[ReadCollector]:
    """The reads of a recipe script and of the project Brain classes it uses."""
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    collector = ReadCollector(rel(script))
    collector.visit(tree)
    return [collector, *_library_classes(tree)]


def missing_keys(script: Path, hparams_file: Path) -> list[str]:
    """One message per required key that ``script`` reads and ``hparams_file`` lacks."""
    defined = yaml_keys(hparams_file)
    collectors = script_reads(script)
    written = set().union(*(c.written for c in collectors))
    for collector in collectors:
        for line in collector.unresolved:
            warnings.warn(f"{line}: hyperparameter key not resolvable, not checked", stacklevel=2)
    errors = []
    for read in (r for c in collectors for r in c.reads):
        if read.optional or read.key in written:
            continue
        if read.pattern:
            found = any(re.fullmatch(read.key, key) for key in defined)
        else:
            found = read.key in defined
        if not found:
            what = f"a key matching {read.key!r}" if read.pattern else f"key {read.key!r}"
            errors.append(
                f"{read.where} (run by {rel(script)}) reads {what}, "
                f"which {rel(hparams_file)} does not define"
            )
    return sorted(set(errors))


def unused_keys(script: Path, hparams_file: Path) -> list[str]:
    """SpeechBrain's ``check_yaml_vs_script`` direction: top-level keys of ``hparams_file`` that
    neither ``script`` (nor its Brain classes) reads nor another entry references.

    Not dead although unread: keys referenced as ``<key>`` / ``<key[...]>`` in the YAML, entries
    HyperPyYAML runs at load time (``!apply:``; SpeechBrain's helper skips them too), and, for a
    recipe that builds a Brain, SpeechBrain's run options (``sb.Brain`` reads them from the
    YAML when they are not given on the command line).
    """
    collectors = script_reads(script)
    read = {r.key for c in collectors for r in c.reads if not r.pattern}
    patterns = [r.key for c in collectors for r in c.reads if r.pattern]
    referenced = set(re.findall(r"<(\w+)[^>]*>", hparams_file.read_text(encoding="utf-8")))
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    if _brain_classes(tree):
        referenced |= set(RunOptions().as_dict())
    return sorted(
        f"{rel(hparams_file)}: {key!r} is read by neither {rel(script)} nor its Brain classes, "
        "nor referenced in the YAML"
        for key, tag in yaml_entries(hparams_file).items()
        if key not in read
        and key not in referenced
        and not tag.startswith("!apply:")
        and not any(re.fullmatch(pattern, key) for pattern in patterns)
    )


def test_every_recipe_has_yamls():
    scripts = recipe_scripts()
    assert {s.parent.name for s in scripts} >= {
        "pretrain",
        "asr_commonvoice",
        "slurp",
        "iemocap",
        "voxceleb",
    }
    for script in scripts:
        assert recipe_yamls(script), f"{rel(script)}: no YAML under hparams/{script.parent.name}/"


@pytest.mark.parametrize(
    ("script", "hparams_file"),
    PAIRS,
    ids=[f"{s.parent.name}:{h.name}" for s, h in PAIRS],
)
def test_yaml_defines_every_key_the_recipe_reads(script: Path, hparams_file: Path):
    assert missing_keys(script, hparams_file) == []


@pytest.mark.parametrize(
    ("script", "hparams_file"),
    PAIRS,
    ids=[f"{s.parent.name}:{h.name}" for s, h in PAIRS],
)
def test_yaml_has_no_unused_key(script: Path, hparams_file: Path):
    assert unused_keys(script, hparams_file) == []


def test_reads_of_the_brain_base_classes_are_included():
    sources = {c.source for c in script_reads(ROOT / "recipes" / "pretrain" / "train.py")}
    assert any(source.startswith("summarymixing/") for source in sources), sources


def _drop_top_level_key(text: str, key: str) -> str:
    """``text`` without the entry ``key:`` (its line and its indented continuation lines)."""
    lines, kept, skipping = text.splitlines(keepends=True), [], False
    for line in lines:
        if re.match(rf"{re.escape(key)}\s*:", line):
            skipping = True
            continue
        if skipping and (line[:1] in (" ", "\t", "-") or not line.strip()):
            continue
        skipping = False
        kept.append(line)
    return "".join(kept)


@pytest.mark.parametrize("script", recipe_scripts(), ids=lambda s: s.parent.name)
def test_a_key_removed_from_a_yaml_is_reported(script: Path, tmp_path: Path):
    """Remove, from a copy of the recipe's first YAML, a key the recipe requires."""
    hparams_file = recipe_yamls(script)[0]
    defined = yaml_keys(hparams_file)
    required = sorted(
        {
            r.key
            for c in script_reads(script)
            for r in c.reads
            if not r.optional and not r.pattern and r.key in defined
        }
    )
    assert required, f"{rel(script)} reads no key of {rel(hparams_file)}"
    key = required[0]
    copy = tmp_path / hparams_file.name
    copy.write_text(_drop_top_level_key(hparams_file.read_text(encoding="utf-8"), key))
    assert key not in yaml_keys(copy)
    errors = missing_keys(script, copy)
    assert errors, f"removing {key!r} from a copy of {rel(hparams_file)} went unnoticed"
    assert all(str(copy) in e and rel(script) in e for e in errors)
    assert any(f"key {key!r}" in e for e in errors)


def _reads_of(source: str, yaml_text: str, tmp_path: Path) -> list[str]:
    script, hparams_file = tmp_path / "train.py", tmp_path / "h.yaml"
    script.write_text(source)
    hparams_file.write_text(yaml_text)
    return missing_keys(script, hparams_file)


def test_required_and_optional_reads(tmp_path: Path):
    source = """
class B:
    def f(self):
        a = self.hparams.lr
        b = getattr(self.hparams, "weights", None)
        c = getattr(self.hparams, "steps")
        if hasattr(self.hparams, "extra") and self.hparams.extra:
            d = self.hparams.extra, self.hparams.epochs

def main(hparams):
    hparams["written"] = 1
    x = hparams["written"], hparams.get("maybe"), hparams["data_folder"]
    v = hparams["cache"] if "cache" in hparams else None
    if "seed" not in hparams:
        u = hparams["seed_default"]
    else:
        u = hparams["seed"]
    y = {s: hparams[f"{s}_csv"] for s in ("train", "test")}
    for key, _ in (("min_duration", 1), ("max_duration", 2)):
        z = hparams[key]
    w = hparams[f"{x}_opts"]
"""
    errors = _reads_of(source, "lr: 1\ntrain_csv: a\n", tmp_path)
    missing = sorted(re.search(r"reads (.*), which", e).group(1) for e in errors)
    assert missing == [
        "a key matching '.+_opts'",
        "key 'data_folder'",
        "key 'epochs'",
        "key 'max_duration'",
        "key 'min_duration'",
        "key 'seed_default'",
        "key 'steps'",
        "key 'test_csv'",
    ]
    assert all(f"{tmp_path / 'train.py'}:" in e for e in errors)
    complete = ["lr", "steps", "data_folder", "train_csv", "test_csv", "min_duration"]
    complete += ["max_duration", "valid_opts", "epochs", "seed_default"]
    assert _reads_of(source, "".join(f"{key}: 1\n" for key in complete), tmp_path) == []


def test_unused_keys(tmp_path: Path):
    script, hparams_file = tmp_path / "train.py", tmp_path / "h.yaml"
    script.write_text('def main(hparams):\n    return hparams["folder"], hparams.get("extra")\n')
    hparams_file.write_text(
        "seed: 1\nfolder: !ref out/<seed>\nextra: 2\nstale: 3\n"
        "__set_seed: !apply:torch.manual_seed [!ref <seed>]\nprecision: fp32\n"
    )
    errors = unused_keys(script, hparams_file)
    # precision: a SpeechBrain run option, but this script builds no Brain that would read it
    assert [re.search(r"'(\w+)' is read by", e).group(1) for e in errors] == ["precision", "stale"]
    assert all(e.startswith(f"{hparams_file}: ") and str(script) in e for e in errors)
