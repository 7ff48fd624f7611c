"""`faceshard report --html`: a real small build's page rendered in headless Chromium, a build with
failed videos listed with their reasons, and the build summary as Prefect artifacts."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import faceshard_cli
from PIL import Image
from stub_build import StubProcessor, stub_build

from faceshard.app.report_html import CSP, write_report
from faceshard.config import load_config
from faceshard.storage.summary import summarize, summary_markdown

FAST = ["depth.enabled=false", "embed.depth=false"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# Injected into a copy of the page (allowed by its hash only): records every request the page's CSP
# blocked, then, once loaded, whether each image decoded, into a <pre> that --dump-dom prints.
CHECKER = (
    "const blocked=[];document.addEventListener('securitypolicyviolation',e=>blocked.push(e.blockedURI));"
    "window.addEventListener('load',()=>{const imgs=[...document.images];"
    "const out=document.createElement('pre');out.id='faceshard-check';out.textContent=JSON.stringify({"
    "images:imgs.length,broken:imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).map(i=>i.alt),"
    "blocked:blocked,plots:document.querySelectorAll('figure.plot img').length,"
    "sheets:document.querySelectorAll('.contact-sheet').length,"
    "crops:document.querySelectorAll('.contact-sheet img').length});document.body.appendChild(out);});"
)
DOCS_IMG = os.environ.get("FACESHARD_DOCS_IMG")  # set to docs/img to refresh the README's screenshots


def chromium() -> str:
    """Debian's headless Chromium, or a skip that says how to get it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("needs Debian's `chromium` (headless) to render the report: `apt-get install chromium`")
    return found


def run_chromium(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    return subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def checked_copy(page: str, extra_body: str = "") -> str:
    """The page with CHECKER in its head, allowed by hash: every other rule of its CSP stays."""
    digest = base64.b64encode(hashlib.sha256(CHECKER.encode()).digest()).decode()
    assert page.count(CSP) == 1
    page = page.replace(CSP, f"{CSP}; script-src 'sha256-{digest}'")
    page = page.replace("<style>", f"<script>{CHECKER}</script><style>", 1)
    return page.replace("</body>", f"{extra_body}</body>")


def dom_check(page_path: Path, tmp_path: Path) -> dict:
    dom = run_chromium(page_path.as_uri(), tmp_path, "--dump-dom").stdout
    found = re.search(r"<pre id=\"faceshard-check\">(.*?)</pre>", dom, re.S)
    assert found, f"the checker did not run:\n{dom[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(page_path: Path, tmp_path: Path, name: str, height: int) -> Image.Image:
    shot = tmp_path / f"{name}.png"
    run_chromium(page_path.as_uri(), tmp_path, f"--screenshot={shot}", f"--window-size=1280,{height}")
    return Image.open(shot).convert("RGB")


def assert_not_blank(image: Image.Image) -> None:
    pixels = np.asarray(image)
    assert pixels.std() > 20, "screenshot is (nearly) one colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "screenshot has almost no detail"


def save_for_docs(image: Image.Image, name: str, width: int = 800) -> None:
    """With FACESHARD_DOCS_IMG set, a small copy for the README (palette PNG)."""
    if not DOCS_IMG:
        return
    scaled = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    scaled.quantize(colors=128).save(Path(DOCS_IMG) / name, optimize=True)


@pytest.fixture(scope="module")
def small_build(local_runtime, synth_corpus: Path, tmp_path_factory) -> tuple[Path, dict, str]:
    """A real build (Prefect, Ray, MTCNN, dlib) of the synthetic corpus, crops stored."""
    from faceshard.flows.local import run_build

    out = tmp_path_factory.mktemp("report") / "dataset"
    summary = run_build(str(synth_corpus), str(out), load_config("demo", overrides=FAST, shard_size=2))
    return out, summary, local_runtime


@pytest.mark.slow
def test_report_of_a_real_build_renders_offline_in_chromium(small_build, tmp_path: Path) -> None:
    out, build, _ = small_build
    page_path = tmp_path / "report.html"
    write_report(str(out), str(page_path))
    page = page_path.read_text()
    # Nothing but data: URIs: no URL anywhere, every src and href inline.
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I)
    assert all(src.startswith("data:") for src in re.findall(r"""src=['"]([^'"]*)""", page))
    assert "<script" not in page and "href=" not in page

    checked = tmp_path / "checked.html"
    checked.write_text(checked_copy(page))
    result = dom_check(checked, tmp_path)
    assert result["blocked"] == [], "the page tried to make a request"
    assert result["broken"] == [], "images that did not decode"
    assert result["plots"] == 7
    assert result["sheets"] >= 1 and result["crops"] >= 2
    assert result["images"] == result["plots"] + result["crops"]

    # The checker sees requests: the same page with one external image reports it blocked.
    control = tmp_path / "control.html"
    control.write_text(checked_copy(page, "<img alt='external' src='http://127.0.0.1:9/x.png'>"))
    assert dom_check(control, tmp_path)["blocked"] == ["http://127.0.0.1:9/x.png"]

    image = screenshot(page_path, tmp_path, "report", 2000)  # the headline, the plots, a contact sheet
    assert_not_blank(image)
    save_for_docs(image, "report.png")

    headline = summarize(str(out), faces=False)
    assert headline.status["totals"]["videos"] == build["videos"] == 4
    assert "Random weights" not in page or headline.status["random_weights"]


@pytest.mark.slow
def test_the_build_publishes_its_summary_as_prefect_artifacts(small_build) -> None:
    _, build, api_url = small_build

    def latest(key: str) -> dict:
        with urllib.request.urlopen(f"{api_url}/artifacts/{key}/latest", timeout=30) as response:
            return json.loads(response.read())

    markdown = latest("faceshard-build-summary")
    assert markdown["type"] == "markdown"
    assert f"| videos | {build['videos']} |" in markdown["data"]
    assert f"| fingerprint | {build['fingerprint']} |" in markdown["data"]
    table = json.loads(latest("faceshard-build-videos")["data"])
    assert sum(row["videos"] for row in table) == build["videos"]
    assert sum(row["faces"] for row in table) == build["faces"]


def _failing_build(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "method", "split"])
        for i in range(9):
            writer.writerow([f"clips/v{i}.mp4", i % 2, "deepfakes" if i % 2 else "", "train"])
    errors = {
        "clips/v1.mp4": "VideoError: cannot decode: moov atom not found",
        "clips/v4.mp4": "VideoError: cannot decode: moov atom not found",
        "clips/v7.mp4": "RuntimeError: CUDA out of memory",
    }
    out = tmp_path / "out"
    stub_build(str(manifest), str(out), StubProcessor(errors=errors), shard_size=3)
    return out, errors


def test_a_build_with_failures_lists_them_with_reasons(tmp_path: Path) -> None:
    out, errors = _failing_build(tmp_path)
    page_path = tmp_path / "report.html"
    done = faceshard_cli("report", str(out), "--html", str(page_path))
    assert done.returncode == 0, done.stderr
    page = page_path.read_text()
    assert "Failed videos: 3</h2>" in page
    rows = re.search(r"<table id='failed-videos'>(.*?)</table>", page, re.S)
    assert rows
    listed = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td><td>([^<]+)</td>", rows.group(1))
    assert {video: error for video, _, error in listed} == errors
    # The reasons table counts each reason once; the crops hint names the setting that stores them.
    assert "<td>VideoError: cannot decode: moov atom not found</td><td>2</td>" in page
    assert "crop.save=true" in page

    write_report(str(out), str(page_path), failed_rows=1)
    page = page_path.read_text()
    assert "first 1 of 3" in page
    shown = re.search(r"<table id='failed-videos'>(.*?)</table>", page, re.S)
    assert shown and shown.group(1).count("<tr><td>") == 1

    markdown = summary_markdown(summarize(str(out), faces=False))
    assert "| 2 | VideoError: cannot decode: moov atom not found |" in markdown
    assert "| 1 | RuntimeError: CUDA out of memory |" in markdown


def test_contact_sheets_put_multi_identity_and_suspicious_videos_first() -> None:
    import polars as pl

    from faceshard.storage.summary import pick_videos

    videos = pl.DataFrame(
        {
            "video_id": ["real1", "fake1", "two", "lonely", "plain", "five"],
            "label": [0, 1, 0, 0, 0, 0],
            "method": [None, "x", None, None, None, None],
            "source": [None, "real1", None, None, None, None],
            "status": ["ok"] * 6,
            "n_faces": [10, 10, 10, 10, 10, 20],
            "n_identities": [1, 2, 2, 1, 1, 5],
            "unassigned": [0, 0, 0, 5, 0, 0],
        }
    )
    picks, unshown, more = pick_videos(videos, limit=4)
    # Multi-identity ones take at most half the sheets, then the suspicious ones, then a sample.
    assert [p.video_id for p in picks] == ["five", "fake1", "lonely", "two"]
    assert more == 0 and unshown.is_empty()
    assert picks[1].reasons == ["2 identities", "its source real1 has 1 identities"]
    assert picks[2].reasons == ["5 of 10 faces in no identity"]
    picks, unshown, more = pick_videos(videos, limit=2)
    assert [p.video_id for p in picks] == ["five", "fake1"] and more == 2  # fake1: multi and suspicious
    assert unshown["video_id"].to_list() == ["lonely", "two"]
    assert unshown["why"].to_list() == ["5 of 10 faces in no identity", "2 identities"]


def test_an_output_with_nothing_committed_still_gets_a_page(tmp_path: Path) -> None:
    from stub_build import WEIGHTS

    from faceshard.config import BuildConfig
    from faceshard.storage.commit import Output

    Output.open(str(tmp_path / "out"), config=BuildConfig(), weights=WEIGHTS).close()
    summary = write_report(str(tmp_path / "out"), str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert summary.videos.is_empty() and "No video with faces is committed." in page
    assert "Failed videos: 0</h2>" in page


def test_report_html_of_a_directory_that_is_no_output_exits_3(tmp_path: Path) -> None:
    done = faceshard_cli("report", str(tmp_path), "--html", str(tmp_path / "r.html"))
    assert done.returncode == 3 and "not a faceshard output" in " ".join(done.stderr.split())
    assert not (tmp_path / "r.html").exists()
