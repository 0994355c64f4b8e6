"""The method registry: every method is found by name, the config refuses unknown names, and a new
method is one subclass (the trainer needs nothing else)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.train import PretrainConfig
from lidar_ssl_core.train.methods import (
    MethodError,
    MethodOutput,
    MethodSetup,
    PretrainMethod,
    StepContext,
    method_class,
    method_names,
)
from lidar_ssl_core.train.methods.base import _REGISTRY, register


def test_the_existing_methods_are_registered_with_their_needs() -> None:
    names = method_names()
    for name in ("ppkt", "slidr", "st-slidr", "st-ppkt"):
        assert name in names
    assert method_class("slidr").needs_superpixels and method_class("st-slidr").needs_superpixels
    assert not method_class("ppkt").needs_superpixels and not method_class("st-ppkt").needs_superpixels
    with pytest.raises(MethodError, match=r"unknown pretraining method .pointcontrast.*ppkt"):
        method_class("pointcontrast")
    with pytest.raises(ValueError, match="unknown pretraining method"):
        PretrainConfig.model_validate({"method": "pointcontrast"})


def test_a_registered_subclass_is_selectable_and_checks_its_batch_keys() -> None:
    class Probe(PretrainMethod):
        name = "probe-for-test"
        batch_keys = ("pairing_voxels", "weak")

        def forward(  # type: ignore[override]
            self, batch: Any, point_feats: torch.Tensor, step: StepContext
        ) -> MethodOutput:
            return MethodOutput(point_feats.sum(), {"sum": point_feats.sum().detach()})

    try:
        register(Probe)
        config = PretrainConfig(method="probe-for-test")
        method = method_class(config.method)(config, MethodSetup(student_dim=4))
        with pytest.raises(MethodError, match=r"needs batch keys \['weak'\]"):
            method.check_batch({"pairing_voxels": torch.zeros(1)})
        out = method({}, torch.ones(2, 4), StepContext())
        assert float(out.loss) == 8.0 and set(out.terms) == {"sum"}
        with pytest.raises(ConfigError, match="two pretraining methods"):

            class Other(Probe):
                pass

            register(Other)
    finally:
        _REGISTRY.pop("probe-for-test", None)
