import torch

from imgclf.data import TensorSplit, augment_preset, batches, default_preprocess


def test_an_epoch_covers_every_sample_once(mnist):
    split = TensorSplit(mnist.split("test").images[:1000], mnist.split("test").labels[:1000])
    preprocess = default_preprocess(mnist)
    order = []
    for x, y in batches(split, preprocess, 128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        order.append(y)
    labels = torch.cat(order)
    assert len(labels) == 1000 and torch.equal(labels.sort().values, split.labels.sort().values)
    assert not torch.equal(labels, split.labels)  # shuffled


def test_batches_are_reproducible_with_a_seed_and_drop_last(mnist):
    split = TensorSplit(mnist.split("test").images[:300], mnist.split("test").labels[:300])
    preprocess = default_preprocess(mnist)

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return list(batches(split, preprocess, 64, augment=augment_preset("digits"), shuffle=True,
                            generator=g, drop_last=True))

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == 4 and all(len(y) == 64 for _, y in a)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])


def test_default_preprocess_uses_the_data_statistics(mnist):
    preprocess = default_preprocess(mnist)
    assert preprocess.size == (28, 28) and preprocess.channels == 1
    assert preprocess.mean == (0.1307,) and preprocess.std == (0.3081,)  # the well-known MNIST values
