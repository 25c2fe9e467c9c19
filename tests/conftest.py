"""Test-session setup: the decoded-dataset cache goes to a temporary folder, never to ~/.cache."""

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_dataset_cache():
    with tempfile.TemporaryDirectory(prefix="cnncli-test-cache-") as tmp:
        old = os.environ.get("CNNCLI_CACHE_DIR")
        os.environ["CNNCLI_CACHE_DIR"] = tmp
        yield
        if old is None:
            os.environ.pop("CNNCLI_CACHE_DIR", None)
        else:
            os.environ["CNNCLI_CACHE_DIR"] = old
