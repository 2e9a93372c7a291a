"""The one registry helper, and that every registry of gkt is one."""

from __future__ import annotations

import pytest

from gkt.core.errors import GktError
from gkt.core.registry import Registry, UnknownName


def test_register_lookup_and_names() -> None:
    shapes: Registry[int] = Registry("shape")

    @shapes.register("square")
    def square() -> int:
        return 4

    shapes["triangle"] = lambda: 3
    assert shapes["square"] is square and shapes["square"]() == 4
    assert shapes.names() == ["square", "triangle"] and list(shapes) == ["square", "triangle"]
    assert "square" in shapes and "circle" not in shapes and shapes.get("circle") is None and len(shapes) == 2


def test_duplicate_names_are_refused() -> None:
    shapes: Registry[int] = Registry("shape")
    shapes["square"] = 4
    with pytest.raises(ValueError, match="shape 'square' is already registered"):
        shapes.register("square")(5)
    assert shapes["square"] == 4
    with pytest.raises(ValueError, match="non-empty name"):
        shapes[""] = 1


def test_unknown_name_suggests_the_closest_and_lists_all() -> None:
    methods: Registry[str] = Registry("transfer method")
    methods.update({"kl": "a", "kl-dp": "b", "xekl": "c", "crd": "d"})
    with pytest.raises(GktError) as caught:
        methods["kl-dpp"]
    message = str(caught.value)
    assert message.startswith("unknown transfer method 'kl-dpp' (did you mean 'kl-dp'")
    assert message.endswith("; known: crd, kl, kl-dp, xekl")
    assert isinstance(caught.value, UnknownName) and isinstance(caught.value, KeyError)
    with pytest.raises(GktError, match=r"^unknown transfer method 'zzz'; known: crd, kl, kl-dp, xekl$"):
        methods.check(["kl", "zzz"])
    methods.check("crd")


def test_every_registry_of_gkt_is_a_registry() -> None:
    from gkt.adapt.heads import ADAPT_MODES
    from gkt.cli import VERBS, build_parser
    from gkt.data.augment import AUGMENTATIONS
    from gkt.data.domains import DOMAINS
    from gkt.data.spec import DATA_SPEC_LOADERS
    from gkt.engine.tracking import TRACKERS
    from gkt.kdep.objectives import OBJECTIVES
    from gkt.models.architectures import ZOO_ARCHITECTURES
    from gkt.models.classifier import NET_SOURCES
    from gkt.models.specs import SPEC_SOURCES
    from gkt.reporting.analysis_figures import FIGURES
    from gkt.reporting.study_figures import STUDY_FIGURES
    from gkt.transfer import METHODS
    from gkt.transfer.multi import MODES, ORDERS

    build_parser()  # imports every verb module
    registries = [ADAPT_MODES, VERBS, AUGMENTATIONS, DOMAINS, TRACKERS, OBJECTIVES, ZOO_ARCHITECTURES, NET_SOURCES,
                  SPEC_SOURCES, FIGURES, STUDY_FIGURES, METHODS, MODES, ORDERS, DATA_SPEC_LOADERS]
    assert all(isinstance(r, Registry) and len(r) > 0 for r in registries)
    assert len({r.kind for r in registries}) == len(registries)
    assert {"kl", "kl-dp", "crd"} <= set(METHODS) and {"edges", "invert", "blur"} <= set(DOMAINS)
    assert {"transfer", "analyze", "kdep pretrain", "zoo build"} <= set(VERBS)
