"""The deployment files (Dockerfile, deploy/compose, deploy/kubernetes) say what operators rely on.

No Docker engine or cluster runs in the tests: the files are parsed and cross-checked against each other and
against ollamux itself (its config parser, the probe routes, the image's user and paths), and nginx checks
the load balancer's config with `nginx -t`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from ollamux.config import ConfigError, parse_settings
from ollamux.config.settings import DEFAULT_PUBLIC_PATHS

from .compose_nginx import compose_nginx
from .compose_nginx import scaleout as scaleout_module
from .conftest import ProxyFactory
from .servers import LoopThread

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "compose"
K8S = REPO / "deploy" / "kubernetes"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
needs_nginx = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (scripts/debian_tools.sh)")


# ------------------------------------------------------------------------------------------- Dockerfile
def _instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            stage = m.group(1) if m else rest
        out.append((stage, word, rest.strip()))
    return out


def _stages() -> list[str]:
    return [s for s, word, _ in _instructions() if word == "FROM"]


def _in_stage_chain(stage: str, word: str) -> list[str]:
    """The arguments of `word` in `stage` and the stages it is built FROM, nearest last."""
    ins = _instructions()
    parents = {s: rest.split()[0] for s, w, rest in ins if w == "FROM"}
    chain = [stage]
    while parents.get(chain[-1]) in parents:
        chain.append(parents[chain[-1]])
    return [rest for s in reversed(chain) for st, w, rest in ins if st == s and w == word]


def test_dockerfile_final_stages_run_as_a_non_root_user() -> None:
    stages = _stages()
    assert {"build", "llama", "default"} <= set(stages)
    assert stages[-1] == "default", "a plain `docker build .` must give the image without llama.cpp"
    uid_made = re.search(r"useradd\b.*--uid (\d+)", " ".join(_in_stage_chain("default", "RUN")))
    assert uid_made is not None
    for stage in ("default", "llama"):
        users = _in_stage_chain(stage, "USER")
        assert users, f"stage {stage} sets no USER: it would run as root"
        uid = users[-1].split(":")[0]
        # numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
        assert uid.isdigit() and int(uid) != 0
        assert uid == uid_made.group(1)


def test_dockerfile_healthcheck_entrypoint_and_paths() -> None:
    ins = _instructions()
    health = [rest for _, w, rest in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "urllib.request" in health[0] and "curl" not in health[0]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", health[0])
    assert url is not None and url.group(2) == "/health" and "/health" in DEFAULT_PUBLIC_PATHS
    expose = [rest for _, w, rest in ins if w == "EXPOSE"]
    assert expose == [url.group(1)] == ["11434"]
    # tini as PID 1 passes SIGTERM (graceful shutdown) and SIGHUP (config reload) on to ollamux
    assert [rest for _, w, rest in ins if w == "ENTRYPOINT"] == ['["tini", "--", "ollamux", "serve"]']
    assert re.search(r"apt-get install .*\btini\b", " ".join(_in_stage_chain("default", "RUN")))
    env = " ".join(rest for _, w, rest in ins if w == "ENV")
    assert "OLLAMUX_CONFIG=/etc/ollamux/config.yaml" in env
    assert "HOME=/var/lib/ollamux" in env and "OLLAMUX_MODELS=/var/lib/ollamux/models" in env
    copies = [rest for _, w, rest in ins if w == "COPY" and not rest.startswith("--from")]
    assert "deploy/docker/config.yaml /etc/ollamux/config.yaml" in copies


def test_dockerfile_extras_are_real_and_reach_every_stage_that_installs() -> None:
    ins = _instructions()
    default = [rest for stage, w, rest in ins if stage == "" and w == "ARG" and rest.startswith("EXTRAS=")]
    assert len(default) == 1, "EXTRAS needs one default, declared before the first FROM"
    extras = default[0].split("=", 1)[1].split(",")
    pyproject = (REPO / "pyproject.toml").read_text()
    for extra in [*extras, "llama"]:
        assert re.search(rf"^{extra} = \[", pyproject, re.MULTILINE), f"pyproject.toml has no extra '{extra}'"
    # an ARG is scoped to its stage: a stage that reads $EXTRAS without `ARG EXTRAS` gets it empty
    readers = {stage for stage, w, rest in ins if w == "RUN" and "EXTRAS" in rest}
    assert readers == {"build", "build-llama"}
    for stage in readers:
        assert ("ARG", "EXTRAS") in {(w, rest) for s, w, rest in ins if s == stage}, stage


def test_image_default_config_parses_and_listens_on_the_exposed_port() -> None:
    raw = yaml.safe_load((REPO / "deploy" / "docker" / "config.yaml").read_text())
    s = parse_settings(raw, {})
    assert (s.server.host, s.server.port) == ("0.0.0.0", 11434)
    assert str(s.request_log.path).startswith("/var/lib/ollamux/")
    assert str(s.runtime.models_dir) == "/var/lib/ollamux/models"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if any(fnmatch.fnmatch(pre, p) for pre in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    sources = []
    for _, w, rest in _instructions():
        if w == "COPY" and not rest.startswith("--from"):
            sources += rest.split()[:-1]
    assert sources
    for src in sources:
        src = src.rstrip("/").removeprefix("./")
        assert (REPO / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is copied by the Dockerfile but excluded by .dockerignore"
    assert not _ignored("src/ollamux/app.py", patterns)
    for junk in (".venv/bin/python", ".git/HEAD", "tests/test_config.py", "bench/bench.py", "x.sqlite"):
        assert _ignored(junk, patterns), f"{junk} would be sent to the Docker build"


# ---------------------------------------------------------------------------------------------- config
def _vars_used(raw: Any) -> set[str]:
    """The ${VAR} names in a config's values (comments do not count: ollamux never reads them)."""
    if isinstance(raw, dict):
        return set().union(*(_vars_used(v) for v in raw.values()))
    if isinstance(raw, list):
        return set().union(*(_vars_used(v) for v in raw))
    return set(_VAR.findall(raw)) if isinstance(raw, str) else set()


def _config_env(names: set[str]) -> dict[str, str]:
    values = {"UPSTREAM_URL": "http://upstream:8080/v1", "UPSTREAM_API_KEY": ""}
    return {n: values.get(n, f"value-of-{n.lower()}-1234") for n in names}


def _parse_or_skip(raw: Any, environ: dict[str, str]) -> Any:
    try:
        return parse_settings(raw, environ)
    except ConfigError as exc:
        if "unknown key" in str(exc) and any(k in str(exc) for k in ("request_log", "shared_state", "instance_id")):
            pytest.skip(f"this tree does not parse the shared-state keys yet (request_log.url, shared_state): {exc}")
        raise


def _check_shared_config(raw: Any, env: dict[str, str]) -> None:
    s = _parse_or_skip(raw, env)
    assert s.shared_state is not None and s.shared_state.fail_closed is False
    assert s.shared_state.redis_url == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0"
    assert env["POSTGRES_PASSWORD"] in str(s.request_log.url)
    assert s.server.instance_id == env["OLLAMUX_INSTANCE_ID"]
    assert (s.server.host, s.server.port) == ("0.0.0.0", 11434)
    assert [k.requests_per_minute for k in s.auth.keys] == [60]


# --------------------------------------------------------------------------------------------- compose
def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return data


def _ollamux_services(c: dict[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in c["services"].items() if n.startswith("ollamux-")}


def test_compose_runs_three_instances_with_postgres_redis_and_nginx() -> None:
    c = _compose()
    services = c["services"]
    inst = _ollamux_services(c)
    assert sorted(inst) == ["ollamux-1", "ollamux-2", "ollamux-3"]
    assert {"postgres", "redis", "nginx"} <= set(services)
    ids = {s["environment"]["OLLAMUX_INSTANCE_ID"] for s in inst.values()}
    assert len(ids) == 3, "every instance needs its own id in the shared log"
    for name, s in inst.items():
        assert s["build"]["context"] == "../.." and s["build"]["dockerfile"] == "Dockerfile"
        assert "./ollamux.yaml:/etc/ollamux/config.yaml:ro" in s["volumes"]
        assert s["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
        assert any("/health" in part for part in s["healthcheck"]["test"])
    assert services["nginx"]["depends_on"] == {n: {"condition": "service_healthy"} for n in inst}
    for name in ("postgres", "redis", "nginx"):
        assert services[name].get("healthcheck"), f"{name} has no healthcheck for depends_on to wait on"


def test_compose_passwords_come_from_the_environment() -> None:
    text = (COMPOSE / "docker-compose.yml").read_text()
    c = _compose()
    for s in _ollamux_services(c).values():
        env = s["environment"]
        assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
        assert env["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert c["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    example = (COMPOSE / ".env.example").read_text()
    for var in set(re.findall(r"\$\{([A-Z_]+)[:?}-]", text)):
        assert re.search(rf"^{var}=", example, re.MULTILINE), f".env.example does not mention {var}"


def test_compose_ollamux_config_gets_every_variable_it_uses_and_parses() -> None:
    raw = yaml.safe_load((COMPOSE / "ollamux.yaml").read_text())
    used = _vars_used(raw)
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "OLLAMUX_INSTANCE_ID"} <= used
    for name, s in _ollamux_services(_compose()).items():
        missing = used - set(s["environment"])
        assert not missing, f"{name} does not set {sorted(missing)}, which ollamux.yaml needs"
    _check_shared_config(raw, {**_config_env(used), "OLLAMUX_INSTANCE_ID": "ollamux-1"})


def _nginx_directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^\s*([a-z_]+)\s+([^;{]*);", re.sub(r"#.*", "", text), re.MULTILINE):
        out.setdefault(m.group(1), []).append(m.group(2).strip())
    return out


def test_compose_nginx_balances_the_instances_and_does_not_buffer_streams() -> None:
    text = (COMPOSE / "nginx.conf").read_text()
    d = _nginx_directives(text)
    servers = sorted(s.split()[0] for s in d["server"])
    assert servers == [f"{n}:11434" for n in sorted(_ollamux_services(_compose()))]
    assert d["proxy_buffering"] == ["off"] and d["proxy_request_buffering"] == ["off"]
    assert d["proxy_http_version"] == ["1.1"] and d["proxy_set_header"][0] == 'Connection ""'
    read_timeout = d["proxy_read_timeout"][0]
    assert read_timeout.endswith("s") and int(read_timeout[:-1]) >= 300
    assert "least_conn" in text
    # the published port is the one nginx listens on
    assert d["listen"] == ["8080"] and "8080:8080" in _compose()["services"]["nginx"]["ports"]


@needs_nginx
def test_compose_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    scaleout = scaleout_module()
    conf = tmp_path / "lb.conf"
    conf.write_text(scaleout.lb_conf((COMPOSE / "nginx.conf").read_text(), tmp_path, 18080, [1, 2, 3]))
    r = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    with pytest.raises(ValueError, match="ollamux servers"):
        scaleout.lb_conf((COMPOSE / "nginx.conf").read_text(), tmp_path, 18080, [1, 2])


class GatedStream:
    """An OpenAI upstream whose SSE answer stops after its first chunk until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(content: str, finish: str | None) -> bytes:
            delta = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
            return b"data: " + httpx.Response(200, json=delta).content + b"\n\n"

        await resp.write(event("first", None))
        await self.gate.wait()
        await resp.write(event(" second", "stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
def balancer(loop_thread: LoopThread, start_proxy: ProxyFactory, tmp_path: Path) -> Iterator[tuple[GatedStream, str]]:
    """Three in-process ollamux apps with one config behind nginx run from the compose nginx.conf."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/debian_tools.sh)")
    fake = GatedStream()
    runner, up = loop_thread.start_app(fake.app())
    config = {
        "backends": {"gated": {"type": "openai", "url": f"{up}/v1", "dialect": "openai"}},
        "models": {"gated": {"backend": "gated"}},
        "request_log": {"enabled": False},
    }
    ports = [int(start_proxy(config).rsplit(":", 1)[1]) for _ in range(3)]
    try:
        with compose_nginx(tmp_path, ports) as url:
            yield fake, url
    finally:
        loop_thread.loop.call_soon_threadsafe(fake.gate.set)
        loop_thread.stop_app(runner)


def test_compose_nginx_relays_a_stream_chunk_by_chunk(
    balancer: tuple[GatedStream, str], loop_thread: LoopThread
) -> None:
    """Through the shipped nginx.conf and ollamux, the first chunk reaches the client while the upstream
    still holds the rest, and the Host nginx forwards passes ollamux's host guard (loopback-bound here).
    (ollamux also sends `X-Accel-Buffering: no`, so this holds even where proxy_buffering is forgotten;
    the directives themselves are checked by the test above.)"""
    fake, url = balancer
    body = {"model": "gated", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        health = client.get(url + "/health/ready")
        assert health.status_code == 200, health.text  # the Host nginx passes satisfies ollamux's host guard
        with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert '"first"' in first and not fake.gate.is_set()
            loop_thread.loop.call_soon_threadsafe(fake.gate.set)
            rest = [line for line in lines if line.startswith("data:")]
    assert '" second"' in rest[0] and rest[-1] == "data: [DONE]"


# ------------------------------------------------------------------------------------------ Kubernetes
def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def _one(kind: str) -> dict[str, Any]:
    found = [d for docs in _manifests().values() for d in docs if d.get("kind") == kind]
    assert len(found) == 1, kind
    return found[0]


def test_every_manifest_parses_and_the_kustomization_lists_them() -> None:
    m = _manifests()
    assert {"deployment.yaml", "service.yaml", "configmap.yaml", "hpa.yaml", "secret.example.yaml"} <= set(m)
    for name, docs in m.items():
        assert docs, name
        for d in docs:
            assert d.get("apiVersion") and d.get("kind"), name
            if d["kind"] != "Kustomization":
                assert d["metadata"]["name"], name
    listed = set(_one("Kustomization")["resources"])
    # the Secret is an example, created out of band; every other manifest is applied
    assert listed == set(m) - {"kustomization.yaml", "secret.example.yaml"}


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def test_deployment_probes_use_health_and_ready_on_the_container_port() -> None:
    dep = _one("Deployment")
    assert dep["spec"]["replicas"] == 3
    c = _container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 11434}

    def target(probe: str) -> tuple[str, int]:
        get = c[probe]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert target("livenessProbe") == ("/health", 11434)
    assert target("readinessProbe") == ("/health/ready", 11434)
    assert target("startupProbe") == ("/health", 11434)
    # with keys on, the probes carry none: both paths must stay public
    assert {"/health", "/health/ready"} <= set(DEFAULT_PUBLIC_PATHS)


def test_deployment_runs_non_root_with_resources_and_the_image_paths() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    uid = re.search(r"--uid (\d+)", DOCKERFILE.read_text())
    assert uid is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    c = _container()
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # the image reads /etc/ollamux/config.yaml: the ConfigMap's key config.yaml mounted at /etc/ollamux
    assert mounts["config"] == "/etc/ollamux"
    assert volumes["config"]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert "config.yaml" in _one("ConfigMap")["data"]
    # a read-only root file system needs the data dir (HOME) and /tmp writable
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {mounts["data"], mounts["tmp"]} == {"/var/lib/ollamux", "/tmp"}


def test_deployment_env_provides_every_config_variable_from_the_secret() -> None:
    c = _container()
    env = {e["name"]: e for e in c["env"]}
    raw = yaml.safe_load(_one("ConfigMap")["data"]["config.yaml"])
    used = _vars_used(raw)
    assert used <= set(env), f"the ConfigMap's config uses {sorted(used - set(env))}, which the pod does not set"
    assert env["OLLAMUX_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    secret = _one("Secret")
    for var in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "OLLAMUX_KEY_TEAM_A"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
        assert "value" not in env[var], f"{var} must come from the Secret, not the manifest"
    _check_shared_config(raw, {**_config_env(used), "OLLAMUX_INSTANCE_ID": "ollamux-abc12"})


def test_service_and_hpa_point_at_the_deployment() -> None:
    dep = _one("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = _one("Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in _container()["ports"]}
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ollamux"}
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"]
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests() -> None:
    r = subprocess.run(
        ["kubectl", "kustomize", str(K8S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert r.returncode == 0, r.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
