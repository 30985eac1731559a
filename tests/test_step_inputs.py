"""A step's inputs survive the framing that rank 0 uses to send them to tensor-parallel workers."""
from hypothesis import given, settings, strategies as st

from engine.step_inputs import HEAD_BYTES, StepInputs, decode, encode, split, tail_bytes


@st.composite
def steps(draw) -> StepInputs:
    lens = draw(st.lists(st.integers(1, 40), min_size=1, max_size=70))
    width = draw(st.integers(1, 90))
    tokens = sum(lens)
    ints = st.integers(-1, 2**40)
    qsl = [0]
    for n in lens:
        qsl.append(qsl[-1] + n)
    return StepInputs(
        input_ids=draw(st.lists(ints, min_size=tokens, max_size=tokens)),
        positions=list(range(tokens)),
        slot_mapping=draw(st.lists(ints, min_size=tokens, max_size=tokens)),
        block_tables=[draw(st.lists(ints, min_size=width, max_size=width)) for _ in lens],
        seq_lens=lens,
        query_start_loc=qsl,
        num_decodes=draw(st.integers(0, len(lens))),
        max_query_len=max(lens),
        sample_rows=draw(st.lists(st.integers(0, tokens - 1), max_size=len(lens))),
    )


def round_trip(step: StepInputs | None) -> tuple[StepInputs | None, bool]:
    head, tail = split(encode(step))
    assert head.numel() == HEAD_BYTES
    assert tail_bytes(head) == (0 if tail is None else tail.numel())
    return decode(head.clone(), None if tail is None else tail.clone()), tail is not None


@settings(max_examples=150, deadline=None)
@given(steps())
def test_a_step_arrives_as_it_was_sent(step):
    assert round_trip(step)[0] == step


def test_small_steps_fit_the_head_and_large_ones_spill_into_a_tail():
    decode_step = StepInputs([5], [9], [100], [[3, 4, 7]], [10], [0, 1], 1, 1, [0])
    assert round_trip(decode_step) == (decode_step, False)
    wide = StepInputs([1] * 64, list(range(64)), list(range(64)), [list(range(90 * i, 90 * i + 90)) for i in range(1000, 1064)], [1400] * 64,
                      list(range(65)), 64, 1, list(range(64)))
    assert round_trip(wide) == (wide, True)
    assert round_trip(None) == (None, False)
