"""The registry builds every model by name and rejects bad names with the valid choices."""

from __future__ import annotations

import pytest

from seg_perception.models import ModelConfigError, build_model, list_models

EXPECTED = {
    "regseg": ("exp48_decoder26", {"exp48_decoder26", "exp53_decoder29"}),
    "deeplabv3plus": ("resnet101", {"resnet101", "mobilenetv2"}),
    "refinenet": ("resnet101", {"resnet101"}),
    "deeplabv1": ("largefov", {"largefov"}),
    "hrnet_ocr": ("w48", {"w48"}),
}


def test_registry_names_variants_and_order() -> None:
    models = list_models()
    assert next(iter(models)) == "regseg"
    assert set(models) == set(EXPECTED)
    for name, (default, variants) in EXPECTED.items():
        assert models[name].default_variant == default
        assert set(models[name].variants) == variants


def test_unknown_model_lists_valid_models() -> None:
    with pytest.raises(ModelConfigError, match="unknown model 'segformer'.*regseg"):
        build_model("segformer")


def test_unknown_variant_lists_valid_variants() -> None:
    with pytest.raises(ModelConfigError, match="unknown variant 'exp99'.*exp48_decoder26, exp53_decoder29"):
        build_model("regseg", variant="exp99")


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ModelConfigError, match="unknown option.*colour"):
        build_model("regseg", colour=True)


def test_bad_class_count() -> None:
    with pytest.raises(ModelConfigError, match="num_classes"):
        build_model("regseg", num_classes=0)


def test_builder_records_identity() -> None:
    model = build_model("regseg", num_classes=5)
    assert (model.model_name, model.variant, model.num_classes) == ("regseg", "exp48_decoder26", 5)
