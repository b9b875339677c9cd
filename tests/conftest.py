"""Shared fixtures.  Test data is generated here; the real-world corpus in
../shared/corpus is read in place (and skipped, with the reason, where a
clone lives outside the project's tree)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CORPUS = os.environ.get("BIRDSENTINEL_CORPUS", os.path.join(ROOT, "..", "shared", "corpus"))
SCRIPT = os.path.join(ROOT, "birdsentinel.py")


@pytest.fixture
def corpus_dir():
    if not os.path.isdir(CORPUS):
        if os.environ.get("CI"):
            pytest.fail("the corpus %s is missing in CI" % CORPUS)
        pytest.skip("the real-world corpus ../shared/corpus is not beside this clone")
    return os.path.abspath(CORPUS)


@pytest.fixture
def script():
    return SCRIPT
