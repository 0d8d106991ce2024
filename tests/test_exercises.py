import pytest
import torch

from leanformer.exercises import check


def package_version(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).to(torch.int8), scale


def stub(w):
    raise NotImplementedError("write it")


CASES = [(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)),),
         (torch.arange(1.0, 13.0).reshape(3, 4),)]


def test_a_right_answer_passes_and_the_line_says_what_passed():
    def mine(w):
        s = w.abs().max(dim=1, keepdim=True).values / 127
        return (w / s).round().to(torch.int8), s

    line = check(mine, package_version, CASES)
    assert "mine passed: all 2 cases agree with package_version" in line
    assert "not written" not in line


@pytest.mark.parametrize("wrong, message", [
    (lambda w: (torch.round(w / 0.1).to(torch.int8), w.abs().amax(1, keepdim=True) / 127),
     r"case 1 of 2: output\[0\]: \d+ of 32 values differ"),
    (lambda w: (torch.round(w).to(torch.int32), w.abs().amax(1, keepdim=True) / 127),
     r"output\[0\]: dtype torch.int32, expected torch.int8"),
    (lambda w: (package_version(w)[0].reshape(-1, 2), package_version(w)[1]),
     r"case 1 of 2: output\[0\]: shape \(16, 2\), expected \(4, 8\)"),
    (lambda w: package_version(w)[0], r"output: expected 2 values, got one value"),
    (lambda w: (package_version(w)[0], package_version(w)[1] * 1.01),
     r"output\[1\]: 4 of 4 values differ \(largest difference"),
])
def test_a_wrong_answer_fails_naming_the_case_and_the_part(wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong, package_version, CASES)


def test_a_stub_is_named_and_a_solution_stands_in_for_it():
    with pytest.raises(AssertionError, match="stub is not written yet"):
        check(stub, package_version, CASES)
    line = check(stub, package_version, CASES, solution=package_version)
    assert line.startswith("stub is not written yet, so the hidden solution stood in for it")
    assert "passed: all 2 cases" in line


def test_an_error_inside_the_function_is_reported_with_its_case():
    def broken(w):
        return w @ torch.ones(3, 3)

    with pytest.raises(AssertionError, match="case 1 of 2: .*broken raised RuntimeError"):
        check(broken, package_version, CASES)


def test_inputs_changed_in_place_do_not_reach_the_reference():
    def greedy(w):
        out = package_version(w)
        w.zero_()
        return out

    assert "passed" in check(greedy, package_version, CASES)
    assert CASES[0][0].abs().sum() > 0


def test_numbers_and_bad_cases():
    assert "passed" in check(lambda a, b: a + b, lambda a, b: b + a, [(1.0, 2.0), (3, 4)])
    with pytest.raises(AssertionError, match=r"output: 3, expected 7"):
        check(lambda a, b: a - b, lambda a, b: a + b, [(5, 2)])
    with pytest.raises(ValueError, match="at least one case"):
        check(stub, package_version, [])
    with pytest.raises(ValueError, match="tuple of positional arguments"):
        check(stub, package_version, [torch.ones(2, 2)])
