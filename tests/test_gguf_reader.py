"""engine.gguf_loader's reader against gguf-py's own on the demo GGUF: the same fields, values and tensors."""
import numpy as np
import pytest

from engine.demo import demo_model_path

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def readers():
    try:
        path = demo_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    from engine.gguf_loader import open_reader

    return gguf.GGUFReader(path), open_reader(path)


def test_fields_match_the_stock_reader(readers):
    stock, ours = readers
    assert isinstance(ours, gguf.GGUFReader) and type(ours) is not gguf.GGUFReader
    assert list(ours.fields) == list(stock.fields)
    for name, field in stock.fields.items():
        mine = ours.fields[name]
        assert (mine.offset, mine.types, mine.data) == (field.offset, field.types, field.data), name
        assert len(mine.parts) == len(field.parts), name
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(mine.parts, field.parts)), name
    assert ours.fields["tokenizer.ggml.tokens"].contents() == stock.fields["tokenizer.ggml.tokens"].contents()


def test_tensors_match_the_stock_reader(readers):
    stock, ours = readers
    assert [t.name for t in ours.tensors] == [t.name for t in stock.tensors]
    for mine, theirs in zip(ours.tensors, stock.tensors):
        assert (mine.tensor_type, list(mine.shape), mine.data_offset, mine.n_bytes) == \
            (theirs.tensor_type, list(theirs.shape), theirs.data_offset, theirs.n_bytes), mine.name
        assert mine.data.dtype == theirs.data.dtype and np.array_equal(mine.data, theirs.data), mine.name
        assert not isinstance(mine.data, np.memmap), "slices of the plain view, not memmaps"
