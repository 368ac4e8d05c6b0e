import torch

from imgclf.data import TensorSplit, augment_preset, batches, default_preprocess


def test_an_epoch_covers_every_sample_once(mnist):
    split = TensorSplit(mnist.split("test").images[:1000], mnist.split("test").labels[:1000])
    preprocess = default_preprocess(mnist)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    seen = []
    for x, y in batches(split, preprocess, 128, order=order):
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        seen.append(y)
    labels = torch.cat(seen)
    assert torch.equal(labels, split.labels[order])  # every sample once, in the given order


def test_batches_are_reproducible_with_a_seed_and_drop_last(mnist):
    split = TensorSplit(mnist.split("test").images[:300], mnist.split("test").labels[:300])
    preprocess = default_preprocess(mnist)

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return list(batches(split, preprocess, 64, order=torch.randperm(len(split), generator=g),
                            augment=augment_preset("digits"), generator=g, drop_last=True))

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == 4 and all(len(y) == 64 for _, y in a)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])


def test_default_preprocess_uses_the_data_statistics(mnist):
    preprocess = default_preprocess(mnist)
    assert preprocess.size == (28, 28) and preprocess.channels == 1
    assert preprocess.mean == (0.1307,) and preprocess.std == (0.3081,)  # the well-known MNIST values


def test_resuming_part_way_through_an_epoch_gives_the_same_batches(mnist):
    split = TensorSplit(mnist.split("test").images[:200], mnist.split("test").labels[:200])
    preprocess = default_preprocess(mnist)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(5))
    augment, g = augment_preset("digits"), torch.Generator().manual_seed(6)
    whole = list(batches(split, preprocess, 32, order=order, augment=augment, generator=g))
    g = torch.Generator().manual_seed(6)
    first = list(batches(split, preprocess, 32, order=order[:64], augment=augment, generator=g))
    rest = list(batches(split, preprocess, 32, order=order[64:], augment=augment, generator=g))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, first + rest, strict=True))
