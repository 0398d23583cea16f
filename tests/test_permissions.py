"""The tests of unreadable files and folders, run where permission bits apply.

CI runs as root, whose CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH make every file
readable, so those tests skip themselves there. This runs them again in a child pytest
started through `setpriv` without those two capabilities (same user, same files), where
a chmod 000 file is refused as it would be for anyone else.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PERMISSIONS_ENFORCED

REPO = Path(__file__).resolve().parents[1]
PERMISSION_TESTS = [
    "tests/test_finding.py::test_folder_without_read_permission",
    "tests/test_finding.py::test_folder_listable_but_not_enterable",
    "tests/test_finding.py::test_file_without_read_permission_gets_a_row",
    "tests/test_images.py::test_permission_denied",
    "tests/test_config_errors.py::test_an_unreadable_config_file_is_one_line",
]


@pytest.mark.skipif(PERMISSIONS_ENFORCED, reason="permission bits apply here: the tests ran directly")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop the capabilities")
def test_permission_tests_pass_without_the_override_capabilities():
    drop = "-dac_override,-dac_read_search"
    result = subprocess.run(["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-m", "pytest",
                             "-q", "-p", "no:cacheprovider", *PERMISSION_TESTS], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"{len(PERMISSION_TESTS)} passed" in summary and "skipped" not in summary, summary
