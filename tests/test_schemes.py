import dataclasses

import pytest

from quantstudy.errors import QuantstudyError
from quantstudy.schemes import PRESETS, NumberType, Strategy, WeightQuant, get_scheme


def test_presets_describe_the_papers_formats():
    fp8 = PRESETS["w8a8-fp8"]
    assert (fp8.weights.type, fp8.weights.strategy, fp8.weights.num_bits) == (NumberType.FLOAT, Strategy.CHANNEL, 8)
    assert (fp8.activations.type, fp8.activations.strategy, fp8.activations.dynamic) == (
        NumberType.FLOAT, Strategy.TOKEN, True)
    int8 = PRESETS["w8a8-int8"]
    assert int8.weights.symmetric and int8.weights.strategy is Strategy.CHANNEL
    assert int8.activations.type is NumberType.INT and int8.activations.strategy is Strategy.TOKEN
    w4 = PRESETS["w4a16"]
    assert (w4.weights.num_bits, w4.weights.group_size, w4.weights.symmetric, w4.activations) == (4, 128, True, None)
    assert PRESETS["w4a16-asym"].weights.symmetric is False
    assert PRESETS["w8a16"].activations is None and PRESETS["w8a16"].weights.num_bits == 8
    assert PRESETS["fp8-block"].weights.block == (128, 128)
    assert all(s.ignore == ("lm_head",) for s in PRESETS.values())
    assert [PRESETS[n].label for n in ("w8a8-fp8", "w8a8-int8", "w4a16")] == ["W8A8-FP8", "W8A8-INT8", "W4A16"]


def test_schemes_are_frozen_and_hashable():
    s = PRESETS["w4a16"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.weights.num_bits = 3
    assert len({s, get_scheme("w4a16"), get_scheme("w4a16", 64)}) == 2


def test_group_size_override():
    s = get_scheme("W4A16", group_size=64)
    assert s.weights.group_size == 64 and PRESETS["w4a16"].weights.group_size == 128
    block = get_scheme("fp8-block", group_size=64)
    assert block.weights.block == (64, 64) and block.activations.group_size == 64
    with pytest.raises(QuantstudyError, match="channel-wise"):
        get_scheme("w8a8-int8", group_size=64)
    with pytest.raises(QuantstudyError, match="positive"):
        get_scheme("w4a16", group_size=0)


def test_unknown_scheme_names_the_choices():
    with pytest.raises(QuantstudyError, match="w8a8-fp8.*w4a16"):
        get_scheme("int3")


def test_invalid_weight_args_rejected():
    with pytest.raises(QuantstudyError):
        WeightQuant(4, NumberType.FLOAT)
    with pytest.raises(QuantstudyError):
        WeightQuant(4, strategy=Strategy.GROUP)
    with pytest.raises(QuantstudyError):
        WeightQuant(16)
