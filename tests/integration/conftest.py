"""What the integration tests' job subprocesses share: the digits splits, written once."""

import os

import pytest
import torch

from tests.integration._job_setup import DIGITS_FILE


@pytest.fixture(scope="session", autouse=True)
def digits_file_for_jobs(tmp_path_factory, digits_flat):
    """Write ``datasets.digits(seed=0, image=False)``'s train and val tensors once and
    name the file in the environment every job inherits: the jobs then skip importing
    scikit-learn (as long as importing torch, in each job and rank)."""
    path = tmp_path_factory.mktemp("digits") / "digits.pt"
    torch.save(
        {"train": list(digits_flat.train.tensors), "val": list(digits_flat.val.tensors)}, path
    )
    before = os.environ.get(DIGITS_FILE)
    os.environ[DIGITS_FILE] = str(path)
    yield path
    if before is None:
        os.environ.pop(DIGITS_FILE, None)
    else:
        os.environ[DIGITS_FILE] = before
