"""The conformance suite passes through nginx (deploy/nginx.conf) in front of two replicas, auth on.

Every request may land on either replica (least_conn, no stickiness): a job's POST, status,
stream, resume and DELETE are served from Redis by whichever replica nginx picks. The TTL is
short (2 s) so the lifetime checks run, and ``--require-all`` turns any MUST rule the suite could
not verify through the balancer into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rollout import StartPool

pytestmark = pytest.mark.slow

TOKEN = "pool-secret-token"
#: conformance-friendly replica flags (as in tests/redis): short TTL and keep-alive, small caps
FLAGS = (
    "--auth-token", TOKEN,
    "--ttl-s", "2",
    "--token-delay-ms", "1",
    "--max-tokens-cap", "512",
    "--concurrency", "2",
    "--queue-limit", "16",
    "--keepalive-s", "1",
)  # fmt: skip


def test_suite_passes_through_nginx_with_require_all(start_pool: StartPool) -> None:
    pool = start_pool(2, *FLAGS)
    command = [
        sys.executable, "-m", "conformance", pool.url,
        "--require-all", "--ttl-budget", "4", "--max-examples", "10", "--seed", "1",
    ]  # fmt: skip
    env = {**os.environ, "DUALCALL_TOKEN": TOKEN, "NO_COLOR": "1", "COLUMNS": "200"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    print(output[-3000:])
    assert done.returncode == 0, f"{output}\n--- nginx error log ---\n{pool.nginx.error_log()[-4000:]}"
    # both replicas served the run: the balancer spread it, no stickiness
    log = pool.nginx.access_log()
    for replica in pool.replicas:
        assert f"upstream={replica.address}" in log, f"{replica.address} served nothing:\n{log[-2000:]}"
