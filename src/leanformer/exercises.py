"""Exercises that check themselves: the learner's function is called on the same inputs
as the package's version, and the answer says at once what agrees or what differs.

    def my_quantize(w): ...                          # the learner's cell
    print(check(my_quantize, package_version, [(w,), (w2,)]))

``check`` compares what the two return: tensors (dtype, shape and values: integers
exactly, floats within a tolerance), numbers, strings, and tuples or lists of these.
A function still left as its stub (it raises NotImplementedError) fails with a message
that says so; given a ``solution``, ``check`` tests that in its place and says it
did, so that a lesson run top to bottom shows the checker passing without overwriting
the learner's own cell.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _copy(value: Any) -> Any:
    """A fresh copy of every tensor in ``value``: a function that changes its inputs in
    place must not change what the other one is given."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value


def _differs(got: Any, want: Any, rtol: float, atol: float, where: str) -> str | None:
    """Why ``got`` differs from ``want`` (naming the part, ``where``), or None."""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{where}: expected a tensor, got {type(got).__name__}"
        if got.dtype != want.dtype:
            return f"{where}: dtype {got.dtype}, expected {want.dtype}"
        if got.shape != want.shape:
            return f"{where}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if not want.is_floating_point():
            wrong = (got != want).sum().item()
            if wrong:
                return f"{where}: {wrong:,} of {want.numel():,} values differ"
            return None
        close = torch.isclose(got.float(), want.float(), rtol=rtol, atol=atol)
        if bool(close.all()):
            return None
        worst = (got.float() - want.float()).abs().max().item()
        return (f"{where}: {int((~close).sum()):,} of {want.numel():,} values differ "
                f"(largest difference {worst:.3g}; tolerance {atol:g} + {rtol:g} "
                "x |expected|)")
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            n = f"{len(got)} values" if isinstance(got, (tuple, list)) else "one value"
            return f"{where}: expected {len(want)} values, got {n}"
        for i, (g, w) in enumerate(zip(got, want)):
            if (why := _differs(g, w, rtol, atol, f"{where}[{i}]")) is not None:
                return why
        return None
    if isinstance(want, float) and isinstance(got, (int, float)):
        ok = math.isclose(got, want, rel_tol=rtol, abs_tol=atol)
        return None if ok else f"{where}: {got!r}, expected {want!r}"
    return None if got == want else f"{where}: {got!r}, expected {want!r}"


def check(fn: Callable[..., Any], reference: Callable[..., Any],
          cases: Sequence[tuple[Any, ...]], *,
          solution: Callable[..., Any] | None = None,
          rtol: float = 1e-6, atol: float = 1e-7) -> str:
    """Call ``fn`` and ``reference`` on every case (a tuple of positional arguments) and
    compare what they return (see the module's docstring). Returns one line that says
    what passed. Raises AssertionError naming the first case and the part of the output
    that differs, or saying that ``fn`` is not written yet (it raises
    NotImplementedError) when no ``solution`` is given to stand in for it."""
    if not cases:
        raise ValueError("check needs at least one case: a tuple of arguments")
    if any(not isinstance(case, tuple) for case in cases):
        raise ValueError("each case is a tuple of positional arguments, such as (w,)")
    tried, note = fn, ""
    try:
        tried(*_copy(cases[0]))
    except NotImplementedError:
        if solution is None:
            raise AssertionError(f"{_name(fn)} is not written yet: replace its "
                                 "`raise NotImplementedError` with your code") from None
        tried = solution
        note = f"{_name(fn)} is not written yet, so the hidden solution stood in for it. "
    except Exception:  # noqa: BLE001 - any other failure is reported case by case below
        pass
    for i, case in enumerate(cases, 1):
        want = reference(*_copy(case))
        try:
            got = tried(*_copy(case))
        except Exception as e:
            raise AssertionError(f"case {i} of {len(cases)}: {_name(tried)} raised "
                                 f"{type(e).__name__}: {e}") from e
        if (why := _differs(got, want, rtol, atol, "output")) is not None:
            raise AssertionError(f"case {i} of {len(cases)}: {why} (compared with "
                                 f"{_name(reference)})")
    return (f"{note}{_name(tried)} passed: all {len(cases)} cases agree with "
            f"{_name(reference)} (dtypes, shapes and values).")
