"""Host lists to device tensors: the values arrive as given, and a reused pinned slot never overwrites a copy still
queued behind GPU work (asynchronous scheduling queues a step's input copies behind the step ahead)."""
import pytest
import torch

from engine.host_copy import PinnedStaging, to_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.mark.parametrize("dtype, values", [(torch.int32, [[1, 2], [3, 4]]), (torch.int64, [5, -1, 2**40]),
                                           (torch.float32, [0.7, 1.0]), (torch.bool, [True, False, True])])
def test_cpu_values_arrive_as_given(dtype, values):
    t = to_device(values, dtype, torch.device("cpu"))
    assert t.dtype == dtype and torch.equal(t, torch.tensor(values, dtype=dtype))


@pytest.mark.gpu
@needs_cuda
def test_a_slot_is_not_reused_while_its_copies_wait_behind_the_gpu():
    staging = PinnedStaging(1 << 12, slots=3)
    device = torch.device("cuda")
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued ahead of every copy below
    arrived = []
    for step in range(7):
        staging.next_step()
        arrived.append((step, to_device([step * 1000 + i for i in range(300)], torch.int64, device, staging),
                        to_device([[step] * 40] * 3, torch.int32, device, staging)))
    torch.cuda.synchronize()
    for step, ids, tables in arrived:
        assert ids.tolist() == [step * 1000 + i for i in range(300)] and (tables == step).all()
    assert staging.overflows == 0
    big = to_device(list(range(5000)), torch.int64, device, staging)
    assert staging.overflows == 1 and big.tolist() == list(range(5000))
