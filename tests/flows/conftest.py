"""The flow tests' shared helpers get pytest's assertion messages, as the tests do."""

from __future__ import annotations

import pytest

# Registered before any test module here imports them; after the import it is too late.
pytest.register_assert_rewrite("tests.flows.backup_helpers", "tests.flows.deploy_verify_helpers")
