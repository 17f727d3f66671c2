"""The web viewer end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

A real service (``secondread serve`` in a subprocess, see ``test_serve.Server``) serves the page; the
browser enters the token, uploads a chest X-ray and the LIDC series as a zip, and the test checks
what the page shows against the report the same service answers, that scrolling changes the slice
(pixels differ), that the heat-map toggle hides the overlay, and keeps screenshots in ``docs/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_serve import (
    LIDC,
    TOKEN,
    auth,
    chest_xray_png,
    pacs_with,
    running_service,
    zip_folder,
)

from secondread.finding import format_probability

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} is missing (install Debian's chromium: make system-deps)")
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium: make system-deps)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_chromium()
    with running_service(tmp_path_factory.mktemp("viewer")) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    yield page
    context.close()
    assert errors == [], errors
    assert list(server.tmp.iterdir()) == []


def upload(page, path: Path, note: str | None = None) -> None:
    page.set_input_files("#files", str(path))
    if note:
        page.fill("#notes", note)
    page.click("#analyse")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Analysed')"
                           " || document.querySelector('#status').classList.contains('error')", timeout=300_000)
    assert "error" not in (page.get_attribute("#status", "class") or ""), page.text_content("#status")
    page.wait_for_function("document.querySelector('#stage').dataset.slice !== undefined")


def slice_pixels(page) -> np.ndarray:
    """The displayed slice as the browser decoded it (drawn to a canvas and read back).

    Waits until no newer slice is on its way and the image is decoded: opening a study renders
    twice (view, then its window), and between the two the <img> may hold no decoded picture.
    """
    page.wait_for_function("""() => {
        const img = document.querySelector('#slice-img');
        return !document.querySelector('#stage').dataset.pending && img.complete && img.naturalWidth > 0;
    }""")
    data = page.evaluate("""() => {
        const img = document.querySelector('#slice-img');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        return Array.from(ctx.getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0));
    }""")
    return np.asarray(data, dtype=np.uint8)


def test_chest_xray(page, server, data_root, tmp_path):
    import httpx
    xray = chest_xray_png(data_root, tmp_path / "chest.png")
    note = "Fever and productive cough for three days. No history of asthma."
    upload(page, xray, note)
    expected = httpx.post(server.url + "/v1/analyze", headers=auth(), timeout=300,
                          files=[("files", ("chest.png", xray.read_bytes(), "image/png")),
                                 ("notes", ("notes.txt", note.encode(), "text/plain"))]).json()
    finding = expected["findings"][0]
    row = page.text_content("#findings tbody tr")
    assert finding["label"] in row and format_probability(finding["probability"], 3) in row
    assert page.text_content("#statement") == expected["suggestion"]["statement"]
    assert expected["disclaimer"] in page.text_content("#disclaimer")
    facts = page.text_content("#facts")
    assert "fever" in facts and "asthma" in facts and "negated" in facts
    # heat map on, then off with its toggle
    assert finding["region"] is not None
    assert page.get_attribute("#heat-img", "src", timeout=10_000).startswith("blob:")
    page.screenshot(path=str(DOCS / "viewer-chest-xray.png"))
    page.uncheck("#show-heat")
    page.wait_for_function("!document.querySelector('#heat-img').hasAttribute('src')")
    # window/level by dragging changes the displayed pixels
    before, window = slice_pixels(page), page.get_attribute("#stage", "data-window")
    box = page.locator("#stage").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 40, box["y"] + 160, steps=5)
    page.mouse.up()
    # data-window is set once the slice rendered with the new window has been shown
    page.wait_for_function(f"document.querySelector('#stage').dataset.window !== '{window}'")
    page.wait_for_function("!document.querySelector('#stage').dataset.pending")
    assert not np.array_equal(before, slice_pixels(page))


def test_lidc_series(page, server, data_root, tmp_path):
    archive = zip_folder(data_root / LIDC, tmp_path / "LIDC-IDRI-0001.zip")
    upload(page, archive)
    n = len(list((data_root / LIDC).iterdir()))
    assert page.text_content("#slice-out").endswith(f"/ {n}")
    start = int(page.get_attribute("#stage", "data-slice"))
    first = slice_pixels(page)
    assert page.get_attribute("#contour-img", "src").startswith("blob:")
    page.screenshot(path=str(DOCS / "viewer-lidc.png"))
    # scrolling (mouse wheel over the image) moves to another slice with other pixels
    page.hover("#stage")
    for _ in range(10):
        page.mouse.wheel(0, -100)
    page.wait_for_function(f"document.querySelector('#stage').dataset.slice === '{start - 10}'")
    assert page.text_content("#slice-out").startswith(f"{start - 10 + 1} /")
    assert not np.array_equal(first, slice_pixels(page))
    # the slider too
    page.fill("#slice", "5")
    page.dispatch_event("#slice", "input")
    page.wait_for_function("document.querySelector('#stage').dataset.slice === '5'")
    assert "CT" in page.text_content("#model") and str(n) in page.text_content("#model")


def test_mammogram_lists_and_boxes_its_calcification_cluster_and_lesion_candidates(page, server, data_root, tmp_path):
    """mdb252 as an MG DICOM (0.2 mm pixels): the viewer runs mammo-abnormal, lists the
    calcification cluster candidate with its speck count and extent as the report gives them, and
    draws its box in the candidates' amber; the detector's lesion candidates beside it are listed
    with their map values and boxed in cyan."""
    import httpx
    from dicom_files import as_dicom
    from PIL import Image as PILImage

    pixels = np.asarray(PILImage.open(data_root / "mammography" / "mini-mias" / "mdb252.png"))
    path = as_dicom(pixels, 0.2, data_root, tmp_path / "mdb252.dcm", modality="MG")
    upload(page, path)
    expected = httpx.post(server.url + "/v1/analyze", headers=auth(), timeout=300,
                          files=[("files", ("mdb252.dcm", path.read_bytes(), "application/dicom"))]).json()
    cluster = next(f for f in expected["findings"] if f.get("kind") == "calcification cluster candidate")
    rows = [page.text_content(f"#findings tbody tr:nth-child({k + 1})") for k in range(len(expected["findings"]))]
    row = next(r for r in rows if "calcification cluster candidate #1" in r)
    assert f"{cluster['specks']} specks" in row and f"{cluster['diameter_mm']:g} mm across" in row
    assert "mammo-abnormal" in page.text_content("#model")
    candidates = [f for f in expected["findings"] if f.get("kind") == "lesion candidate"]
    assert candidates  # the detector's own peaks beside the cluster
    for f in candidates:
        assert any(f"lesion candidate #{f['rank']}" in r and f"map {f['score']:.2f}" in r for r in rows)
    page.wait_for_function("document.querySelector('#boxes').width > 0")
    count = """([r, g, b]) => {
        const c = document.querySelector('#boxes');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === r && d[i + 1] === g && d[i + 2] === b) n++;
        return n;
    }"""
    assert page.evaluate(count, [255, 192, 0]) > 0  # the cluster, amber
    assert page.evaluate(count, [0, 229, 255]) > 0  # the lesion candidates, cyan


def test_pick_a_study_from_the_pacs(browser, data_root, tmp_path):
    """With --pacs-url, the page lists the PACS's studies and analyses the one clicked."""
    sample = data_root / "dicom" / "CT_small.dcm"
    with pacs_with(tmp_path, sample) as (orthanc, (uid,)), \
            running_service(tmp_path / "s", "--pacs-url", orthanc.dicomweb) as server:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(server.url + "/")
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        page.click("#pacs-load")
        item = page.locator(f"#pacs-studies li[title='{uid}']")
        item.click()
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('Analysed')"
                               " || document.querySelector('#status').classList.contains('error')",
                               timeout=300_000)
        assert page.text_content("#status").startswith("Analysed"), page.text_content("#status")
        assert "CT" in page.text_content("#model") and page.text_content("#statement") != "–"
        context.close()
