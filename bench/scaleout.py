"""Scale-out load test: three ollamux instances behind nginx, shared state off against on (issue #20).

Run it through `bench/scaleout`. Everything is on loopback and bounded in time (under 3 minutes with the
defaults). It starts nginx as the fixed-answer OpenAI upstream (bench.py's), three `ollamux serve` processes
with one config file (only OLLAMUX_INSTANCE_ID and --port differ), and nginx as the load balancer in front,
configured from deploy/compose/nginx.conf (the file the compose example ships, its upstream servers pointed at
the loopback ports). Then wrk posts /v1/chat/completions through the balancer, JSON and SSE, at 32 connections:

- shared state off: each instance has its own SQLite request log and its own in-process limits;
- shared state on: one PostgreSQL request log and the limits in Redis (a limit so high that nothing is
  refused, so every request pays the Redis round trips), PostgreSQL 15 and redis-server started here as the
  tests start them (tests/pg_server.py: Debian's binaries as the `postgres` user in a temp dir).

It prints one table (scenario, shared state, req/s, p50, p99, errors, CPU per request of the instances and of
PostgreSQL + Redis) and, with --write, puts it into bench/RESULTS.md. Every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

import bench as b

REPO = b.REPO
COMPOSE_NGINX = REPO / "deploy" / "compose" / "nginx.conf"
RESULTS = b.BENCH / "RESULTS.md"
MARK_START, MARK_END = "<!-- scaleout:start -->", "<!-- scaleout:end -->"
REDIS_BIN = "redis-server"
# a per-minute limit no run can reach: the limiter runs on every request, never refuses one
HIGH_LIMIT = {"requests_per_minute": 100_000_000, "burst": 10_000_000}
INSTANCES = 3  # as many as the compose example runs: its nginx.conf, reused here, names three


@dataclass(frozen=True)
class Scenario:
    name: str
    body: str  # a request body written by bench.write_canned
    kind: str  # json or sse, for bench.probe


SCENARIOS = (Scenario("openai-json", "req_openai", "json"), Scenario("openai-sse", "req_openai_stream", "sse"))
MODES = ("off", "on")


@dataclass
class Row:
    scenario: str
    mode: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    cpu_us_per_req: float | None = None  # the three instances together
    shared_cpu_us_per_req: float | None = None  # PostgreSQL + Redis
    note: str = ""


# --------------------------------------------------------------------------------------------- configs
def lb_conf(template: str, work: Path, listen: int, ports: list[int]) -> str:
    """deploy/compose/nginx.conf with its upstream servers on loopback ports and its files in `work`.

    Each substitution must match, so a change to the compose file that this bench no longer understands
    fails here instead of measuring something else."""
    out = template
    servers = re.findall(r"server ollamux-\d+:11434", out)
    if len(servers) != len(ports):
        raise ValueError(f"{COMPOSE_NGINX.name} lists {len(servers)} ollamux servers, the bench runs {len(ports)}")
    for name, port in zip(servers, ports, strict=True):
        out = out.replace(name, f"server 127.0.0.1:{port}", 1)
    subs = [
        (r"listen 8080;", f"listen 127.0.0.1:{listen} backlog=4096;"),
        (r"access_log /dev/stdout;", "access_log off;"),
        (r"error_log /dev/stderr warn;", f"error_log {work}/lb-error.log warn;"),
        # one worker, as the upstream: on a small machine the instances need the cores
        (r"worker_processes auto;", "worker_processes 1;"),
        (
            r"http \{",
            f"http {{\n  client_body_temp_path {work}/lb1;\n  proxy_temp_path {work}/lb2;\n"
            f"  fastcgi_temp_path {work}/lb3;\n  uwsgi_temp_path {work}/lb4;\n  scgi_temp_path {work}/lb5;",
        ),
    ]
    for pattern, repl in subs:
        out, n = re.subn(pattern, repl, out, count=1)
        if n != 1:
            raise ValueError(f"{COMPOSE_NGINX.name}: expected '{pattern}' once")
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"{user}pid {work}/lb.pid;\n{out}"


def instance_conf(work: Path, up: int, *, pg_url: str | None, redis_url: str | None, instance_id: bool) -> str:
    """One config for all three instances: bench.py's backends and models, high limits, and the log and
    limits either per instance (pg_url and redis_url None) or shared."""
    cfg: dict[str, Any] = yaml.safe_load(b.ollamux_conf(work, 0, up, up, log=True, metrics=True, metrics_key=True))
    cfg["server"].pop("port", None)  # each instance gets --port
    if instance_id:
        cfg["server"]["instance_id"] = "${OLLAMUX_INSTANCE_ID}"
    cfg["limits"] = dict(HIGH_LIMIT)
    if pg_url is None:
        cfg["request_log"] = {"path": str(work / "requests-${OLLAMUX_INSTANCE_ID}.sqlite")}
    else:
        cfg["request_log"] = {"url": pg_url}
    if redis_url is not None:
        cfg["shared_state"] = {"redis_url": redis_url, "fail_closed": False}
    return yaml.safe_dump(cfg, sort_keys=False)


def check_config(bench: b.Bench, path: Path) -> str | None:
    """`ollamux check`'s complaint about this config, or None when this tree accepts it."""
    env = {**os.environ, **bench.ollamux_env(), "OLLAMUX_INSTANCE_ID": "probe"}
    r = subprocess.run(
        [b.PY, "-m", "ollamux", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    return None if r.returncode == 0 else (r.stderr or r.stdout).strip()


# ---------------------------------------------------------------------------------- PostgreSQL, Redis
class SharedEngines:
    """PostgreSQL (tests/pg_server.py) and redis-server on free loopback ports, for the `on` mode."""

    def __init__(self, bench: b.Bench) -> None:
        self.bench = bench
        self.pg: Any = None
        self.redis: b.Proc | None = None
        self.pg_url = ""
        self.redis_url = ""

    @staticmethod
    def missing() -> str | None:
        if shutil.which(REDIS_BIN) is None:
            return f"{REDIS_BIN} is not installed (scripts/debian_tools.sh installs redis-server)"
        try:
            sys.path.insert(0, str(REPO))
            from tests import pg_server
        except ImportError as exc:
            return f"tests/pg_server.py cannot be imported ({exc}): psycopg missing? (pip install -e '.[test]')"
        finally:
            sys.path.remove(str(REPO))
        reason: str | None = pg_server.missing_reason()
        return reason

    def start(self) -> None:
        sys.path.insert(0, str(REPO))
        try:
            from tests.pg_server import PgServer
        finally:
            sys.path.remove(str(REPO))
        self.pg = PgServer()
        self.pg.init()
        self.pg.start()
        self.pg.wait_ready()
        self.pg_url = self.pg.new_database()
        port, password = b.free_port(), secrets.token_hex(12)
        cmd = [REDIS_BIN, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password]
        cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.bench.work)]
        self.redis = b.Proc("redis", cmd, port, self.bench.work)
        self.bench.procs.append(self.redis)
        _wait_redis(port, password, self.redis)
        self.redis.pids = b.tree(self.redis.popen.pid)
        self.redis_url = f"redis://:{password}@127.0.0.1:{port}/0"

    def pids(self) -> list[int]:
        out = list(self.redis.pids) if self.redis is not None else []
        if self.pg is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                postmaster = int((self.pg.data / "postmaster.pid").read_text().split()[0])
                out += b.tree(postmaster)  # the backends of the instances' pool connections included
        return out

    def log_rows(self) -> dict[str, int]:
        """Rows per instance in the shared log (the column `instance`), once the writers have flushed."""
        import psycopg

        with psycopg.connect(self.pg_url, connect_timeout=5) as conn:
            rows = conn.execute("SELECT instance, count(*) FROM requests GROUP BY instance ORDER BY 1").fetchall()
        return {str(k): int(n) for k, n in rows}

    def close(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.close()


def _wait_redis(port: int, password: str, proc: b.Proc, timeout: float = 15) -> None:
    hello = f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"redis-server exited: {proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(hello)
            got = b""
            while b"PONG" not in got and len(got) < 200:
                chunk = s.recv(200)
                if not chunk:
                    break
                got += chunk
            if b"PONG" in got:
                return
        time.sleep(0.1)
    raise RuntimeError(f"redis-server not ready within {timeout:g}s: {proc.tail()}")


# ---------------------------------------------------------------------------------------------- runner
class ScaleOut:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bench = b.Bench(argparse.Namespace())  # its work dir, canned answers, process list
        self.notes: list[str] = []
        self.engines: SharedEngines | None = None
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.up = 0

    def log(self, msg: str) -> None:
        self.bench.log(msg)

    def start_upstream(self) -> None:
        self.up = b.free_port()
        (self.bench.work / "nginx.conf").write_text(b.nginx_conf(self.bench.work, self.up))
        conf = str(self.bench.work / "nginx.conf")
        self.bench.start("upstream", [self.nginx, "-p", str(self.bench.work), "-c", conf, "-g", "daemon off;"], self.up)

    def instance_id_known(self) -> bool:
        cfg = self.bench.work / "probe-instance.yaml"
        cfg.write_text(instance_conf(self.bench.work, self.up, pg_url=None, redis_url=None, instance_id=True))
        return check_config(self.bench, cfg) is None

    def start_cluster(self, mode: str, cfg_text: str) -> tuple[list[b.Proc], b.Proc]:
        cfg = self.bench.work / f"ollamux-{mode}.yaml"
        cfg.write_text(cfg_text)
        instances = []
        for i in range(1, INSTANCES + 1):
            port = b.free_port()
            env = {**self.bench.ollamux_env(), "OLLAMUX_INSTANCE_ID": f"{mode}-{i}"}
            cmd = [*self.bench.ollamux_cmd(cfg), "--port", str(port)]
            instances.append(self.bench.start(f"{mode}-ollamux-{i}", cmd, port, env, ready_path="/health"))
        lb_port = b.free_port()
        conf = self.bench.work / f"lb-{mode}.conf"
        conf.write_text(lb_conf(COMPOSE_NGINX.read_text(), self.bench.work, lb_port, [p.port for p in instances]))
        lb = self.bench.start(
            f"{mode}-lb", [self.nginx, "-p", str(self.bench.work), "-c", str(conf), "-g", "daemon off;"], lb_port
        )
        return instances, lb

    def readiness(self, mode: str, instances: list[b.Proc]) -> None:
        """Each instance's view of the shared state before the load: a degraded one would measure local limits."""
        for p in instances:
            try:
                with urllib.request.urlopen(p.url + "/health/ready", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError as exc:
                body = {"status": f"unreadable ({exc})"}
            parts = [f"status {body.get('status')}"]
            for key in ("request_log", "shared_state"):
                if isinstance(body.get(key), dict):
                    parts.append(f"{key} {body[key].get('state')}")
            line = f"{p.name}: " + ", ".join(parts)
            self.log(f"  {line}")
            if body.get("status") != "ready":
                self.notes.append(f"{mode}: {line} before the load")

    def measure(self, mode: str, instances: list[b.Proc], lb: b.Proc) -> list[Row]:
        rows = []
        for sc in SCENARIOS:
            if sc.name not in self.args.scenarios:
                continue
            row = Row(sc.name, mode)
            rows.append(row)
            body = self.bench.work / f"{sc.body}.json"
            url = lb.url + "/v1/chat/completions"
            n, why = b.probe(url, body.read_bytes(), sc.kind)
            if n is None:
                row.note = f"unavailable: {why}"
                self.log(f"  {sc.name} {mode}: {row.note}")
                continue
            b.run_wrk(url, body, self.args.conns, self.args.warmup)
            shared = self.engines.pids() if self.engines is not None and mode == "on" else []
            cpu0, shared0 = sum(p.cpu() for p in instances), b.cpu_s(shared)
            res = b.run_wrk(url, body, self.args.conns, self.args.duration)
            cpu, shared_cpu = sum(p.cpu() for p in instances) - cpu0, b.cpu_s(shared) - shared0
            if not res["requests"]:
                row.note = f"no request completed in {self.args.duration:g} s"
                continue
            row.rps = round(res["requests"] / (res["duration_us"] / 1e6), 1)
            row.p50_ms = round(res["p50_us"] / 1000, 2)
            row.p99_ms = round(res["p99_us"] / 1000, 2)
            row.errors = sum(
                res[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
            )
            row.cpu_us_per_req = round(1e6 * cpu / res["requests"])
            if shared:
                row.shared_cpu_us_per_req = round(1e6 * shared_cpu / res["requests"])
            self.log(
                f"  {sc.name} {mode}: {row.rps:,.0f} req/s p50 {row.p50_ms} ms p99 {row.p99_ms} ms"
                + (f" ERRORS {row.errors}" if row.errors else "")
            )
        return rows

    def spread(self, mode: str, instances: list[b.Proc]) -> None:
        """Which instance served how many requests, from the request log(s): proof the balancer spread them."""
        time.sleep(1.5)  # the writers flush off the hot path
        try:
            if mode == "on" and self.engines is not None:
                counts = self.engines.log_rows()
            else:
                counts = {}
                for i in range(1, len(instances) + 1):
                    db = self.bench.work / f"requests-{mode}-{i}.sqlite"
                    con = sqlite3.connect(db)
                    try:
                        counts[f"{mode}-{i}"] = int(con.execute("SELECT count(*) FROM requests").fetchone()[0])
                    finally:
                        con.close()
        except Exception as exc:  # a log this tree writes differently: a note, not a failed run
            self.notes.append(f"{mode}: request-log rows per instance unreadable ({type(exc).__name__}: {exc})")
            return
        where = "PostgreSQL, one table" if mode == "on" else "SQLite, one file per instance"
        shown = ", ".join(f"{k} {v:,}" for k, v in counts.items())
        self.notes.append(f"{mode}: request-log rows per instance ({where}): {shown}")

    def shared_unavailable(self, with_id: bool) -> str | None:
        """Why the `on` mode cannot run here (no engines, or a tree without the shared-state keys), or None."""
        why = SharedEngines.missing()
        if why is not None:
            return why
        probe = self.bench.work / "probe-on.yaml"
        pg, redis = "postgresql://u:p@127.0.0.1:1/db", "redis://127.0.0.1:1/0"
        probe.write_text(instance_conf(self.bench.work, self.up, pg_url=pg, redis_url=redis, instance_id=with_id))
        err = check_config(self.bench, probe)
        if err is not None:
            return f"this tree's config does not take request_log.url / shared_state yet: {err[-300:]}"
        return None

    def run(self) -> list[Row]:
        rows: list[Row] = []
        self.start_upstream()
        with_id = self.instance_id_known()
        if not with_id:
            self.notes.append(
                "this tree has no server.instance_id: rows in a shared log do not say which instance wrote them"
            )
        for mode in self.args.modes:
            pg_url = redis_url = None
            if mode == "on":
                why = self.shared_unavailable(with_id)
                if why is not None:
                    self.log(f"scaleout: shared state on: SKIPPED: {why}")
                    self.notes.append(f"on: skipped: {why}")
                    rows += [Row(sc.name, "on", note="skipped") for sc in SCENARIOS if sc.name in self.args.scenarios]
                    continue
                self.log("scaleout: starting PostgreSQL and Redis")
                self.engines = SharedEngines(self.bench)
                self.engines.start()
                pg_url, redis_url = self.engines.pg_url, self.engines.redis_url
            cfg = instance_conf(self.bench.work, self.up, pg_url=pg_url, redis_url=redis_url, instance_id=with_id)
            self.log(f"scaleout: shared state {mode}: {INSTANCES} instances behind nginx")
            instances, lb = self.start_cluster(mode, cfg)
            try:
                self.readiness(mode, instances)
                rows += self.measure(mode, instances, lb)
                self.spread(mode, instances)
            finally:
                lb.stop()
                for p in instances:
                    p.stop()
        return rows

    def close(self) -> None:
        if self.engines is not None:
            self.engines.close()
        self.bench.stop_all()
        if not self.args.keep:
            shutil.rmtree(self.bench.work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- output
def table(rows: list[Row]) -> str:
    head = (
        "| scenario | shared state | req/s | p50 ms | p99 ms | errors | ollamux CPU us/req | PG + Redis CPU us/req |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        mode = "on (PostgreSQL log, Redis limits)" if r.mode == "on" else "off (SQLite each, local limits)"
        if r.rps is None:
            lines.append(f"| {r.scenario} | {mode} | {r.note} | | | | | |")
            continue
        lines.append(
            f"| {r.scenario} | {mode} | {b.fmt(r.rps)} | {b.fmt(r.p50_ms, '.2f')} | {b.fmt(r.p99_ms, '.2f')} "
            f"| {r.errors} | {b.fmt(r.cpu_us_per_req)} | {b.fmt(r.shared_cpu_us_per_req)} |"
        )
    return head + "\n".join(lines) + "\n"


def render(args: argparse.Namespace, rows: list[Row], notes: list[str], started: str, elapsed: float) -> str:
    v = b.versions()
    command = " ".join(["bench/scaleout", *args.argv])
    return (
        f"## Scale-out: {INSTANCES} ollamux instances behind nginx, shared state off and on ({started})\n\n"
        f"`{command}` ({elapsed:.0f} s) on {v['cpus']} x {v['cpu']}, Python {v['python']}, {v['nginx']}, "
        f"git {v['git']}; load average before {args.load_before:.2f}, after {os.getloadavg()[0]:.2f}. "
        f"POST /v1/chat/completions through nginx (deploy/compose/nginx.conf: least_conn, no buffering), "
        f"wrk c={args.conns}, {args.duration:g} s each. Every process runs on this one machine (the instances, "
        "both nginx, wrk, PostgreSQL, Redis share its cores): compare the rows, not the absolute numbers.\n\n"
        + table(rows)
        + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")
    )


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    block = f"{MARK_START}\n{section}{MARK_END}\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/scaleout", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    p.add_argument("--conns", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    p.add_argument("--modes", default=",".join(MODES), help="off,on (default both)")
    p.add_argument("--write", action="store_true", help="put the table into bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    a = p.parse_args(argv)
    a.argv = argv
    a.scenarios = a.scenarios.split(",")
    a.modes = [m for m in a.modes.split(",") if m]
    for m in a.modes:
        if m not in MODES:
            p.error(f"--modes: '{m}' is not one of {', '.join(MODES)}")
    return a


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every process


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.load_before = os.getloadavg()[0]
    for tool in ("wrk", "nginx"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            print(f"bench/scaleout: {tool} is missing (bench/scaleout installs it)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _stop_on_signal)
    started = time.strftime("%Y-%m-%dT%H-%M-%S")
    t0 = time.monotonic()
    run = ScaleOut(args)
    try:
        run.log(f"scaleout: work dir {run.bench.work}")
        rows = run.run()
    finally:
        run.close()
    section = render(args, rows, run.notes, started, time.monotonic() - t0)
    print(section)
    if args.write:
        write_results(section)
        print(f"written: {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
