"""The per-test scan for secrets in logs (conftest.py's ``secret_scan``, tests/secret_scan.py):
what it finds, what it lets through, and that a leak fails the test that leaked, not another.

Leaks are planted in folders from ``tmp_path_factory``, which no test's scan watches, or
removed before the test ends.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import LLM_KEY, RUNTIME_KEY, TEST_SECRETS, WEB_TOKEN, AppFactory
from secret_scan import SYNAPSE_TOKEN, SecretScan

pytest_plugins = ["pytester"]

TESTS = Path(__file__).parent
SYNAPSE_LIKE = "syt_Ym90_AbCdEfGhIjKlMnOpQrSt_1a2B3c"
GENERATED = "Gen3rated-web-token-0f9e8d7c6b5a"


def scan_of(root: Path, *secrets: str) -> SecretScan:
    scan = SecretScan([*TEST_SECRETS, *secrets])
    scan.watch(root)
    return scan


def test_every_kind_of_secret_is_found_in_the_daemon_logs_only(
    tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert {WEB_TOKEN, LLM_KEY, RUNTIME_KEY} <= set(TEST_SECRETS)
    assert SYNAPSE_TOKEN.fullmatch(SYNAPSE_LIKE)
    root = tmp_path_factory.mktemp("planted")
    logs = root / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "ganglion.log").write_text(f"ok\nBearer {LLM_KEY}\n")
    (logs / "ganglion.log.2026-01-01").write_text(f"{SYNAPSE_LIKE}\n")
    (logs / "other.log").write_text(WEB_TOKEN)  # not the daemon's log: not scanned
    found = scan_of(root).leaks()
    assert [f.split(": ", 1)[0] for f in found] == [
        str(logs / "ganglion.log"), str(logs / "ganglion.log.2026-01-01")]
    assert all(LLM_KEY not in f for f in found)  # the report itself shows only a prefix


def test_the_console_is_read_and_only_its_login_line_may_hold_the_token(
    tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = tmp_path_factory.mktemp("daemon")
    (run / "data").mkdir()
    (run / "data" / "web_token").write_text(GENERATED + "\n")  # generated: this test's own
    login = f"  Open the chat: http://127.0.0.1:8080/#token={WEB_TOKEN}"
    console = run / "daemon-output.txt"
    console.write_text(f"starting\n\n{login}\n\nready\n{login}\n")  # twice: two starts
    assert scan_of(run).leaks() == []
    for leak in (f"INFO x: token={WEB_TOKEN}", f"{login} and again {WEB_TOKEN}",
                 f"Traceback: {RUNTIME_KEY}", f"  Open the chat: {GENERATED}", SYNAPSE_LIKE):
        console.write_text(f"{login}\n{leak}\n")
        found = scan_of(run).leaks()
        assert len(found) == 1 and "daemon-output.txt" in found[0], (leak, found)
    console.write_text(f"{login}\n")
    (run / "ganglion.log").write_text(f"a generated token: {GENERATED}\n")
    assert [f.split(": ", 1)[0] for f in scan_of(run).leaks()] == [str(run / "ganglion.log")]


def test_a_test_owns_its_config_secrets_and_what_it_added_and_nothing_else(
    tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = tmp_path_factory.mktemp("daemon")
    (run / "config.yaml").write_text(
        "llm:\n  endpoints:\n    - api_key: sk-from-this-config-1234\n"
        "      base_url: http://x\nweb:\n  token: ${GANGLION_WEB_TOKEN}\n"
        "matrix:\n  access_token: none\n")
    (run / "ganglion.log").write_text(
        "sk-from-this-config-1234 added-by-the-test-99 another-tests-secret-77 "
        "${GANGLION_WEB_TOKEN} none\n")
    found = scan_of(run, "added-by-the-test-99").leaks()
    assert [f.split(": ", 1)[1] for f in found] == ["added-by-the…", "sk-from-this…"]


async def test_in_process_apps_log_to_their_log_dir_behind_the_mask_for_the_scan(
    app_factory: AppFactory, tmp_path: Path, secret_scan: SecretScan
) -> None:
    app = await app_factory({"web": {"token": ""}})  # a generated token, masked once known
    assert app.web_token in secret_scan.secrets and tmp_path / "logs" in secret_scan.roots
    log = logging.getLogger("ganglion.test")
    log.info("key %s, token %s", LLM_KEY, app.web_token)
    log.warning("a token the mask does not know: %s", SYNAPSE_LIKE)  # no App knows it
    path = tmp_path / "logs" / "ganglion.log"
    text = path.read_text()
    assert "key ***, token ***" in text and LLM_KEY not in text
    assert "ganglion.app" in text  # the App's own start-up lines are there too
    assert secret_scan.leaks() == [f"{path}: {SYNAPSE_LIKE[:12]}…"]
    path.write_text("")  # planted on purpose: this test's own scan runs at its teardown


PLANTED = '''
from conftest import WEB_TOKEN

OWN = "own-secret-of-one-test-7c1d"


def log(tmp_path, text, name="logs/ganglion.log"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_leaks_a_test_secret(tmp_path):
    log(tmp_path, f"token {WEB_TOKEN}")


def test_leaks_its_own_secret_on_the_console(tmp_path, secret_scan):
    secret_scan.add(OWN)
    log(tmp_path, f"boom {OWN}", "daemon-output.txt")


def test_logs_a_value_that_is_another_tests_secret(tmp_path):
    log(tmp_path, f"not a secret here: {OWN}")


def test_prints_the_login_line(tmp_path):
    log(tmp_path, f"Open the chat: http://127.0.0.1:8080/#token={WEB_TOKEN}", "daemon-output.txt")


def test_leaks_the_token_it_generated(tmp_path):
    log(tmp_path, "Gen3rated-web-token-0f9e8d7c6b5a", "data/web_token")
    log(tmp_path, "token Gen3rated-web-token-0f9e8d7c6b5a")
'''


def test_a_planted_leak_fails_the_test_that_leaked_and_no_other(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_planted=PLANTED)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the helpers conftest.py imports
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    errors = {line.split("::")[1].split(" ")[0] for line in result.outlines
              if line.startswith("ERROR test_planted.py::")}
    assert errors == {"test_leaks_a_test_secret", "test_leaks_its_own_secret_on_the_console",
                      "test_leaks_the_token_it_generated"}, result.outlines
    result.assert_outcomes(passed=5, errors=3)  # a teardown error follows a passed call
    result.stdout.fnmatch_lines(["*secrets of this test in its logs:*",
                                 "*daemon-output.txt: own-secret-o…*"])
