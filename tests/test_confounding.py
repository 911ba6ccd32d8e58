"""The source shortcut a dataset builds in, read from its originals per source and class."""

from cxr_core.confounding import find_confounding


def table(**sources: dict) -> dict:
    return {source: {"normal": 0, "pneumonia": 0, "covid19": 0, **classes} for source, classes in sources.items()}


def test_real_cxr_covid19_is_isolated_and_normal_vs_pneumonia_is_not_flagged():
    found = find_confounding(table(**{"nih-chestxray8": {"normal": 499, "pneumonia": 500},
                                      "ieee8023-covid": {"covid19": 124}}))
    assert found.isolated_classes == {"covid19": ("ieee8023-covid",)}
    assert found.single_source_classes == {} and found.separated_pairs == ()
    assert found.warnings() == ["covid19 comes only from ieee8023-covid, which holds no other class: covid19 vs the "
                                "rest can be learnt from the source; only within-source figures show what the "
                                "model reads"]


def test_the_seed_design_flags_covid19_from_one_mixed_source():
    found = find_confounding(table(rsna={"normal": 800, "pneumonia": 600},
                                   covid={"normal": 10, "pneumonia": 40, "covid19": 155}))
    assert found.isolated_classes == {} and found.separated_pairs == ()
    assert found.single_source_classes == {"covid19": "covid"}
    assert found.warnings()[0].startswith("covid19 comes only from covid: no image from another source is covid19")


def test_classes_that_never_share_a_source_are_a_separated_pair():
    found = find_confounding(table(a={"normal": 5, "pneumonia": 5}, b={"pneumonia": 5, "covid19": 5},
                                   c={"covid19": 3, "pneumonia": 1}))
    assert found.isolated_classes == {} and found.single_source_classes == {"normal": "a"}
    assert found.separated_pairs == (("normal", "covid19"),)
    assert "normal and covid19 never share a source" in found.warnings()[-1]


def test_one_source_or_sources_with_every_class_flag_nothing():
    assert find_confounding(table(csv={"normal": 3, "pneumonia": 2, "covid19": 1})).warnings() == []
    balanced = table(a={"normal": 3, "pneumonia": 2, "covid19": 1}, b={"normal": 1, "pneumonia": 1, "covid19": 1})
    assert find_confounding(balanced).warnings() == []
    assert find_confounding(balanced).to_json()["warnings"] == []
