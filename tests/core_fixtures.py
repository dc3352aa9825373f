"""Fixtures of the core tests (imported by their modules): small real datasets."""

import pytest

from fewshot.data import load_dataset


@pytest.fixture(scope="session")
def digits8():
    """scikit-learn's 8x8 digits: train classes 0-4, test classes 5-9."""
    return load_dataset("digits")
