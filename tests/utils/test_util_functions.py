"""aitoolbox.utils.util: function helpers of the original aitoolbox."""
import torch

from aitoolbox.utils import util


class Source:
    def my_fn(self):
        return f"value: {self.attribute_val}"

    def calls_other(self):
        return self.other("x")


class Target:
    def __init__(self, fn):
        self.fn = fn
        self.attribute_val = "target's"

    def call(self):
        return self.fn(self)

    def other(self, value):
        return f"other {value}"


def test_function_exists():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1)
    assert util.function_exists(opt, "zero_grad") and util.function_exists(opt, "state_dict")
    assert not util.function_exists(opt, "missing_fn")
    assert not util.function_exists(opt, "defaults")  # an attribute, not a function


def test_copy_function_runs_on_another_object():
    copied = util.copy_function(Source().my_fn)
    assert copied is not Source.my_fn and copied.__name__ == "my_fn"
    assert Target(copied).call() == "value: target's"
    assert Target(util.copy_function(Source().calls_other)).call() == "other x"


def test_is_empty_function():
    def empty():
        pass

    def empty_doc():
        """Only a docstring.

        Returns:
        """
        pass

    def returns_value():
        return "value"

    def prints():
        print("a")

    def add(a, b):
        return a + b

    class Obj:
        def empty(self):
            pass

        def full(self):
            return self

    assert util.is_empty_function(empty) and util.is_empty_function(empty_doc)
    assert util.is_empty_function(lambda: None) and util.is_empty_function(Obj().empty)
    for fn in (returns_value, prints, add, Obj().full):
        assert not util.is_empty_function(fn), fn


def test_flatten_list_of_lists():
    assert util.flatten_list_of_lists([[1, 2, 3], [4, 5], [3]]) == [1, 2, 3, 4, 5, 3]
    assert util.flatten_list_of_lists([[[1], [2]], [[3]]]) == [[1], [2], [3]]
    assert util.flatten_list_of_lists(None) is None
