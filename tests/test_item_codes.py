"""Item error codes are declared once (issue 12): ``contract.ITEM_CODES``, each code with its meaning.

From that one declaration:

- every code a module of ``hermes_worker`` or ``hermes_producer`` raises or puts in an error
  record, as a literal or through a constant, is declared, and every declared code is raised
  somewhere (the engine cannot import the contract: its codes are literals, checked here);
- the README's table of codes is generated from it (``python -m hermes_worker.settings_docs
  --update README.md``);
- a request naming any other code is refused (tests/test_wire.py, tests/test_hostile_broker.py).

A new code is one ``_item_code(...)`` line in contract.py and the raise that uses it.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.contract import ERROR_CODES, ITEM_CODES
from hermes_worker.settings_docs import codes_table, update_readme

from .support.environment import REPO

PACKAGES = ("hermes_worker", "hermes_producer")
# What a code looks like (two lowercase words at least): what tells a (code, message) pair from
# other pairs of strings, such as ("image", "sha256:" + digest).
CODE_SHAPE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
# contract.py's declaration takes a code and raises none; an __init__ counts as its class.
NOT_TAKERS = ("_item_code", "__init__")
_DYNAMIC = object()  # a code passed along in a variable: its origin is a site of its own


def _modules(root: Path, packages: tuple[str, ...]) -> Iterator[tuple[str, ast.Module]]:
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, ast.parse(path.read_text(encoding="utf-8"))


def _base_names(node: ast.ClassDef) -> list[str]:
    return [
        base.id if isinstance(base, ast.Name) else base.attr
        for base in node.bases
        if isinstance(base, ast.Name | ast.Attribute)
    ]


def _code_position(params: list[tuple[str, ast.expr | None]]) -> int | None:
    """Where ``code`` is among ``(name, annotation)`` parameters, unless it is not a string (an exit code)."""
    for position, (name, annotation) in enumerate(params):
        if name == "code" and (annotation is None or re.search(r"\b(str|Any)\b", ast.unparse(annotation))):
            return position
    return None


def code_takers(trees: list[ast.Module]) -> dict[str, int]:
    """Every callable whose parameter (or dataclass field) ``code`` is a string -> that argument's position.

    A class without an ``__init__`` of its own takes its code where its base does. Not the
    declaration itself (contract's ``_item_code``), nor ``fail(message, code: int)``.
    """
    takers: dict[str, int] = {}
    classes: dict[str, ast.ClassDef] = {}
    for tree in trees:
        for node in ast.walk(tree):
            params: list[tuple[str, ast.expr | None]]
            if isinstance(node, ast.ClassDef):
                classes[node.name] = node
                init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
                if init is not None:
                    params = [(arg.arg, arg.annotation) for arg in init.args.posonlyargs + init.args.args][1:]
                else:  # a dataclass's fields, in order
                    params = [
                        (field.target.id, field.annotation)
                        for field in node.body
                        if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    ]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name not in NOT_TAKERS:
                params = [(arg.arg, arg.annotation) for arg in node.args.posonlyargs + node.args.args]
                params = params[1:] if params[:1] and params[0][0] in ("self", "cls") else params
            else:
                continue
            position = _code_position(params)
            if position is not None:
                takers[node.name] = position
    grown = True
    while grown:
        grown = False
        for name, node in classes.items():
            has_init = any(isinstance(f, ast.FunctionDef) and f.name == "__init__" for f in node.body)
            base = next((b for b in _base_names(node) if b in takers), None)
            if name not in takers and not has_init and base is not None:
                takers[name], grown = takers[base], True
    return takers


def code_sites(tree: ast.Module, takers: dict[str, int]) -> Iterator[tuple[int, ast.expr, bool]]:
    """``(line, expression, strict)`` of every place ``tree`` names an item error code.

    Strict: the code given to a callable that takes one (``ItemError``, ``ItemFailure``,
    ``failed_chunk_result``...) or to ``super().__init__`` in a subclass of one; whatever it is,
    it must be declared. Not strict, counted only if its value looks like a code: what is assigned
    to a variable ``code`` (a metric's label "unknown" is not one), the first of a
    ``(code, message)`` pair (a code-shaped literal or an UPPER_CASE constant, then a message
    built from values). Both arms of ``a if c else b``.
    """
    found: list[tuple[int, ast.expr, bool]] = []
    for cls in [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]:
        base = next((name for name in _base_names(cls) if name in takers), None)
        for call in ast.walk(cls) if base is not None else ():
            if _is_super_init(call) and len(call.args) > takers[base]:
                found.append((call.lineno, call.args[takers[base]], True))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name not in takers:
                continue
            if len(node.args) > takers[name] and not any(isinstance(arg, ast.Starred) for arg in node.args):
                found.append((node.lineno, node.args[takers[name]], True))
            found.extend((node.lineno, keyword.value, True) for keyword in node.keywords if keyword.arg == "code")
        elif isinstance(node, ast.Assign) and [ast.unparse(target) for target in node.targets] == ["code"]:
            found.append((node.lineno, node.value, False))
        elif isinstance(node, ast.Tuple | ast.List) and len(node.elts) == 2:
            first, message = node.elts
            literal = (
                isinstance(first, ast.Constant) and isinstance(first.value, str) and CODE_SHAPE.fullmatch(first.value)
            )
            constant = isinstance(first, ast.Name | ast.Attribute) and ast.unparse(first).split(".")[-1].isupper()
            if (literal or constant) and isinstance(message, ast.JoinedStr | ast.BinOp | ast.Name | ast.Attribute):
                found.append((node.lineno, first, False))
    for line, expression, strict in found:
        yield from ((line, arm, strict) for arm in _arms(expression))


def _arms(expression: ast.expr) -> Iterator[ast.expr]:
    if isinstance(expression, ast.IfExp):
        yield from _arms(expression.body)
        yield from _arms(expression.orelse)
    else:
        yield expression


def _is_super_init(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "__init__"
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "super"
    )


def _resolve(expression: ast.expr, namespace: dict[str, Any]) -> object:
    """The value of a literal or of a module-level name (``X``, ``contract.X``), else :data:`_DYNAMIC`."""
    if isinstance(expression, ast.Constant):
        return expression.value
    if isinstance(expression, ast.Name):
        return namespace.get(expression.id, _DYNAMIC)
    if isinstance(expression, ast.Attribute):
        owner = _resolve(expression.value, namespace)
        return _DYNAMIC if owner is _DYNAMIC else getattr(owner, expression.attr, _DYNAMIC)
    return _DYNAMIC


def raised_codes(root: Path, packages: tuple[str, ...]) -> dict[str, list[str]]:
    """Every code the modules of ``packages`` under ``root`` raise -> where (``module:line``)."""
    modules = list(_modules(root, packages))
    takers = code_takers([tree for _, tree in modules])
    found: dict[str, list[str]] = {}
    for name, tree in modules:
        sites = list(code_sites(tree, takers))
        # Names are looked up in the module itself, imported only when one of its sites has a name.
        named = any(not isinstance(expression, ast.Constant) for _, expression, _ in sites)
        namespace = vars(importlib.import_module(name)) if named else {}
        for line, expression, strict in sites:
            value = _resolve(expression, namespace)
            if value is _DYNAMIC or not (strict or (isinstance(value, str) and CODE_SHAPE.fullmatch(value))):
                continue
            found.setdefault(value if isinstance(value, str) else repr(value), []).append(f"{name}:{line}")
    return {
        code: sorted(where, key=lambda at: (at.split(":")[0], int(at.split(":")[1]))) for code, where in found.items()
    }


# -- the declaration ---------------------------------------------------------------------------


def test_every_code_a_module_raises_is_declared_and_every_declared_code_is_raised() -> None:
    found = raised_codes(REPO, PACKAGES)
    undeclared = {code: where for code, where in found.items() if code not in ITEM_CODES}
    assert undeclared == {}, "declare each in hermes_worker/contract.py with _item_code(code, meaning)"
    assert set(ITEM_CODES) - set(found) == set(), "declared, but nothing raises it"
    # The engine's literals are among what was found: the engine cannot import the contract.
    assert any(where.startswith("hermes_worker.engine.validate:") for where in found["nul_byte"])
    assert any(where.startswith("hermes_worker.engine.budget:") for where in found["too_slow"])


def test_the_scanner_finds_every_way_of_raising_a_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a package that raises codes in each way Hermes does, one of them under a constant
    package = tmp_path / "planted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text(
        "class ItemError(Exception):\n"
        "    def __init__(self, code, message, item_id=None):\n"
        "        self.code = code\n"
        "class Slow(ItemError):\n"
        "    def __init__(self, seconds):\n"
        "        super().__init__('planted_super', f'took {seconds}')\n"
        "class Narrow(ItemError):\n"
        "    pass\n"
    )
    (package / "raisers.py").write_text(
        "from .errors import ItemError, Narrow\n"
        "PLANTED = 'planted_constant'\n"
        "def failed(payload, code, message):\n"
        "    return [code, message]\n"
        "def check(text, code):\n"
        "    raise ItemError('planted_literal', 'm')\n"
        "    raise ItemError(PLANTED, 'm')\n"
        "    raise ItemError(message='m', code='planted_keyword')\n"
        "    raise Narrow('planted_subclass', 'm')\n"
        "    raise ItemError(code, 'passed along: its origin is a site of its own')\n"
        "    failed({}, 'planted_call', text)\n"
        "    return ('planted_pair', f'line {text}'), ('profile', 'prompt'), ('not a code', text)\n"
        "def exit_with(message, code: int = 2):\n"
        "    exit_with('an exit code is no item code', 3)\n"
        "    code = PLANTED if message else 'planted_arm'\n"
        "    code = 'unknown'  # not shaped as a code: a label of its own\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        # When its codes are gathered
        found = raised_codes(tmp_path, ("planted",))
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "planted"]:
            del sys.modules[name]
    # Then each is found where it is raised, and nothing else is
    assert found == {
        "planted_super": ["planted.errors:6"],
        "planted_literal": ["planted.raisers:6"],
        "planted_constant": ["planted.raisers:7", "planted.raisers:15"],
        "planted_keyword": ["planted.raisers:8"],
        "planted_subclass": ["planted.raisers:9"],
        "planted_call": ["planted.raisers:11"],
        "planted_pair": ["planted.raisers:12"],
        "planted_arm": ["planted.raisers:15"],
    }


def test_each_code_is_snake_case_with_a_one_line_meaning() -> None:
    assert set(ITEM_CODES) == ERROR_CODES
    for code, meaning in ITEM_CODES.items():
        assert CODE_SHAPE.fullmatch(code), f"{code!r}: a code is lowercase words joined by '_', two at least"
        assert meaning and "\n" not in meaning and "|" not in meaning, code


# -- what is generated -------------------------------------------------------------------------


def test_the_readme_lists_every_code_with_its_meaning() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert codes_table() in readme, "run: python -m hermes_worker.settings_docs --update README.md"
    assert readme == update_readme(readme), "run: python -m hermes_worker.settings_docs --update README.md"
    for code, meaning in ITEM_CODES.items():
        assert f"| `{code}` | {meaning} |" in readme, code
