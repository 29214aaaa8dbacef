"""The served OpenAPI spec, checked by schemathesis against the live server: no 5xx, and every response
(status code, content type, body) as the spec declares it. Runs schemathesis's own command line, as a CI
job would, with a fixed seed so a failure can be replayed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from citytwin.ioc.server.process import ServerProcess, provision_key

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.slow
def test_every_operation_conforms_to_the_spec(tmp_path):
    st = Path(sys.executable).with_name("st")
    st_command = str(st) if st.exists() else shutil.which("st")
    assert st_command, "schemathesis (dev extra) is not installed"
    db_url = f"sqlite:///{tmp_path}/ioc.db"
    # The admin key reaches every operation, so the checks see real answers rather than 401s.
    admin_key = provision_key(db_url, "admin", rate_per_s=1e6)
    with ServerProcess(db_url, tmp_path / "server.log") as server:
        result = subprocess.run(
            [st_command, "run", f"{server.url}/openapi.json", "--checks", CHECKS, "--max-examples", "12",
             "--seed", "20261122", "--header", f"X-API-Key: {admin_key}", "--request-timeout", "10",
             "--no-color", "--generation-allow-x00", "false"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or " passed" in result.stdout, report
