"""The pure parts of `pull hf.co/...`: names, which files a pull takes, the pulled folder's naming, progress pacing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ollamux.config import ConfigError, parse_settings
from ollamux.hub.choose import NoSuchFile, RepoFile, select_files
from ollamux.hub.progress import Throttle, file_progress
from ollamux.hub.ref import BadHubName, HubRef, parse_hub_ref
from ollamux.registry import ModelEntry, Registry
from ollamux.runtime import models_dir


# ---------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", HubRef("bartowski/Llama-3.2-1B-Instruct-GGUF", None)),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0", HubRef("bartowski/Llama-3.2-1B-Instruct-GGUF", "Q8_0")),
        ("huggingface.co/u/r:q4_k_m", HubRef("u/r", "Q4_K_M")),
        ("https://huggingface.co/u/r", HubRef("u/r", None)),
        ("https://huggingface.co/u/r/", HubRef("u/r", None)),
        ("http://hf.co/u/r:IQ2_XS", HubRef("u/r", "IQ2_XS")),
        ("HF.CO/u/r:latest", HubRef("u/r", None)),
        ("  hf.co/u/my_repo.v2  ", HubRef("u/my_repo.v2", None)),
    ],
)
def test_hub_names_parse(name: str, want: HubRef) -> None:
    assert parse_hub_ref(name) == want


def test_served_name_is_hf_co_with_the_tag_or_latest() -> None:
    assert HubRef("u/r", "Q4_K_M").name == "hf.co/u/r:Q4_K_M"
    assert HubRef("u/r", None).name == "hf.co/u/r:latest"


@pytest.mark.parametrize("name", ["llama3.2", "llama3.2:3b", "library/llama3", "hf.co", "registry.io/u/r:tag", ""])
def test_other_names_are_not_hub_names(name: str) -> None:
    assert parse_hub_ref(name) is None


@pytest.mark.parametrize(
    "name", ["hf.co/onlyuser", "hf.co/u/r/extra", "hf.co/u/r:", "hf.co/u--x/r", "hf.co/u/.r", "hf.co//r"]
)
def test_broken_hub_names_are_refused(name: str) -> None:
    with pytest.raises(BadHubName, match=r"hf\.co/\{user\}/\{repo\}"):
        parse_hub_ref(name)


# ------------------------------------------------------------------------------------ file selection
def files(*names: str, size: int = 100) -> list[RepoFile]:
    return [RepoFile(path=n, size=size + i, sha256=f"{i:064x}") for i, n in enumerate(names)]


REPO = files(
    "README.md",
    "Model-Q2_K.gguf",
    "Model-Q8_0.gguf",
    "Model-Q4_K_M.gguf",
    "Model-Q4_K_S.gguf",
    "mmproj-Model-Q8_0.gguf",
    "mmproj-Model-f16.gguf",
)


def test_default_is_q4_k_m_with_its_projector() -> None:
    sel = select_files(REPO, None)
    assert [f.path for f in sel.model] == ["Model-Q4_K_M.gguf"]
    assert sel.quant == "Q4_K_M"
    assert sel.projector is not None and sel.projector.path == "mmproj-Model-f16.gguf"
    assert [f.path for f in sel.files] == ["Model-Q4_K_M.gguf", "mmproj-Model-f16.gguf"]


@pytest.mark.parametrize(
    ("names", "want"),
    [
        (["m-Q8_0.gguf", "m-Q4_K_S.gguf", "m-Q5_K_M.gguf"], "m-Q4_K_S.gguf"),
        (["m-Q8_0.gguf", "m-Q5_K_M.gguf"], "m-Q5_K_M.gguf"),
        (["m-F16.gguf", "m-Q8_0.gguf"], "m-Q8_0.gguf"),
        (["m-BF16.gguf", "m-Q2_K.gguf", "m-F32.gguf"], "m-BF16.gguf"),  # none preferred: the smallest
        (["plain.gguf"], "plain.gguf"),
    ],
)
def test_without_q4_k_m_the_preference_order_then_the_smallest(names: list[str], want: str) -> None:
    sizes = {"m-F32.gguf": 10, "m-BF16.gguf": 5, "m-Q2_K.gguf": 7}
    listing = [RepoFile(path=n, size=sizes.get(n, 100), sha256=None) for n in names]
    assert select_files(listing, None).model[0].path == want


def test_a_named_quant_matches_case_insensitively() -> None:
    sel = select_files(REPO, "q8_0")
    assert [f.path for f in sel.model] == ["Model-Q8_0.gguf"]
    assert sel.quant == "Q8_0"


def test_a_missing_quant_says_which_there_are() -> None:
    with pytest.raises(NoSuchFile, match=r"no Q5_K_M GGUF file \(its quantizations are Q2_K, Q4_K_M, Q4_K_S, Q8_0\)"):
        select_files(REPO, "Q5_K_M")


def test_a_repo_without_gguf_files() -> None:
    with pytest.raises(NoSuchFile, match="no GGUF model file"):
        select_files(files("README.md", "model.safetensors", "mmproj-x-f16.gguf"), None)


def test_split_files_are_all_their_parts_in_order_and_incomplete_ones_are_not_offered() -> None:
    listing = files(
        "Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf",
        "Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf",
        "Q8_0/Big-Q8_0-00001-of-00002.gguf",  # its second part is missing
        "Big-Q2_K.gguf",
    )
    sel = select_files(listing, None)
    assert [f.basename for f in sel.model] == ["Big-Q4_K_M-00001-of-00002.gguf", "Big-Q4_K_M-00002-of-00002.gguf"]
    with pytest.raises(NoSuchFile, match="its quantizations are Q2_K, Q4_K_M"):
        select_files(listing, "Q8_0")


# ------------------------------------------------------------------------------ the pulled folder's names
def touch(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_pulled_repo_folders_are_named_hf_co_with_aliases(tmp_path: Path) -> None:
    repo = models_dir.repo_folder(tmp_path, "acme/Tiny-GGUF")
    assert repo == tmp_path / "hf.co" / "acme" / "Tiny-GGUF"
    touch(repo / "Tiny-Q8_0.gguf", 30)
    touch(repo / "Tiny-Q4_K_M.gguf", 20)
    touch(repo / "mmproj-Tiny-f16.gguf")
    touch(repo / "Tiny-Q2_K.gguf.partial")
    touch(tmp_path / "flat.Q4_1.gguf")
    found = {f.name: f for f in models_dir.scan(tmp_path)}
    assert set(found) == {"flat:q4_1", "hf.co/acme/Tiny-GGUF:Q4_K_M", "hf.co/acme/Tiny-GGUF:Q8_0"}
    assert found["hf.co/acme/Tiny-GGUF:Q4_K_M"].aliases == (
        "huggingface.co/acme/Tiny-GGUF:Q4_K_M",
        "hf.co/acme/Tiny-GGUF:latest",
        "huggingface.co/acme/Tiny-GGUF:latest",
    )
    assert found["hf.co/acme/Tiny-GGUF:Q8_0"].aliases == ("huggingface.co/acme/Tiny-GGUF:Q8_0",)

    reg = Registry([])
    entries = [
        ModelEntry(name=f.name, backend=f"runtime:{f.name}", upstream=f.name, source="models_dir", aliases=f.aliases)
        for f in found.values()
    ]
    reg.set_source("models_dir", entries)
    for spelling in ("hf.co/acme/tiny-gguf", "huggingface.co/acme/Tiny-GGUF", "HF.CO/acme/Tiny-GGUF:q4_k_m"):
        assert reg.resolve(spelling).entry.name == "hf.co/acme/Tiny-GGUF:Q4_K_M"
    assert sorted(e.name for e in reg.entries()) == sorted(found)  # aliases resolve, but are not listed
    assert len(reg.source("models_dir")) == 3


def test_the_stamp_sees_a_file_added_inside_a_repo_folder(tmp_path: Path) -> None:
    repo = models_dir.repo_folder(tmp_path, "acme/r")
    touch(repo / "a-Q4_0.gguf")
    os.utime(tmp_path, ns=(1, 1))  # the top folder's own time stays put
    before = models_dir.stamp(tmp_path)
    touch(repo / "a-Q8_0.gguf")
    os.utime(tmp_path, ns=(1, 1))
    assert models_dir.stamp(tmp_path) != before
    assert models_dir.stamp(tmp_path / "missing") == -1


# ----------------------------------------------------------------------------------------- progress
def test_throttle_reports_first_last_each_percent_and_slow_links() -> None:
    t = Throttle(total=1000)
    assert t.due(0, now=0.0)
    assert not t.due(5, now=0.1)  # less than 1% and soon after
    assert t.due(10, now=0.1)  # 1% more
    assert t.due(11, now=0.7)  # half a second later
    assert not t.due(11, now=2.0)  # nothing new
    assert t.due(1000, now=2.0)  # the end
    assert not t.due(1000, now=3.0)


def test_file_progress_is_ollamas_object() -> None:
    digest = "ab" * 32
    assert file_progress(digest, "x.gguf", 10, 4) == {
        "status": "pulling abababababab",
        "digest": f"sha256:{digest}",
        "total": 10,
        "completed": 4,
    }
    assert file_progress(None, "small.gguf", 3, 3)["status"] == "pulling small.gguf"


# ------------------------------------------------------------------------------------------ setting
def test_hf_endpoint_is_the_config_s_then_hf_endpoint_then_huggingface_co() -> None:
    assert parse_settings({}, {}).runtime.hf_endpoint == "https://huggingface.co"
    assert (
        parse_settings({}, {"HF_ENDPOINT": "https://mirror.example/"}).runtime.hf_endpoint == "https://mirror.example"
    )
    configured = {"runtime": {"hf_endpoint": "http://hub.local:8080"}}
    assert (
        parse_settings(configured, {"HF_ENDPOINT": "https://x.example"}).runtime.hf_endpoint == "http://hub.local:8080"
    )
    with pytest.raises(ConfigError, match=r"runtime\.hf_endpoint"):
        parse_settings({"runtime": {"hf_endpoint": "ftp://hub"}}, {})
