"""The one registry type behind the methods and the added criteria (e2mc.registry)."""
import pytest

from e2mc.criteria import criterion_names, get_criterion
from e2mc.errors import UserError
from e2mc.methods import get_method, method_names
from e2mc.registry import Registry


class Named:
    def __init__(self, name):
        self.name = name


def test_a_registry_keeps_the_order_added_and_refuses_a_second_entry_of_a_name():
    registry = Registry("widget", [Named("b"), Named("a")])
    c = registry.add(Named("c"))
    assert registry.names() == ("b", "a", "c") and registry.get("c") is c
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        registry.add(Named("a"))
    assert registry.remove("b").name == "b" and registry.names() == ("a", "c")
    with pytest.raises(ValueError, match="widget 'b' is not registered"):
        registry.remove("b")


@pytest.mark.parametrize("name", ["nope", ["a", "list"]])  # a list: what a YAML file can put there
def test_an_unknown_name_is_one_user_error_naming_the_choices(name):
    with pytest.raises(UserError, match=r"^unknown widget .*; choose one of a, c$"):
        Registry("widget", [Named("a"), Named("c")]).get(name)


def test_methods_and_criteria_answer_from_their_registries():
    assert method_names()[:3] == ("vicreg", "swav", "simsiam")
    assert criterion_names() == ("none", "e2mc", "uniformity", "mmcr", "vc")
    assert get_method("swav").name == "swav" and get_criterion("mmcr").takes_all_crops
    for lookup, kind in ((get_method, "method"), (get_criterion, "criterion")):
        with pytest.raises(UserError, match=f"^unknown {kind} 'x'; choose one of "):
            lookup("x")
