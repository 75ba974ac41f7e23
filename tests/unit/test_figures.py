"""Issue 15: every Result's figure is readable: no text outside the figure, no font under 9 pt.

Parametrised over every registered lens's example Results (as the contract test), on a tiny
Llama pair; the model names are written under each figure by ``show()``.
"""

from __future__ import annotations

import pytest

from shiftlens.lenses import registered_lenses, resolve_ref
from shiftlens.viz.style import MIN_FONT_PT, layout_problems, new_figure, pyplot

LENSES = [s for s in registered_lenses().values() if s.examples]


@pytest.fixture(scope="module")
def examples(tiny_dirs):
    from shiftlens import ModelPair, default_prompts

    pair = ModelPair.from_pretrained(*tiny_dirs("llama"))
    prompts = [p for p in default_prompts() if p.reference][:3]
    cache: dict = {}

    def get(spec):
        if spec.name not in cache:
            cache[spec.name] = list(resolve_ref(spec.examples)(pair, prompts))
        return cache[spec.name]

    return get


@pytest.mark.parametrize("spec", LENSES, ids=[s.name for s in LENSES])
def test_every_result_figure_is_readable(spec, examples):
    for r in examples(spec):
        fig = r.show()
        problems = layout_problems(fig)
        pyplot().close(fig)
        assert problems == [], f"{type(r).__name__}: {problems}"


def test_layout_problems_finds_what_it_should():
    fig, axes = new_figure()
    ax = axes[0, 0]
    ax.plot([0, 1], label="a line")
    ax.legend(loc="upper left", bbox_to_anchor=(1.3, 1.0))  # pushed outside the figure
    ax.set_title("tiny", fontsize=MIN_FONT_PT - 2)
    probs = layout_problems(fig)
    assert any("'a line' falls outside" in p for p in probs)
    assert any("'tiny' is" in p for p in probs)
    pyplot().close(fig)
