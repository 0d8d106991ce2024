"""What in an exported program file (``.pt2``) could run code when ``torch.export.load`` reads
it: such a file is refused before torch sees it (``load_program``). (A ``.pt`` file is read with
``weights_only=True`` instead, in ``saving``.)"""
from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError


# torch.export.load is not a safe loader: it unpickles some entries without weights_only, hands
# the symbolic shapes to sympy (which evaluates them as Python), compiles the program's guard code
# and resolves every graph node's target by name under ``torch``. The exported programs that
# save_quantized writes need none of that beyond plain tensors, ``torch.ops`` operators and shape
# symbols, so an archive with anything else is refused before torch sees it.
_SAFE_TARGET = re.compile(r"torch\.ops(\.[A-Za-z][A-Za-z0-9_]*){2,3}"
                          r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|eq|ne|lt|le|gt|ge)")
_SAFE_EXPR_WORDS = {"Symbol", "Integer", "positive", "integer", "True", "False", "Mul", "Add", "Max",
                    "Min", "Mod", "FloorDiv", "CeilDiv", "CleanDiv", "PythonMod", "IntTrueDiv"}


def _safe_expression(text: object) -> bool:
    """Whether ``text`` is a shape expression that sympy can evaluate without running anything
    but sympy's arithmetic: shape symbols (s0, u3), integers, operators and the functions in
    ``_SAFE_EXPR_WORDS``; no attributes, no subscripts, no other names."""
    if not isinstance(text, str):
        return False
    bare = re.sub(r"'[a-z]+[0-9]+'", "", text)  # a symbol's quoted name: Symbol('s77', ...)
    if not re.fullmatch(r"[A-Za-z0-9_+\-*/%(), =<>]*", bare):
        return False
    return all(w in _SAFE_EXPR_WORDS or re.fullmatch(r"[a-z]+[0-9]+", w)
               for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare))


def _json_values(tree: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a parsed JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                yield v
            yield from _json_values(v, key)
    elif isinstance(tree, list):
        for v in tree:
            yield from _json_values(v, key)


def _refuse_code_in_program(path: Path, blob: bytes) -> None:
    """Raise ``CheckpointError`` unless the ``.pt2`` archive in ``blob`` holds only what an
    exported int8 program needs (see ``_SAFE_TARGET``): nothing in it may run as code."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            problem = _code_in_program(archive)
    except (zipfile.BadZipFile, ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable exported program ({type(e).__name__}: {e}).") from None
    if problem:
        raise CheckpointError(f"{path} holds {problem}, which could run code when torch.export.load reads "
                              "it; the file was not loaded. save_quantized writes exported programs without "
                              "any: re-export the model with pt2e_quantize and save it with save_quantized.")


def load_program(path: Path, blob: bytes) -> torch.export.ExportedProgram:
    """The exported program in ``blob`` (the bytes of the file ``path``), read by
    ``torch.export.load`` only once ``_refuse_code_in_program`` has passed it; a file torch
    cannot read is a ``CheckpointError`` too."""
    _refuse_code_in_program(path, blob)
    try:
        return torch.export.load(io.BytesIO(blob))
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable exported program "
                              f"({type(e).__name__}: {e}).") from None


def _code_in_program(archive: zipfile.ZipFile) -> str | None:
    """What in a ``.pt2`` archive could run code when loaded, in words; None if nothing."""
    for name in archive.namelist():
        folder, file = f"/{name}".rsplit("/", 1)
        if folder.endswith(("/data/weights", "/data/constants")) and file.endswith("_config.json"):
            for fqn, entry in json.loads(archive.read(name)).get("config", {}).items():
                if entry.get("use_pickle") or not str(entry.get("path_name")).startswith(("weight_", "tensor_")):
                    return f"a pickled object or tensor ({fqn})"
        elif file.endswith(".json"):  # the program: models/model.json (or an older layout's name)
            problem = _code_in_graph(json.loads(archive.read(name)))
            if problem:
                return problem
        elif folder.endswith("/data/sample_inputs"):
            try:  # torch.export.load retries a failed weights_only read without it
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:
                return f"example inputs that only a full unpickler reads ({name})"
        elif file.endswith((".pt", ".pkl")):  # pickled tensors of an older layout, read without weights_only
            return f"a pickled file ({name})"
    return None


def _code_in_graph(program: Any) -> str | None:
    """What in a serialized program (parsed JSON) could run code, in words; None if nothing."""
    if not isinstance(program, dict):
        return None
    if any(program.get("guards_code") or []):
        return "guard code"
    for target in _json_values(program, "target"):
        if not (isinstance(target, str) and _SAFE_TARGET.fullmatch(target)):
            return f"a graph node that calls {target!r}, not a torch.ops operator"
    for expr in _json_values(program, "expr_str"):
        if not _safe_expression(expr):
            return f"a shape expression that is not plain arithmetic ({expr!r})"
    return None
