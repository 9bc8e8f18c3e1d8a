"""SearchParams validation and the call-count plan."""

import pytest
from pydantic import ValidationError

from batch_pipeline.search import SearchParams, expected_call_counts


def error_of(**fields) -> tuple[tuple, str]:
    with pytest.raises(ValidationError) as caught:
        SearchParams(**fields)
    error = caught.value.errors()[0]
    return error["loc"], error["msg"]


def test_defaults_follow_the_original_pipeline_and_cheapest_current_models():
    params = SearchParams(N=4, M=2, K=2)
    assert params.rounds_per_iteration == 2
    assert (params.E, params.alpha, params.temperature) == (3, 0.7, 0.7)
    models = (params.text_model, params.vision_model, params.image_model)
    assert models == ("gpt-4.1-mini", "gpt-4o-mini", "gpt-image-1-mini")
    assert (params.image_size, params.image_quality, params.vision_detail) == ("1024x1024", "low", "low")
    assert (params.max_completion_tokens, params.seed) == (800, 0)
    assert params.children_per_parent == 2


@pytest.mark.parametrize("n", [1, 17])
def test_beam_width_outside_2_to_16_is_rejected_naming_n(n):
    loc, _ = error_of(N=n, M=1, K=2)
    assert loc == ("N",)


def test_m_that_does_not_divide_n_is_rejected_with_a_clear_message():
    loc, msg = error_of(N=9, M=4, K=2)
    assert loc == ("M",)
    assert "M must divide N" in msg


def test_m_above_half_of_n_is_rejected():
    loc, msg = error_of(N=6, M=4, K=2)
    assert loc == ("M",) and "at most N/2" in msg


@pytest.mark.parametrize(
    "field, value",
    [
        ("K", 0),
        ("K", 11),
        ("E", 0),
        ("E", 6),
        ("alpha", 1.5),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("descriptiveness", "verbose"),
        ("prompt_style", "haiku"),
        ("image_quality", "ultra"),
        ("vision_detail", "max"),
    ],
)
def test_out_of_range_values_are_rejected_naming_their_field(field, value):
    loc, _ = error_of(**{"N": 4, "M": 2, "K": 2, field: value})
    assert loc[0] == field


def test_unknown_fields_are_rejected_rather_than_ignored():
    loc, _ = error_of(N=4, M=2, K=2, beam_width=4)
    assert loc == ("beam_width",)


def test_expected_call_counts_for_n9_m3_k3_e3():
    counts = expected_call_counts(SearchParams(rounds_per_iteration=3, N=9, M=3, K=3, E=3))
    assert [(c.iteration, c.text, c.image, c.vision) for c in counts] == [
        (0, 9, 9, 108),  # C(9,2) * 3
        (1, 9, 9, 189),  # (C(12,2) - C(3,2)) * 3
        (2, 9, 9, 189),
    ]
    # The original needed 69 LLM calls for the same search; fused calls need 27.
    assert sum(c.text for c in counts) == 27 and sum(c.vision for c in counts) == 486
