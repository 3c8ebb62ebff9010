"""The TLS profile of the conformance suite: against the reference server in-process and started
from a command, against a running dc_server, and against targets that must fail it."""

from __future__ import annotations

import json
import sys

import pytest
from capturing import distcache
from serverproc import dc_server, free_port
from tlspki import PKI

SERVER_CMD = (
    f"{sys.executable} -m distcache.cli.dc_server -listen {{listen}} -sessions {{sessions}}"
)
TLS_FILES = " -tls-cert {tls_cert} -tls-key {tls_key}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def conformance(*args: str):
    """``distcache conformance`` with a step timeout generous enough for a loaded machine."""
    return distcache("conformance", "--timeout", "3", *args)


def grades(result) -> dict[str, str]:
    report = json.loads(result.stdout)
    return {case["id"]: case["grade"] for case in report["results"]}


def test_the_tls_profile_and_the_core_profile_over_tls_pass_in_process():
    result = conformance("--profile", "tls", "--format", "json")
    assert result.returncode == 0, result.stdout[-2000:]
    found = grades(result)
    tls_cases = [case for case in found if case.startswith("TLS-")]
    assert len(tls_cases) >= 7 and all(found[case] == "PASS" for case in tls_cases)
    assert any(case.startswith("FRAME-") for case in found)  # the core profile, over TLS


def test_tls_cases_against_dc_server_started_with_throw_away_certificates():
    command = SERVER_CMD + TLS_FILES + " -tls-ca {tls_ca}"
    result = conformance("--case", "TLS", "--server-cmd", command, "--format", "json")
    assert result.returncode == 0, result.stdout[-2000:]
    assert set(grades(result).values()) == {"PASS"}


def test_without_client_certificates_the_certificate_cases_are_unsupported():
    command = SERVER_CMD + TLS_FILES
    result = conformance("--case", "TLS", "--server-cmd", command, "--format", "json")
    found = grades(result)
    assert found["TLS-4/no-client-certificate-refused"] == "UNSUPPORTED"
    assert found["TLS-1/operations-inside-tls"] == "PASS"


def test_a_server_that_accepts_any_client_fails_the_certificate_cases(pki):
    # The runner is told client certificates are required (it has one); the server does not.
    address = f"TLS:127.0.0.1:{free_port()}"
    with dc_server(*pki.server_flags(mutual=False), listen=address):
        result = conformance("--case", "TLS-4", "--case", "TLS-5", address,
                           "--tls-cert", pki.client.cert, "--tls-key", pki.client.key,
                           "--tls-ca", pki.ca, "--format", "json")  # fmt: skip
    assert result.returncode == 1
    found = grades(result)
    assert found["TLS-4/no-client-certificate-refused"] == "FAIL"
    assert found["TLS-5/untrusted-certificate-refused"] == "FAIL"


def test_the_core_profile_passes_against_a_running_mutual_tls_dc_server(pki):
    address = f"TLS:127.0.0.1:{free_port()}"
    with dc_server(*pki.server_flags(), listen=address):
        result = conformance("--profile", "tls", address, "--tls-cert",
                           pki.client.cert, "--tls-key", pki.client.key, "--tls-ca", pki.ca,
                           "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    found = grades(result)
    assert found["TLS-4/no-client-certificate-refused"] == "PASS"
    assert found["TLS-5/expired-certificate-refused"] == "UNSUPPORTED"  # not the runner's CA


def test_tls_cases_are_unsupported_on_a_plain_target_and_tls_flags_need_a_tls_address(pki):
    result = conformance("--case", "TLS-1", "--format", "json")
    assert grades(result)["TLS-1/operations-inside-tls"] == "UNSUPPORTED"
    result = conformance("IP:127.0.0.1:1", "--tls-ca", pki.ca)
    assert result.returncode == 2 and b"apply to TLS:host:port" in result.stderr
