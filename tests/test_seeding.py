"""``ignitrain.seeding.seed_everything``: the one seeder."""

import random

import numpy as np
import pytest
import torch

from ignitrain.seeding import SEED_MAX, seed_everything


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_same_seed_same_draws_from_python_numpy_and_torch():
    seed_everything(7)
    first = _draw()
    seed_everything(7)
    assert _draw() == first
    seed_everything(8)
    assert _draw() != first


def test_largest_seed_torch_takes_is_accepted():
    seed_everything(SEED_MAX)  # numpy takes 32 bits: the seed is reduced for it
    assert torch.initial_seed() == SEED_MAX


def test_none_leaves_the_generators_alone():
    seed_everything(3)
    state = torch.get_rng_state()
    seed_everything(None)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [
        (-1, ValueError, r"seed=-1 is not allowed: expected an integer in 0\.\.2\*\*64-1"),
        (2**64, ValueError, r"seed=18446744073709551616 is not allowed"),
        (1.5, TypeError, r"seed=1\.5 is not allowed: expected an integer"),
        (True, TypeError, r"seed=True is not allowed"),
    ],
)
def test_bad_seed_is_named(seed, error, match):
    with pytest.raises(error, match=match):
        seed_everything(seed)
