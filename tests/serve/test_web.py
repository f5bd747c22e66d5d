"""The web page in a real headless browser (Playwright driving Chromium): upload a phantom, wait for its job,
then check the overlay is drawn from the labels, responds to opacity and organ toggles, and the organ table
shows the flags of the job's report. A screenshot is kept beside the test's files."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import write_scan
from unetr_cli.phantoms import make_phantom

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]

# Pixels of a canvas whose red, green and blue differ: the scan is grey, only the overlay has colour.
COLOURED = """canvas => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] !== data[i + 1] || data[i + 1] !== data[i + 2]) count++;
  }
  return count;
}"""


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        try:
            launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as err:  # neither Debian's chromium nor Playwright's own browser
            pytest.skip(f"no Chromium to drive: {str(err).splitlines()[0]}")
        yield launched
        launched.close()


def test_the_page_segments_an_upload_and_draws_its_organs_and_flags(service, browser, tmp_path):
    phantom = make_phantom(60, (64, 64, 32), orientation="LPS")
    scan = write_scan(tmp_path / "web_case.nii.gz", phantom.image, phantom.affine)
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(service.url + "/")
    page.set_input_files("#file", str(scan))
    page.wait_for_selector("#viewer", state="visible", timeout=180_000)
    assert "web_case.nii.gz: done" in page.inner_text("#status")

    job = service.get("/jobs?limit=1").json()[0]
    report = service.get(job["url"]).json()
    rows = {
        row.get_attribute("data-organ"): row.query_selector("td.flags").inner_text()
        for row in page.query_selector_all("#table tbody tr")
    }
    assert rows == {organ["organ"]: ", ".join(organ["flags"]) for organ in report["organs"]}
    assert any(rows.values()) == bool(report["flagged"])

    for plane in ("axial", "coronal", "sagittal"):
        assert page.eval_on_selector(f"#{plane}", COLOURED) > 0, f"no overlay on the {plane} view"
    page.screenshot(path=str(tmp_path / "unetr-serve-page.png"), full_page=True)

    page.fill("#opacity", "0")
    page.dispatch_event("#opacity", "input")
    assert page.eval_on_selector("#axial", COLOURED) == 0  # the overlay fades out entirely
    page.fill("#opacity", "60")
    page.dispatch_event("#opacity", "input")
    for toggle in page.query_selector_all("#organs input"):
        toggle.uncheck()
    assert page.eval_on_selector("#axial", COLOURED) == 0  # every organ hidden
    page.check('#organs input[data-label="6"]')
    assert sum(page.eval_on_selector(f"#{p}", COLOURED) for p in ("axial", "coronal", "sagittal")) > 0
    page.close()


def test_the_page_shows_a_refused_upload_as_its_line(service, browser, tmp_path):
    upload = tmp_path / "notes.txt"
    upload.write_text("not a scan")
    page = browser.new_page()
    page.goto(service.url + "/")
    page.set_input_files("#file", str(upload))
    page.wait_for_selector("#status.failed", timeout=60_000)
    assert page.inner_text("#status").startswith("notes.txt: not a scan file")
    assert not page.is_visible("#viewer")
    page.close()
