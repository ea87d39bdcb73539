"""A module's architecture, read from the arguments it was built with.

Models are built in YAML with ``!new:`` (the one way to build them); the classes of this package
derive from :class:`RecordsArguments`, which keeps the arguments each instance received. From
those, :func:`describe` gives the architecture as plain data (class paths and arguments, nested
for module arguments), which is what a checkpoint stores (``architecture.ckpt``, JSON) and what
an export writes back as a ``hyperparams.yaml`` (:func:`to_yaml`). :func:`build` rebuilds a
module from such data, instantiating only ``torch.nn.Module`` classes of ``summarymixing``,
``speechbrain`` and ``torch.nn`` (never arbitrary callables: a crafted checkpoint cannot run
code). :func:`check_architecture` compares two descriptions key by key, leaving out the training
options (dropout, layer drop, ...) that do not change the weights' meaning, and names the first
key that differs.

Example
-------
>>> from summarymixing import ConformerEncoder
>>> encoder = ConformerEncoder(2, 16, 32, 4, kernel_size=3)
>>> flatten(describe(encoder))["num_layers"], flatten(describe(encoder))["attention_type"]
(2, 'SummaryMixing')
>>> rebuilt = build(describe(encoder))
>>> type(rebuilt).__name__, len(rebuilt.layers)
('ConformerEncoder', 2)
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

CLASS_KEY = "class"
NAME_KEY = "name"
BUILDABLE_PREFIXES = ("summarymixing.", "speechbrain.", "torch.nn.")


class RecordsArguments:
    """Mixin that stores the arguments an instance was constructed with in
    ``self.init_arguments`` (defaults filled in), for :func:`describe`.

    Subclasses list in ``TRAINING_OPTIONS`` the arguments that do not define the architecture
    (dropout rates, layer drop, memory options): :func:`check_architecture` ignores them.
    """

    TRAINING_OPTIONS: tuple[str, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any):
        instance = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(instance, *args, **kwargs)
        except TypeError:  # copy / unpickling: __dict__, arguments included, is restored after
            return instance
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        # Set before nn.Module.__init__ has run: bypass its __setattr__.
        object.__setattr__(instance, "init_arguments", arguments)
        return instance


def class_path(cls: type) -> str:
    """``module.Class`` of a class.

    Example
    -------
    >>> class_path(nn.GELU)
    'torch.nn.modules.activation.GELU'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe_value(value: Any, where: str) -> Any:
    if isinstance(value, RecordsArguments):
        return describe(value)
    if isinstance(value, type):
        return {NAME_KEY: class_path(value)}
    if isinstance(value, Mapping):
        return {str(k): _describe_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_describe_value(v, where) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(
        f"cannot describe argument {where!r} of type {type(value).__name__}: expected a "
        "module built from this package, a class, or plain data"
    )


def describe(module: RecordsArguments) -> dict[str, Any]:
    """The architecture of ``module`` as JSON-compatible data: ``{"class": path, <argument>:
    value, ...}``, module arguments described the same way, classes as ``{"name": path}``.

    Example
    -------
    >>> from summarymixing import TransformerEncoder
    >>> describe(TransformerEncoder(1, 8, 16, 2))["activation"]
    {'name': 'torch.nn.modules.activation.ReLU'}
    """
    if not isinstance(module, RecordsArguments):
        raise TypeError(
            f"cannot describe {type(module).__name__}: it does not record its arguments"
        )
    arguments = {
        key: _describe_value(value, key) for key, value in module.init_arguments.items()
    }
    return {CLASS_KEY: class_path(type(module)), **arguments}


def _import_class(path: str) -> type:
    if not path.startswith(BUILDABLE_PREFIXES):
        raise ValueError(
            f"refusing to build {path!r}: only classes of {', '.join(BUILDABLE_PREFIXES)} are built"
        )
    module_name, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot find the class {path!r}") from err
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"refusing to build {path!r}: not a torch.nn.Module class")
    return found


def _build_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        if CLASS_KEY in value:
            return build(value)
        if set(value) == {NAME_KEY}:
            return _import_class(value[NAME_KEY])
        return {key: _build_value(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_build_value(v) for v in value]
    return value


def build(description: Mapping[str, Any]) -> nn.Module:
    """The module described by :func:`describe`'s output (new weights).

    Raises
    ------
    ValueError
        For a class outside ``summarymixing``, ``speechbrain`` and ``torch.nn``, or one that is
        not a ``torch.nn.Module``.

    Example
    -------
    >>> build({"class": "builtins.print"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: refusing to build 'builtins.print': only classes of summarymixing., ... are built
    """
    cls = _import_class(description[CLASS_KEY])
    arguments = {
        key: _build_value(value) for key, value in description.items() if key != CLASS_KEY
    }
    return cls(**arguments)


def _training_options(description: Mapping[str, Any]) -> tuple[str, ...]:
    try:
        cls = _import_class(description[CLASS_KEY])
    except ValueError:
        return ()
    return getattr(cls, "TRAINING_OPTIONS", ())


def flatten(
    description: Mapping[str, Any], prefix: str = "", skipped: Sequence[str] = ()
) -> dict[str, Any]:
    """Dotted keys to values of a description, without the training options (``skipped``:
    more dotted keys to leave out, relative to ``description``).

    Example
    -------
    >>> flatten({"class": "x.Y", "a": 1, "b": {"class": "x.Z", "c": [1, 2]}})
    {'class': 'x.Y', 'a': 1, 'b.class': 'x.Z', 'b.c': [1, 2]}
    """
    if CLASS_KEY in description:
        skipped = (*skipped, *_training_options(description))
    flat: dict[str, Any] = {}
    for key, value in description.items():
        if key in skipped:
            continue
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and set(value) != {NAME_KEY}:
            within = [s.split(".", 1)[1] for s in skipped if s.startswith(f"{key}.")]
            flat.update(flatten(value, f"{dotted}.", within))
        elif isinstance(value, Mapping):
            flat[dotted] = value[NAME_KEY]
        else:
            flat[dotted] = value
    return flat


def check_architecture(
    expected: Mapping[str, Any], found: Mapping[str, Any], source: str
) -> None:
    """Raise ``ValueError`` naming the first architecture key whose value differs.

    Arguments
    ---------
    expected : mapping
        Either a full description (:func:`describe`; every key must match) or a flat mapping
        of a few keys, each matching every dotted key it equals or ends (``attention_type``
        matches ``context.attention_type``).
    found : mapping
        The description found (:func:`describe`).
    source : str
        Where ``found`` comes from, for the message.

    Example
    -------
    >>> stored = {"class": "a.W", "d_model": 16, "context": {"class": "a.C", "num_layers": 2}}
    >>> check_architecture({"num_layers": 2}, stored, "enc")
    >>> check_architecture({"num_layers": 12}, stored, "enc")
    Traceback (most recent call last):
    ...
    ValueError: architecture mismatch in enc for key 'context.num_layers': expected 12, found 2
    >>> check_architecture({"layers": 2}, stored, "enc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown architecture key 'layers' for enc; its keys are ['class', 'd_model', ...]
    """
    found_flat = flatten(found)
    if CLASS_KEY in expected:
        expected_flat = flatten(expected)
        for key in {**found_flat, **expected_flat}:
            if expected_flat.get(key, "<absent>") != found_flat.get(key, "<absent>"):
                raise ValueError(
                    f"architecture mismatch in {source} for key {key!r}: expected "
                    f"{expected_flat.get(key, '<absent>')!r}, found "
                    f"{found_flat.get(key, '<absent>')!r}"
                )
        return
    for key, value in expected.items():
        matches = [k for k in found_flat if k == key or k.endswith(f".{key}")]
        if not matches:
            raise ValueError(
                f"unknown architecture key {key!r} for {source}; its keys are {list(found_flat)}"
            )
        wanted = json.loads(json.dumps(_describe_value(value, key)))
        if isinstance(wanted, Mapping) and set(wanted) == {NAME_KEY}:
            wanted = wanted[NAME_KEY]
        for match in matches:
            if found_flat[match] != wanted:
                raise ValueError(
                    f"architecture mismatch in {source} for key {match!r}: expected "
                    f"{wanted!r}, found {found_flat[match]!r}"
                )


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value)


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    for key, item in value.items():
        if key == CLASS_KEY:
            continue
        if isinstance(item, Mapping) and CLASS_KEY in item:
            lines.append(f"{pad}{key}: !new:{item[CLASS_KEY]}")
            lines += _yaml_lines(item, indent + 4)
        elif isinstance(item, Mapping) and set(item) == {NAME_KEY}:
            lines.append(f"{pad}{key}: !name:{item[NAME_KEY]}")
        elif isinstance(item, Mapping):
            lines.append(f"{pad}{key}:" + ("" if item else " {}"))
            lines += _yaml_lines(item, indent + 4)
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(item)}")
    return lines


def to_yaml(description: Mapping[str, Any], name: str) -> str:
    """HyperPyYAML text defining ``name`` as the described module (``!new:`` / ``!name:``).

    Example
    -------
    >>> print(to_yaml({"class": "torch.nn.Linear", "in_features": 2, "out_features": 3}, "lin"))
    lin: !new:torch.nn.Linear
        in_features: 2
        out_features: 3
    """
    return "\n".join([f"{name}: !new:{description[CLASS_KEY]}", *_yaml_lines(description, 4)])
